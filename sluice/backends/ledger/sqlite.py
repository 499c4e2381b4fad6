"""The ledger and file registry on SQLite (the embedded backend).

Every verb is one `BEGIN IMMEDIATE` transaction, so concurrent processes serialise on the write
lock. The writes are nevertheless shaped as the conditional writes a DynamoDB ledger makes
(insert if absent; update if the version, or the claim token, is still the one read), so both
backends follow the same decision table. Times are stored as integer microseconds since the
epoch (exact round trip, orders correctly) and returned as aware UTC datetimes.

Differs from the interface only in what it adds: `clock` makes "now" injectable.
"""

from __future__ import annotations

import builtins
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from sluice.backends.ledger.base import (
    Claim,
    ClaimOutcome,
    ClaimResult,
    Counts,
    FailureEvent,
    FileRecord,
    FileStatus,
    Output,
    Receipt,
    SourceRef,
)
from sluice.backends.ledger.sqlite_rows import EPOCH, SCHEMA, receipt, record, to_us
from sluice.backends.sqlite import SqliteDb
from sluice.errors import BackendBusy, LeaseLost

PAGE_SIZE = 500

_PROCESSING = FileStatus.PROCESSING.value
_HELD = "bucket = ? AND key = ? AND token = ? AND status = ?"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqliteLedger:
    """`Ledger` in one SQLite file; safe to share between threads and processes."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = path
        self._clock = clock
        self._db = SqliteDb(path, SCHEMA)

    def close(self) -> None:
        self._db.close()

    # Claims ------------------------------------------------------------------------------

    def claim(
        self,
        source: SourceRef,
        owner: str,
        lease_seconds: float,
        *,
        force: bool = False,
        redrive_id: str | None = None,
    ) -> ClaimResult:
        now = self._clock()
        now_us = to_us(now)
        lease = now + timedelta(seconds=lease_seconds)
        token = secrets.token_hex(16)
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT * FROM files WHERE bucket = ? AND key = ?", (source.bucket, source.key)
            ).fetchone()
            current = None if row is None else record(row)
            # Done redrives are per object: one redrive run may send its id with many objects.
            if (
                redrive_id is not None
                and conn.execute(
                    "SELECT 1 FROM redrives WHERE bucket = ? AND key = ? AND redrive_id = ?",
                    (source.bucket, source.key, redrive_id),
                ).fetchone()
            ):
                return ClaimResult(ClaimOutcome.REDRIVE_DONE, record=current)
            if current is None:
                # Insert only if absent (DynamoDB: attribute_not_exists on the key).
                cur = conn.execute(
                    "INSERT INTO files (bucket, key, etag, status, version, attempts, owner, token,"
                    " lease_expires_at, created_at, updated_at) VALUES (?, ?, ?, ?, 1, 1, ?, ?,"
                    " ?, ?, ?) ON CONFLICT (bucket, key) DO NOTHING",
                    (
                        source.bucket,
                        source.key,
                        source.etag,
                        _PROCESSING,
                        owner,
                        token,
                        to_us(lease),
                        now_us,
                        now_us,
                    ),
                )
                attempt = 1
            else:
                # Any unexpired lease blocks, whoever holds it: claim() carries no token, so
                # even the same owner asking again is a second, concurrent claim.
                if current.status is FileStatus.PROCESSING and not current.is_stuck(now):
                    return ClaimResult(ClaimOutcome.BUSY, record=current)
                same_input = current.etag == source.etag
                if current.status is FileStatus.COMPLETED and same_input and not force:
                    return ClaimResult(ClaimOutcome.ALREADY_COMPLETED, record=current)
                # A changed object is a new input: its attempts count from one. Its old outputs
                # stay on the record until complete() replaces them.
                attempt = current.attempts + 1 if same_input else 1
                # Update only if nobody wrote since the read (DynamoDB: version = :read).
                cur = conn.execute(
                    "UPDATE files SET etag = ?, status = ?, version = version + 1, attempts = ?,"
                    " owner = ?, token = ?, lease_expires_at = ?, updated_at = ?"
                    " WHERE bucket = ? AND key = ? AND version = ?",
                    (
                        source.etag,
                        _PROCESSING,
                        attempt,
                        owner,
                        token,
                        to_us(lease),
                        now_us,
                        source.bucket,
                        source.key,
                        row["version"],
                    ),
                )
            if cur.rowcount != 1:
                raise BackendBusy("claim lost a race; retry", source_ref=source.uri)
            claimed = self._get(conn, source.bucket, source.key)
        claim = Claim(
            source=source, owner=owner, token=token, attempt=attempt, lease_expires_at=lease
        )
        return ClaimResult(ClaimOutcome.CLAIMED, claim=claim, record=claimed)

    def extend(self, claim: Claim, lease_seconds: float) -> Claim:
        now = self._clock()
        lease = now + timedelta(seconds=lease_seconds)
        with self._db.write() as conn:
            self._update_held(
                conn, claim, "lease_expires_at = ?, updated_at = ?", (to_us(lease), to_us(now))
            )
        return Claim(
            source=claim.source,
            owner=claim.owner,
            token=claim.token,
            attempt=claim.attempt,
            lease_expires_at=lease,
        )

    def record_pending_outputs(self, claim: Claim, keys: Sequence[str]) -> None:
        with self._db.write() as conn:
            record = self._held(conn, claim)
            # A union, so several calls during one run (and runs that died) all stay remembered.
            merged = tuple(dict.fromkeys((*record.pending_outputs, *keys)))
            self._update_held(
                conn,
                claim,
                "pending_outputs = ?, updated_at = ?",
                (msgspec.json.encode(merged).decode(), to_us(self._clock())),
            )

    def complete(
        self,
        claim: Claim,
        outputs: Sequence[Output],
        counts: Counts,
        *,
        redrive_id: str | None = None,
    ) -> FileRecord:
        now_us = to_us(self._clock())
        source = claim.source
        with self._db.write() as conn:
            self._update_held(
                conn,
                claim,
                "status = ?, outputs = ?, counts = ?, pending_outputs = '[]', last_error = NULL,"
                " error_class = NULL, terminal = 0, token = NULL, lease_expires_at = NULL,"
                " completed_at = ?, updated_at = ?",
                (
                    FileStatus.COMPLETED.value,
                    msgspec.json.encode(tuple(outputs)).decode(),
                    msgspec.json.encode(counts).decode(),
                    now_us,
                    now_us,
                ),
            )
            if redrive_id is not None:
                conn.execute(
                    "INSERT INTO redrives (bucket, key, redrive_id, done_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING",
                    (source.bucket, source.key, redrive_id, now_us),
                )
            return self._require(conn, source.bucket, source.key)

    def fail(
        self,
        claim: Claim,
        error: str,
        error_class: str,
        *,
        terminal: bool,
        correlation_id: str | None = None,
    ) -> FileRecord:
        now_us = to_us(self._clock())
        source = claim.source
        with self._db.write() as conn:
            self._update_held(
                conn,
                claim,
                "status = ?, last_error = ?, error_class = ?, terminal = ?, token = NULL,"
                " lease_expires_at = NULL, updated_at = ?",
                (FileStatus.FAILED.value, error, error_class, int(terminal), now_us),
            )
            record = self._require(conn, source.bucket, source.key)
            conn.execute(
                "INSERT INTO failures (bucket, key, etag, attempt, error_class, error, terminal,"
                " correlation_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    source.bucket,
                    source.key,
                    record.etag,
                    record.attempts,
                    error_class,
                    error,
                    int(terminal),
                    correlation_id,
                    now_us,
                ),
            )
            return record

    def reset(self, bucket: str, key: str) -> FileRecord | None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE files SET status = ?, version = version + 1, owner = NULL, token = NULL,"
                " lease_expires_at = NULL, updated_at = ? WHERE bucket = ? AND key = ?",
                (FileStatus.PENDING.value, to_us(self._clock()), bucket, key),
            )
            return self._get(conn, bucket, key)

    def forget(self, bucket: str, key: str, *, updated_before: datetime | None = None) -> bool:
        before_us = None if updated_before is None else to_us(updated_before)
        with self._db.write() as conn:
            # Delete only while still completed and old enough (DynamoDB: a conditional
            # DeleteItem); the history goes in the same transaction, only with the record.
            cur = conn.execute(
                "DELETE FROM files WHERE bucket = ? AND key = ? AND status = ?"
                " AND (? IS NULL OR updated_at < ?)",
                (bucket, key, FileStatus.COMPLETED.value, before_us, before_us),
            )
            if cur.rowcount != 1:
                return False
            for table in ("failures", "redrives"):
                conn.execute(f"DELETE FROM {table} WHERE bucket = ? AND key = ?", (bucket, key))
            return True

    # Reads -------------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> FileRecord | None:
        return self._get(self._db.read(), bucket, key)

    def list(
        self,
        *,
        status: FileStatus | None = None,
        updated_before: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[FileRecord]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(FileStatus(status).value)
        if updated_before is not None:
            where.append("updated_at < ?")
            params.append(to_us(updated_before))
        remaining = limit
        after: tuple[int, str, str] | None = None
        while remaining is None or remaining > 0:
            page_where = list(where)
            page_params = list(params)
            if after is not None:
                # Keyset pagination: stable while rows change between pages, no OFFSET scans.
                page_where.append("(updated_at, bucket, key) > (?, ?, ?)")
                page_params.extend(after)
            size = PAGE_SIZE if remaining is None else min(PAGE_SIZE, remaining)
            sql = "SELECT * FROM files"
            if page_where:
                sql += " WHERE " + " AND ".join(page_where)
            sql += " ORDER BY updated_at, bucket, key LIMIT ?"
            rows = self._db.read().execute(sql, (*page_params, size)).fetchall()
            for row in rows:
                yield record(row)
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < size:
                return
            last = rows[-1]
            after = (last["updated_at"], last["bucket"], last["key"])

    def failures(self, bucket: str, key: str) -> builtins.list[FailureEvent]:
        rows = (
            self._db.read()
            .execute(
                "SELECT * FROM failures WHERE bucket = ? AND key = ? ORDER BY id", (bucket, key)
            )
            .fetchall()
        )
        return [
            FailureEvent(
                bucket=row["bucket"],
                key=row["key"],
                etag=row["etag"],
                attempt=row["attempt"],
                error_class=row["error_class"],
                error=row["error"],
                terminal=bool(row["terminal"]),
                correlation_id=row["correlation_id"],
                at=EPOCH + timedelta(microseconds=row["at"]),
            )
            for row in rows
        ]

    # Receipts ----------------------------------------------------------------------------

    def record_receipt(self, receipt: Receipt) -> None:
        # The first receipt of an object wins; a replayed one changes nothing.
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO receipts (bucket, key, lines, bytes, received_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bucket, key) DO NOTHING",
                (
                    receipt.bucket,
                    receipt.key,
                    receipt.lines,
                    receipt.bytes,
                    to_us(receipt.received_at),
                ),
            )

    def get_receipt(self, bucket: str, key: str) -> Receipt | None:
        row = (
            self._db.read()
            .execute("SELECT * FROM receipts WHERE bucket = ? AND key = ?", (bucket, key))
            .fetchone()
        )
        return None if row is None else receipt(row)

    def receipts(self) -> Iterator[Receipt]:
        after: tuple[str, str] = ("", "")
        while True:
            rows = (
                self._db.read()
                .execute(
                    "SELECT * FROM receipts WHERE (bucket, key) > (?, ?) ORDER BY bucket, key"
                    " LIMIT ?",
                    (*after, PAGE_SIZE),
                )
                .fetchall()
            )
            yield from map(receipt, rows)
            if len(rows) < PAGE_SIZE:
                return
            after = (rows[-1]["bucket"], rows[-1]["key"])

    # Helpers -----------------------------------------------------------------------------

    @staticmethod
    def _get(conn: sqlite3.Connection, bucket: str, key: str) -> FileRecord | None:
        row = conn.execute(
            "SELECT * FROM files WHERE bucket = ? AND key = ?", (bucket, key)
        ).fetchone()
        return None if row is None else record(row)

    def _require(self, conn: sqlite3.Connection, bucket: str, key: str) -> FileRecord:
        record = self._get(conn, bucket, key)
        assert record is not None, "written inside this transaction"
        return record

    def _held(self, conn: sqlite3.Connection, claim: Claim) -> FileRecord:
        source = claim.source
        row = conn.execute(
            f"SELECT * FROM files WHERE {_HELD}",
            (source.bucket, source.key, claim.token, _PROCESSING),
        ).fetchone()
        if row is None:
            raise self._lost(claim)
        return record(row)

    def _update_held(
        self, conn: sqlite3.Connection, claim: Claim, assignments: str, params: tuple[Any, ...]
    ) -> None:
        # Update only while the claim is held: same token, still processing (DynamoDB:
        # ConditionExpression token = :token AND status = :processing). An expired lease that
        # nobody took over is still held; the token, not the clock, decides.
        source = claim.source
        cur = conn.execute(
            f"UPDATE files SET {assignments}, version = version + 1 WHERE {_HELD}",
            (*params, source.bucket, source.key, claim.token, _PROCESSING),
        )
        if cur.rowcount != 1:
            raise self._lost(claim)

    @staticmethod
    def _lost(claim: Claim) -> LeaseLost:
        return LeaseLost(
            f"the claim on {claim.source.uri} is no longer held by {claim.owner}",
            source_ref=claim.source.uri,
            owner=claim.owner,
            hint="another worker took over; this attempt's work will be redone",
        )
