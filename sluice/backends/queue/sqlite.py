"""The embedded queue: SQS semantics on SQLite, every queue of an environment in one file.

A message is visible while `visible_at <= now`. Receiving pushes `visible_at` forward and stores
a fresh receipt handle, which is what makes every older handle of that message stale. Expired
messages (older than the queue's retention) are filtered out by timestamp everywhere and deleted
when a send or receive passes by.

Where this differs from SQS: a stale or unknown receipt handle raises `ReceiptHandleInvalid`
(SQS accepts it and leaves the message in place); delivery is strictly oldest first (SQS: best
effort); there is no per-message delay, so `delayed` is always 0; a message moved to the
dead-letter queue restarts its receive count (SQS keeps counting); a DLQ move runs inside
`start_message_move` instead of as a background task.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sluice.backends.queue.base import (
    MAX_BATCH,
    MAX_RECEIVE_COUNT,
    MAX_RETENTION_SECONDS,
    MAX_VISIBILITY_SECONDS,
    MAX_WAIT_SECONDS,
    Message,
    MoveTask,
    OutgoingMessage,
    QueueCounts,
    QueueSettings,
    RedrivePolicy,
    SendBatchResult,
    batch_entry_ids,
    check_name,
    check_range,
    move_messages,
    validate_message,
)
from sluice.backends.sqlite import SqliteDb
from sluice.errors import ConfigError, QueueNotFound, ReceiptHandleInvalid

POLL_INTERVAL_SECONDS = 0.05

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
        check_name("queue name", name)
        check_range(
            "visibility_timeout_seconds",
            settings.visibility_timeout_seconds,
            0,
            MAX_VISIBILITY_SECONDS,
        )
        check_range("retention_seconds", settings.retention_seconds, 1, MAX_RETENTION_SECONDS)
        policy = settings.redrive_policy
        if policy is not None:
            check_range("max_receive_count", policy.max_receive_count, 1, MAX_RECEIVE_COUNT)
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

    def start_message_move(
        self, source_dlq: str, destination: str | None = None, max_per_second: int | None = None
    ) -> MoveTask:
        """Move the DLQ's messages inside this call; the task returned is finished.

        Raises:
            QueueNotFound: either queue does not exist.
            ConfigError: a rate out of range, the source as its own destination, or no
                destination given and the DLQ is not the DLQ of exactly one queue.
        """
        source = self.open(source_dlq)
        if destination is None:
            rows = self._db.read().execute(
                "SELECT name FROM queues WHERE dead_letter_queue = ? ORDER BY name", (source_dlq,)
            )
            sources = [row["name"] for row in rows.fetchall()]
            if len(sources) != 1:
                raise ConfigError(
                    f"queue {source_dlq!r} is the dead-letter queue of {len(sources)} queues"
                    f" {sources}; name the destination",
                    queue=source_dlq,
                )
            destination = sources[0]
        return move_messages(source, self.open(destination), max_per_second=max_per_second)

    def move_task_status(self, task: MoveTask) -> MoveTask:
        return task

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
        validate_message(outgoing)
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
        ids = batch_entry_ids(self.name, entries)
        failed: dict[str, str] = {}
        valid: dict[str, OutgoingMessage] = {}
        for entry_id, entry in zip(ids, entries, strict=True):
            try:
                validate_message(entry)
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
        check_range("max_messages", max_messages, 1, MAX_BATCH)
        if visibility_timeout is not None:
            check_range("visibility_timeout", visibility_timeout, 0, MAX_VISIBILITY_SECONDS)
        check_range("wait_seconds", wait_seconds, 0, MAX_WAIT_SECONDS)
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
        check_range("timeout_seconds", timeout_seconds, 0, MAX_VISIBILITY_SECONDS)
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
