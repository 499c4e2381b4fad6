"""The embedded queue: SQS semantics on SQLite, every queue of an environment in one file.

A message is visible while `visible_at <= now`. Receiving pushes `visible_at` forward and stores
a fresh receipt handle, which is what makes every older handle of that message stale. Expired
messages (older than the queue's retention) are filtered out by timestamp everywhere and deleted
when a send or receive passes by.

Where this differs from SQS: a stale or unknown receipt handle raises `ReceiptHandleInvalid`
(SQS accepts it and leaves the message in place); delivery is strictly oldest first (SQS: best
effort); there is no per-message delay, so `delayed` is always 0.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sluice.backends.queue.base import (
    MAX_BATCH,
    Message,
    OutgoingMessage,
    QueueCounts,
    QueueSettings,
    RedrivePolicy,
    SendBatchResult,
)
from sluice.backends.sqlite import SqliteDb
from sluice.errors import BatchTooLarge, ConfigError, QueueNotFound, ReceiptHandleInvalid

# SQS's limits, so that what works here works on SQS.
MAX_MESSAGE_BYTES = 256 * 1024  # body and attributes together; also the limit of a whole batch
MAX_ATTRIBUTES = 10
MAX_VISIBILITY_SECONDS = 12 * 3600
MAX_RETENTION_SECONDS = 14 * 24 * 3600
MAX_WAIT_SECONDS = 20
MAX_RECEIVE_COUNT = 1000
POLL_INTERVAL_SECONDS = 0.05

_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # queue names and batch entry ids
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}")
_RESERVED_ATTRIBUTE_PREFIXES = ("aws.", "amazon.")
# SQS refuses any character outside XML 1.0's Char production (and so do lone surrogates here).
_INVALID_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    visibility_timeout INTEGER NOT NULL,
    retention_seconds INTEGER NOT NULL,
    dead_letter_queue TEXT,
    max_receive_count INTEGER
);
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS queue_messages_by_age ON queue_messages (queue, sent_at, visible_at)
"""

# The index holds (queue, sent_at, visible_at, seq): receiving scans it oldest first (sorting only
# messages sent in the same instant), counting and expiring read nothing else.
_SELECT_VISIBLE = """
SELECT seq, message_id, body, attributes, sent_at, receive_count FROM queue_messages
WHERE queue = ? AND sent_at >= ? AND visible_at <= ? ORDER BY sent_at, seq LIMIT ?
"""


class SqliteQueueFactory:
    """The queues of one environment, in the SQLite database at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteDb(path, SCHEMA)

    def create(self, name: str, settings: QueueSettings) -> SqliteQueue:
        """Create a queue, or update the settings of an existing one (idempotent).

        Raises:
            ConfigError: a bad name or setting, or a queue naming itself as its dead-letter queue.
            QueueNotFound: the redrive policy names a queue that does not exist.
        """
        _check_id("queue name", name)
        _check_range(
            "visibility_timeout_seconds",
            settings.visibility_timeout_seconds,
            0,
            MAX_VISIBILITY_SECONDS,
        )
        _check_range("retention_seconds", settings.retention_seconds, 1, MAX_RETENTION_SECONDS)
        policy = settings.redrive_policy
        if policy is not None:
            _check_range("max_receive_count", policy.max_receive_count, 1, MAX_RECEIVE_COUNT)
            if policy.dead_letter_queue == name:
                raise ConfigError(f"queue {name!r} cannot be its own dead-letter queue", queue=name)
        with self._db.write() as conn:
            if policy is not None:
                _load_settings(conn, policy.dead_letter_queue)
            conn.execute(
                "INSERT INTO queues (name, visibility_timeout, retention_seconds,"
                " dead_letter_queue, max_receive_count) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET"
                " visibility_timeout = excluded.visibility_timeout,"
                " retention_seconds = excluded.retention_seconds,"
                " dead_letter_queue = excluded.dead_letter_queue,"
                " max_receive_count = excluded.max_receive_count",
                (
                    name,
                    settings.visibility_timeout_seconds,
                    settings.retention_seconds,
                    policy.dead_letter_queue if policy else None,
                    policy.max_receive_count if policy else None,
                ),
            )
        return SqliteQueue(self._db, name)

    def open(self, name: str) -> SqliteQueue:
        """Raises:
        QueueNotFound: no queue of that name."""
        _load_settings(self._db.read(), name)
        return SqliteQueue(self._db, name)

    def close(self) -> None:
        """Close this thread's connection to the database."""
        self._db.close()


