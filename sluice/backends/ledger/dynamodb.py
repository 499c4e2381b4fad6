"""The ledger and file registry on DynamoDB (the AWS backend), through the low-level client.

One table, one partition per raw object, several items under it: the record, its redrive
markers, failure events and receipt (their layout is in `dynamodb_items`).

Every write to the record increments ``version``. A claim reads the record, decides exactly as
the SQLite ledger does, then writes only over the state it decided on (``attribute_not_exists``
for a new object, ``version = :read`` otherwise); the holder's verbs write only while its claim
is held (``token = :token AND status = :processing``). Times are integer microseconds since the
epoch, compared on the ledger's clock (``clock``), never DynamoDB's.

Differs from the interface in what it adds and in honest limits:

- ``clock`` makes "now" injectable; ``create_table()`` creates the table (idempotent) from
  `table_definition`, which the SAM template uses too.
- ``list`` and ``receipts`` read global secondary indexes, which are eventually consistent: a
  write shows up there a moment later (``get`` and ``failures`` read consistently). Records
  updated in the same microsecond come back in no particular order.
- Outputs and pending outputs live in the record (tens of thousands fit); outputs that do not
  fit the 400 KB item limit fail ``complete`` (or ``record_pending_outputs``) with a
  `TerminalError` that says so.
- An error text is kept up to `dynamodb_items.MAX_ERROR_CHARS` (then cut, with a marker), so
  that recording a failure never fails on the item limit itself.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import heapq
import itertools
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
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
from sluice.backends.ledger.dynamodb_items import (
    RECEIPT_INDEX,
    RECEIPT_SK,
    RECORD_SK,
    STATUS_INDEX,
    Item,
    Plain,
    Refused,
    build,
    check_size,
    claim_update,
    cut_error,
    expressions,
    failure_event,
    file_record,
    item_key,
    pack,
    partition_key,
    plain,
    receipt_item,
    redrive_marker,
    redrive_sk,
    to_us,
    unpack,
)
from sluice.backends.ledger.dynamodb_table import TRIES, DynamoDbTable
from sluice.errors import BackendBusy, LeaseLost

__all__ = ["DynamoDbLedger"]

# Read by name at call time, so tests can shrink pages (the contract suite patches it here).
PAGE_SIZE = 500

_PROCESSING = FileStatus.PROCESSING.value
# A write by the claim's holder goes through only while the claim is still held. An expired
# lease that nobody took over is still held: the token, not the clock, decides.
_HELD = "#token = :token AND #status = :processing"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DynamoDbLedger(DynamoDbTable):
    """`Ledger` in one DynamoDB table, shared by any number of workers and machines.

    `client` is a low-level boto3 DynamoDB client (from `sluice.backends.aws.AwsClients`).
    """

    def __init__(
        self, client: Any, table: str, *, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        super().__init__(client, table)
        self._clock = clock

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
        lease = now + timedelta(seconds=lease_seconds)
        token = secrets.token_hex(16)
        for _ in range(TRIES):
            item, redrive_done = self._read_for_claim(source, redrive_id)
            current = None if item is None else file_record(item)
            if item is not None and plain(item).get("token") == token:
                # Our own write, applied by a request whose answer was lost and then retried.
                return self._claimed(source, owner, token, lease, item)
            if redrive_done:
                return ClaimResult(ClaimOutcome.REDRIVE_DONE, record=current)
            same = current is not None and current.etag == source.etag
            if current is not None:
                # Any unexpired lease blocks, whoever holds it: claim() carries no token, so
                # even the same owner asking again is a second, concurrent claim.
                if current.status is FileStatus.PROCESSING and not current.is_stuck(now):
                    return ClaimResult(ClaimOutcome.BUSY, record=current)
                if current.status is FileStatus.COMPLETED and same and not force:
                    return ClaimResult(ClaimOutcome.ALREADY_COMPLETED, record=current)
            # A changed object is a new input: its attempts count from one. Its old outputs
            # stay on the record until complete() replaces them.
            attempts = current.attempts + 1 if current is not None and same else 1
            values, update = claim_update(source, owner, token, to_us(lease), to_us(now), attempts)
            # Write only over the state decided on: create the record if it is still absent,
            # else update it if nobody wrote since our read. Of concurrent claims, one wins.
            condition = "attribute_not_exists(#pk)"
            if item is not None:
                condition = "#version = :read"
                values["read"] = plain(item)["version"]
            try:
                answer = self._call(
                    "update_item",
                    TableName=self.table,
                    Key=item_key(source.bucket, source.key, RECORD_SK),
                    ReturnValues="ALL_NEW",
                    **expressions(values, update, condition),
                )
            except Refused:
                continue  # someone wrote since our read: decide again on their write
            return self._claimed(source, owner, token, lease, answer["Attributes"])
        raise BackendBusy("claim kept losing races; retry", source_ref=source.uri)

    def extend(self, claim: Claim, lease_seconds: float) -> Claim:
        now = self._clock()
        lease = now + timedelta(seconds=lease_seconds)
        self._write_held(claim, to_us(now), {"lease_expires_at": to_us(lease)})
        return dataclasses.replace(claim, lease_expires_at=lease)

    def record_pending_outputs(self, claim: Claim, keys: Sequence[str]) -> None:
        source = claim.source
        for _ in range(TRIES):
            item = self._get_item(source.bucket, source.key, RECORD_SK)
            p = {} if item is None else plain(item)
            if p.get("token") != claim.token or p.get("status") != _PROCESSING:
                raise self._lost(claim)
            # A union (first appearance kept), so several calls during one run, and runs that
            # died, all stay remembered.
            old = p.get("pending_outputs")
            blob = pack(tuple(dict.fromkeys((*unpack(old, tuple[str, ...]), *keys))))
            check_size(source, blob, p.get("outputs", b""))
            # Read-modify-write, only while the pending keys are still the ones merged into:
            # not the version, which the heartbeat's extend() bumps every few seconds.
            guard: tuple[str, dict[str, Plain]] = ("attribute_not_exists(#pending_outputs)", {})
            if old is not None:
                guard = ("#pending_outputs = :old", {"old": old})
            try:
                now_us = to_us(self._clock())
                self._write_held(claim, now_us, {"pending_outputs": blob}, guard=guard)
            except LeaseLost:
                continue  # re-read: lost for good, or another merge came first
            return
        raise BackendBusy("pending outputs kept losing races; retry", source_ref=source.uri)

    def complete(
        self,
        claim: Claim,
        outputs: Sequence[Output],
        counts: Counts,
        *,
        redrive_id: str | None = None,
    ) -> FileRecord:
        source = claim.source
        blob = pack(tuple(outputs))
        check_size(source, blob)
        now_us = to_us(self._clock())
        sets: dict[str, Plain] = {
            "status": FileStatus.COMPLETED.value,
            "outputs": blob,
            "terminal": False,
            "counts": msgspec.json.encode(counts).decode(),
            "completed_at": now_us,
        }
        cleared = ("pending_outputs", "last_error", "error_class", "token", "lease_expires_at")
        if redrive_id is None:
            return file_record(self._write_held(claim, now_us, sets, remove=cleared))
        # Completing and marking the redrive done are one transaction: a redelivery of the
        # redrive finds both or neither. The marker is a plain Put (no condition), since the
        # same id may be completed again after a claim made without it.
        marker = redrive_marker(source, redrive_id, now_us)
        return self._held_transaction(
            claim, self._held_update(claim, now_us, sets, remove=cleared), marker
        )

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
        error = cut_error(error)
        sets: dict[str, Plain] = {
            "status": FileStatus.FAILED.value,
            "last_error": error,
            "error_class": error_class,
            "terminal": terminal,
        }
        update = self._held_update(claim, now_us, sets, remove=("token", "lease_expires_at"))
        event = failure_event(claim, now_us, error, error_class, terminal, correlation_id)
        return self._held_transaction(claim, update, event)

    def reset(self, bucket: str, key: str) -> FileRecord | None:
        values: dict[str, Plain] = {"pending": FileStatus.PENDING.value, "one": 1}
        values["now"] = to_us(self._clock())
        update = (
            "SET #status = :pending, #updated_at = :now, #version = #version + :one"
            " REMOVE #owner, #token, #lease_expires_at"
        )
        try:
            # Only an existing record: an update would otherwise create a bare one.
            answer = self._call(
                "update_item",
                TableName=self.table,
                Key=item_key(bucket, key, RECORD_SK),
                ReturnValues="ALL_NEW",
                **expressions(values, update, "attribute_exists(#pk)"),
            )
        except Refused:
            return None
        return file_record(answer["Attributes"])

    def forget(self, bucket: str, key: str, *, updated_before: datetime | None = None) -> bool:
        record = self.get(bucket, key)
        if record is None or record.status is not FileStatus.COMPLETED:
            return False
        if updated_before is not None and record.updated_at >= updated_before:
            return False
        # The history first, the record last and conditionally: a crash in between leaves a
        # record the next cleanup finds, never history without its record. A history has no
        # bound, so it cannot share the record's transaction (at most 100 items); only items
        # as old as the record read go, so a claim made since keeps its own.
        self._delete_items(self._history(bucket, key, upto=record.updated_at))
        values: dict[str, Plain] = {"completed": FileStatus.COMPLETED.value}
        condition = "#status = :completed"
        if updated_before is not None:
            values["before"] = to_us(updated_before)
            condition += " AND #updated_at < :before"
        try:
            self._call(
                "delete_item",
                TableName=self.table,
                Key=item_key(bucket, key, RECORD_SK),
                **expressions(values, condition=condition),
            )
        except Refused:
            return False  # claimed again since the read: it stays
        return True

    # Reads -------------------------------------------------------------------------------

    def get(self, bucket: str, key: str) -> FileRecord | None:
        item = self._get_item(bucket, key, RECORD_SK)
        return None if item is None else file_record(item)

    def list(
        self,
        *,
        status: FileStatus | None = None,
        updated_before: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[FileRecord]:
        if limit is not None and limit <= 0:
            return
        statuses = list(FileStatus) if status is None else [FileStatus(status)]
        # Each status is one index partition already sorted by update time: merge them lazily.
        streams = [self._by_status(s, updated_before, limit) for s in statuses]
        merged = heapq.merge(*streams, key=lambda r: (r.updated_at, r.bucket, r.key))
        yield from itertools.islice(merged, limit)

    def failures(self, bucket: str, key: str) -> builtins.list[FailureEvent]:
        values = {"pk": partition_key(bucket, key), "failure": "failure#"}
        condition = "#pk = :pk AND begins_with(#sk, :failure)"
        items = self._query(ConsistentRead=True, **expressions(values, key=condition))
        return [build(FailureEvent, plain(item)) for item in items]

    # Receipts ----------------------------------------------------------------------------

    def record_receipt(self, receipt: Receipt) -> None:
        item = receipt_item(receipt)
        # The first receipt of an object wins; a replayed one changes nothing.
        with contextlib.suppress(Refused):
            condition = expressions({}, condition="attribute_not_exists(#pk)")
            self._call("put_item", TableName=self.table, Item=item, **condition)

    def get_receipt(self, bucket: str, key: str) -> Receipt | None:
        item = self._get_item(bucket, key, RECEIPT_SK)
        return None if item is None else build(Receipt, plain(item))

    def receipts(self) -> Iterator[Receipt]:
        condition = expressions({"r": RECEIPT_SK}, key="#receipt_index = :r")
        items = self._query(IndexName=RECEIPT_INDEX, Limit=PAGE_SIZE, **condition)
        yield from (build(Receipt, plain(item)) for item in items)

    # Helpers -----------------------------------------------------------------------------

    def _by_status(
        self, status: FileStatus, before: datetime | None, limit: int | None
    ) -> Iterator[FileRecord]:
        values: dict[str, Plain] = {"status": status.value}
        condition = "#status = :status"
        if before is not None:
            values["before"] = to_us(before)
            condition += " AND #updated_at < :before"
        size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit)
        items = self._query(
            IndexName=STATUS_INDEX, Limit=size, **expressions(values, key=condition)
        )
        yield from map(file_record, items)

    def _history(self, bucket: str, key: str, *, upto: datetime) -> builtins.list[Item]:
        """Keys of the object's failure events and redrive markers written at or before
        `upto` (not its record or receipt)."""
        args = expressions({"pk": partition_key(bucket, key)}, key="#pk = :pk")
        keys = []
        for item in self._query(ConsistentRead=True, **args):
            p = plain(item)
            at = p.get("at", p.get("done_at"))
            if p["sk"] not in (RECORD_SK, RECEIPT_SK) and at is not None and at <= upto:
                keys.append(item_key(bucket, key, p["sk"]))
        return keys

    def _read_for_claim(
        self, source: SourceRef, redrive_id: str | None
    ) -> tuple[Item | None, bool]:
        """The record, then whether `redrive_id` is done for it.

        Two consistent reads in this order need no transaction (which a concurrent complete()
        could cancel): a marker is only written together with a new version of the record, so
        one written after the first read makes the claim's `version = :read` write fail and the
        claim decide again; one written before it is seen by the second read."""
        record = self._get_item(source.bucket, source.key, RECORD_SK)
        if redrive_id is None:
            return record, False
        marker = self._get_item(source.bucket, source.key, redrive_sk(redrive_id))
        return record, marker is not None

    @staticmethod
    def _claimed(
        source: SourceRef, owner: str, token: str, lease: datetime, item: Item
    ) -> ClaimResult:
        record = file_record(item)
        claim = Claim(source, owner, token, attempt=record.attempts, lease_expires_at=lease)
        return ClaimResult(ClaimOutcome.CLAIMED, claim=claim, record=record)

    def _held_update(
        self,
        claim: Claim,
        now_us: int,
        sets: Mapping[str, Plain],
        *,
        remove: Sequence[str] = (),
        guard: tuple[str, Mapping[str, Plain]] | None = None,
    ) -> Item:
        """An Update of the claim's record (stamped and versioned) that applies only while the
        claim is held and, given a `guard` (condition, its values), only while that holds."""
        values: dict[str, Plain] = {**sets, "updated_at": now_us, "one": 1}
        values.update(token=claim.token, processing=_PROCESSING)
        update = "SET " + ", ".join(f"#{name} = :{name}" for name in (*sets, "updated_at"))
        update += ", #version = #version + :one"
        if remove:
            update += " REMOVE " + ", ".join(f"#{name}" for name in remove)
        condition = _HELD
        if guard is not None:
            condition += f" AND {guard[0]}"
            values.update(guard[1])
        key = item_key(claim.source.bucket, claim.source.key, RECORD_SK)
        return {"TableName": self.table, "Key": key, **expressions(values, update, condition)}

    def _write_held(
        self,
        claim: Claim,
        now_us: int,
        sets: Mapping[str, Plain],
        *,
        remove: Sequence[str] = (),
        guard: tuple[str, Mapping[str, Plain]] | None = None,
    ) -> Item:
        """Apply `_held_update`; the record as written. Raises: LeaseLost."""
        update = self._held_update(claim, now_us, sets, remove=remove, guard=guard)
        answer = self._held_call(claim, "update_item", ReturnValues="ALL_NEW", **update)
        attributes: Item = answer["Attributes"]
        return attributes

    def _held_transaction(self, claim: Claim, update: Item, item: Item) -> FileRecord:
        """`update` (a `_held_update`) and a Put of `item`, both or neither: the record as
        written. botocore gives the transaction a ClientRequestToken, so its own retries cannot
        apply it twice. Raises: LeaseLost."""
        put = {"TableName": self.table, "Item": item}
        self._held_call(
            claim, "transact_write_items", TransactItems=[{"Update": update}, {"Put": put}]
        )
        record = self.get(claim.source.bucket, claim.source.key)
        if record is None:  # forgotten between the write and this read: nothing to hand back
            raise self._lost(claim)
        return record

    def _held_call(self, claim: Claim, operation: str, **args: Any) -> Item:
        # A request retried after its first try was applied (lost answer) fails its condition
        # too and reports LeaseLost; the redelivered message then finds the object completed
        # (or failed) and moves on, so that false alarm costs one redelivery.
        try:
            return self._call(operation, **args)
        except Refused:
            raise self._lost(claim) from None

    @staticmethod
    def _lost(claim: Claim) -> LeaseLost:
        return LeaseLost(
            f"the claim on {claim.source.uri} is no longer held by {claim.owner}",
            source_ref=claim.source.uri,
            owner=claim.owner,
            hint="another worker took over; this attempt's work will be redone",
        )