class SqliteQueue:
    """One queue in the environment's database; safe to share between threads and processes."""

    def __init__(self, db: SqliteDb, name: str) -> None:
        self._db = db
        self.name = name

    def send(self, body: str, attributes: Mapping[str, str] | None = None) -> str:
        """Send one message; returns its message id.

        Raises:
            ConfigError: an empty or oversized body, or bad attributes.
        """
        outgoing = OutgoingMessage(body, dict(attributes or {}))
        _validate(outgoing)
        message_id = str(uuid.uuid4())
        with self._db.write() as conn:
            self._insert(conn, [(message_id, outgoing)])
        return message_id

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        """Send up to MAX_BATCH messages; invalid entries are reported in `failed`.

        Raises:
            BatchTooLarge: more than MAX_BATCH entries, or more than MAX_MESSAGE_BYTES in all.
            ConfigError: no entries, or entry ids that are malformed or not distinct.
        """
        if not entries:
            raise ConfigError("a batch needs at least one entry", queue=self.name)
        if len(entries) > MAX_BATCH:
            raise BatchTooLarge(
                f"{len(entries)} entries in one batch; the limit is {MAX_BATCH}",
                queue=self.name,
                entries=len(entries),
            )
        ids = [entry.entry_id or str(i) for i, entry in enumerate(entries)]
        for entry_id in ids:
            _check_id("batch entry id", entry_id)
        if len(set(ids)) != len(ids):
            raise ConfigError("batch entry ids are not distinct", queue=self.name, entry_ids=ids)
        total = sum(_size(entry) for entry in entries)
        if total > MAX_MESSAGE_BYTES:
            raise BatchTooLarge(
                f"the batch holds {total} bytes; the limit is {MAX_MESSAGE_BYTES}",
                queue=self.name,
                size=total,
            )
        failed: dict[str, str] = {}
        valid: dict[str, OutgoingMessage] = {}
        for entry_id, entry in zip(ids, entries, strict=True):
            try:
                _validate(entry)
            except ConfigError as exc:
                failed[entry_id] = exc.message
            else:
                valid[entry_id] = entry
        sent = {entry_id: str(uuid.uuid4()) for entry_id in valid}
        if valid:
            with self._db.write() as conn:
                self._insert(conn, [(sent[entry_id], entry) for entry_id, entry in valid.items()])
        return SendBatchResult(sent=sent, failed=failed)

    def receive(
        self,
        max_messages: int = 1,
        *,
        visibility_timeout: int | None = None,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """Receive up to `max_messages` visible messages, oldest first.

        Raises:
            ConfigError: `max_messages` outside 1..MAX_BATCH, or a timeout or wait out of range.
        """
        _check_range("max_messages", max_messages, 1, MAX_BATCH)
        if visibility_timeout is not None:
            _check_range("visibility_timeout", visibility_timeout, 0, MAX_VISIBILITY_SECONDS)
        _check_range("wait_seconds", wait_seconds, 0, MAX_WAIT_SECONDS)
        deadline = time.monotonic() + wait_seconds
        while True:
            # A read never blocks (WAL), so idle pollers do not queue up on the write lock.
            if self._any_visible():
                messages = self._receive_now(max_messages, visibility_timeout)
                if messages:
                    return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(POLL_INTERVAL_SECONDS, remaining))

    def delete(self, receipt_handle: str) -> None:
        """Raises:
        ReceiptHandleInvalid: the handle is unknown or superseded by a later receive."""
        with self._db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM queue_messages WHERE queue = ? AND receipt_handle = ?",
                (self.name, receipt_handle),
            )
            if cursor.rowcount == 0:
                raise self._invalid_handle(receipt_handle)

    def change_visibility(self, receipt_handle: str, timeout_seconds: int) -> None:
        """Raises:
        ReceiptHandleInvalid: the handle is unknown or superseded.
        ConfigError: the timeout is outside 0..12 hours."""
        _check_range("timeout_seconds", timeout_seconds, 0, MAX_VISIBILITY_SECONDS)
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE queue_messages SET visible_at = ? WHERE queue = ? AND receipt_handle = ?",
                (time.time() + timeout_seconds, self.name, receipt_handle),
            )
            if cursor.rowcount == 0:
                raise self._invalid_handle(receipt_handle)

    def counts(self) -> QueueCounts:
        conn = self._db.read()
        settings = _load_settings(conn, self.name)
        now = time.time()
        row = conn.execute(
            "SELECT coalesce(sum(visible_at <= :now), 0) AS visible,"
            " coalesce(sum(visible_at > :now), 0) AS in_flight, min(sent_at) AS oldest"
            " FROM queue_messages WHERE queue = :queue AND sent_at >= :cutoff",
            {"now": now, "queue": self.name, "cutoff": now - settings.retention_seconds},
        ).fetchall()[0]
        oldest: float | None = row["oldest"]
        return QueueCounts(
            visible=row["visible"],
            in_flight=row["in_flight"],
            delayed=0,
            oldest_age_seconds=None if oldest is None else max(0.0, now - oldest),
        )

    def settings(self) -> QueueSettings:
        return _load_settings(self._db.read(), self.name)

    def purge(self) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM queue_messages WHERE queue = ?", (self.name,))

    def _insert(
        self, conn: sqlite3.Connection, messages: Sequence[tuple[str, OutgoingMessage]]
    ) -> None:
        settings = _load_settings(conn, self.name)
        now = time.time()
        self._drop_expired(conn, now - settings.retention_seconds)
        conn.executemany(
            "INSERT INTO queue_messages (queue, message_id, body, attributes, sent_at, visible_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (self.name, message_id, m.body, json.dumps(dict(m.attributes)), now, now)
                for message_id, m in messages
            ],
        )

    def _any_visible(self) -> bool:
        conn = self._db.read()
        settings = _load_settings(conn, self.name)
        now = time.time()
        rows = conn.execute(
            _SELECT_VISIBLE, (self.name, now - settings.retention_seconds, now, 1)
        ).fetchall()
        return bool(rows)

    def _receive_now(self, max_messages: int, visibility_timeout: int | None) -> list[Message]:
        # Select and update in one BEGIN IMMEDIATE transaction: no other process can pick the
        # same rows between the two, so a message is never handed to two receivers at once.
        with self._db.write() as conn:
            settings = _load_settings(conn, self.name)
            policy = settings.redrive_policy
            default = settings.visibility_timeout_seconds
            timeout = default if visibility_timeout is None else visibility_timeout
            now = time.time()
            cutoff = now - settings.retention_seconds
            self._drop_expired(conn, cutoff)
            received: list[Message] = []
            taken: set[int] = set()
            # Loops again only when messages moved to the dead-letter queue left room; with a
            # zero timeout the messages taken stay visible, so they are skipped by seq.
            while len(received) < max_messages:
                need = max_messages - len(received)
                limit = need + len(taken)
                fetched = conn.execute(_SELECT_VISIBLE, (self.name, cutoff, now, limit))
                rows = [row for row in fetched.fetchall() if row["seq"] not in taken][:need]
                if not rows:
                    break
                for row in rows:
                    if policy is not None and row["receive_count"] >= policy.max_receive_count:
                        # As on SQS the message keeps its id, body, attributes and sent time (so
                        # the DLQ's retention counts from the first send); its count restarts.
                        conn.execute(
                            "UPDATE queue_messages SET queue = ?, visible_at = ?,"
                            " receive_count = 0, receipt_handle = NULL WHERE seq = ?",
                            (policy.dead_letter_queue, now, row["seq"]),
                        )
                        continue
                    handle = uuid.uuid4().hex
                    count = row["receive_count"] + 1
                    conn.execute(
                        "UPDATE queue_messages SET visible_at = ?, receive_count = ?,"
                        " receipt_handle = ? WHERE seq = ?",
                        (now + timeout, count, handle, row["seq"]),
                    )
                    taken.add(row["seq"])
                    received.append(
                        Message(
                            message_id=row["message_id"],
                            body=row["body"],
                            attributes=json.loads(row["attributes"]),
                            receipt_handle=handle,
                            receive_count=count,
                            sent_at=datetime.fromtimestamp(row["sent_at"], UTC),
                        )
                    )
            return received

    def _drop_expired(self, conn: sqlite3.Connection, cutoff: float) -> None:
        conn.execute(
            "DELETE FROM queue_messages WHERE queue = ? AND sent_at < ?", (self.name, cutoff)
        )

    def _invalid_handle(self, handle: str) -> ReceiptHandleInvalid:
        message = f"receipt handle {handle!r} is unknown or superseded on queue {self.name!r}"
        return ReceiptHandleInvalid(message, queue=self.name, receipt_handle=handle)


def _load_settings(conn: sqlite3.Connection, name: str) -> QueueSettings:
    rows = conn.execute("SELECT * FROM queues WHERE name = ?", (name,)).fetchall()
    if not rows:
        raise QueueNotFound(f"queue {name!r} does not exist", queue=name)
    row = rows[0]
    policy = None
    if row["dead_letter_queue"] is not None:
        policy = RedrivePolicy(row["dead_letter_queue"], row["max_receive_count"])
    return QueueSettings(
        visibility_timeout_seconds=row["visibility_timeout"],
        retention_seconds=row["retention_seconds"],
        redrive_policy=policy,
    )


def _size(message: OutgoingMessage) -> int:
    parts = [message.body, *message.attributes.keys(), *message.attributes.values()]
    return len("".join(parts).encode("utf-8", "surrogatepass"))


def _validate(message: OutgoingMessage) -> None:
    if not message.body:
        raise ConfigError("a message body must not be empty")
    if _INVALID_CHAR.search(message.body):
        raise ConfigError("the message body holds characters SQS does not accept")
    if len(message.attributes) > MAX_ATTRIBUTES:
        raise ConfigError(
            f"{len(message.attributes)} attributes; a message carries at most {MAX_ATTRIBUTES}"
        )
    for key, value in message.attributes.items():
        if not _ATTRIBUTE_NAME.fullmatch(key) or key.lower().startswith(
            _RESERVED_ATTRIBUTE_PREFIXES
        ):
            raise ConfigError(f"attribute name {key!r} is not valid on SQS", attribute=key)
        if not value or _INVALID_CHAR.search(value):
            raise ConfigError(
                f"attribute {key!r} must have a non-empty value of characters SQS accepts",
                attribute=key,
            )
    size = _size(message)
    if size > MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"the message is {size} bytes with its attributes; the limit is"
            f" {MAX_MESSAGE_BYTES} (256 KiB): put large payloads in the object store",
            size=size,
        )


def _check_id(what: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} must be 1-80 letters, digits, '-' or '_'")


def _check_range(what: str, value: float, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{what} must be within {low}..{high}, not {value}")
