"""The embedded queue: SQS semantics on SQLite, every queue of an environment in one file.

A message is visible while `visible_at <= now`. Receiving pushes `visible_at` forward and stores
a fresh receipt handle, which is what makes every older handle of that message stale. Expired
messages (older than the queue's retention) are filtered out by timestamp everywhere and deleted
when a send or receive passes by.

A FIFO queue receives oldest first among the groups that have no message in flight, so the
messages of a group come in the order they were sent. Its deduplication window is a table of
the deduplication ids sent in the last five minutes, kept through deletes and purges as on SQS.
As on SQS, a message moved to a FIFO dead-letter queue takes its message id as its
deduplication id, so two messages that shared one can both be kept there.

Where this differs from SQS: a stale or unknown receipt handle raises `ReceiptHandleInvalid`
(SQS accepts it and leaves the message in place); delivery is strictly oldest first (SQS: best
effort); there is no per-message delay, so `delayed` is always 0; a message moved to the
dead-letter queue restarts its receive count (SQS keeps counting); a DLQ move runs inside
`start_message_move` instead of as a background task.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sluice.backends.queue.base import (
    DEDUPLICATION_WINDOW_SECONDS,
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
    SendBatchResult,
)
from sluice.backends.queue.checks import (
    batch_entry_ids,
    check_fifo_message,
    check_fifo_settings,
    check_queue_name,
    check_range,
    validate_message,
)
from sluice.backends.queue.move import move_messages
from sluice.backends.queue.sqlite_schema import (
    SCHEMA,
    SELECT_VISIBLE,
    SELECT_VISIBLE_FIFO,
    add_missing_columns,
    load_settings,
)
from sluice.backends.sqlite import SqliteDb
from sluice.errors import ConfigError, ReceiptHandleInvalid

POLL_INTERVAL_SECONDS = 0.05


class SqliteQueueFactory:
    """The queues of one environment, in the SQLite database at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteDb(path, SCHEMA)
        add_missing_columns(self._db)

    def create(self, name: str, settings: QueueSettings) -> SqliteQueue:
        """Create a queue, or update the settings of an existing one (idempotent).

        Raises:
            ConfigError: a bad name or setting (`check_fifo_settings`), or a queue naming itself
                as its dead-letter queue.
            QueueNotFound: the redrive policy names a queue that does not exist.
        """
        check_queue_name(name)
        check_fifo_settings(name, settings)
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
                load_settings(conn, policy.dead_letter_queue)
            # `fifo` follows the name, so an update never changes it.
            conn.execute(
                "INSERT INTO queues (name, visibility_timeout, retention_seconds,"
                " dead_letter_queue, max_receive_count, fifo, content_based_deduplication)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET"
                " visibility_timeout = excluded.visibility_timeout,"
                " retention_seconds = excluded.retention_seconds,"
                " dead_letter_queue = excluded.dead_letter_queue,"
                " max_receive_count = excluded.max_receive_count,"
                " content_based_deduplication = excluded.content_based_deduplication",
                (
                    name,
                    settings.visibility_timeout_seconds,
                    settings.retention_seconds,
                    policy.dead_letter_queue if policy else None,
                    policy.max_receive_count if policy else None,
                    settings.fifo,
                    settings.content_based_deduplication,
                ),
            )
        return SqliteQueue(self._db, name)

    def open(self, name: str) -> SqliteQueue:
        """Raises:
        QueueNotFound: no queue of that name."""
        load_settings(self._db.read(), name)
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

    def send(
        self,
        body: str,
        attributes: Mapping[str, str] | None = None,
        *,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Send one message; returns its message id (on a FIFO queue, a duplicate's is the id
        of the message it duplicates).

        Raises:
            ConfigError: an empty or oversized body, bad attributes, or ids the queue's type
                refuses.
        """
        outgoing = OutgoingMessage(
            body, dict(attributes or {}), group_id=group_id, deduplication_id=deduplication_id
        )
        validate_message(outgoing)
        with self._db.write() as conn:
            settings = load_settings(conn, self.name)
            self._check_type(outgoing, settings)
            [message_id] = self._insert(conn, settings, [outgoing])
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
        with self._db.write() as conn:
            settings = load_settings(conn, self.name)
            for entry_id, entry in zip(ids, entries, strict=True):
                try:
                    validate_message(entry)
                    self._check_type(entry, settings)
                except ConfigError as exc:
                    failed[entry_id] = exc.message
                else:
                    valid[entry_id] = entry
            message_ids = self._insert(conn, settings, list(valid.values()))
        return SendBatchResult(sent=dict(zip(valid, message_ids, strict=True)), failed=failed)

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
        settings = load_settings(conn, self.name)
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
        return load_settings(self._db.read(), self.name)

    def purge(self) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM queue_messages WHERE queue = ?", (self.name,))

    def _check_type(self, message: OutgoingMessage, settings: QueueSettings) -> None:
        check_fifo_message(
            self.name,
            message,
            fifo=settings.fifo,
            content_based_deduplication=settings.content_based_deduplication,
        )

    def _insert(
        self,
        conn: sqlite3.Connection,
        settings: QueueSettings,
        messages: Sequence[OutgoingMessage],
    ) -> list[str]:
        """Insert checked messages; returns their ids, on a FIFO queue a duplicate's being the
        id of the message it duplicates (which is not inserted again)."""
        now = time.time()
        self._drop_expired(conn, now - settings.retention_seconds)
        if settings.fifo:
            conn.execute(
                "DELETE FROM queue_deduplication WHERE queue = ? AND sent_at < ?",
                (self.name, now - DEDUPLICATION_WINDOW_SECONDS),
            )
        ids: list[str] = []
        for message in messages:
            key = _deduplication_key(message, settings)
            first = None if key is None else self._deduplicated_as(conn, key)
            if first is not None:
                ids.append(first)
                continue
            message_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO queue_messages (queue, message_id, body, attributes, sent_at,"
                " visible_at, group_id, deduplication_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.name,
                    message_id,
                    message.body,
                    json.dumps(dict(message.attributes)),
                    now,
                    now,
                    message.group_id,
                    key,
                ),
            )
            if key is not None:
                conn.execute(
                    "INSERT INTO queue_deduplication VALUES (?, ?, ?, ?)",
                    (self.name, key, message_id, now),
                )
            ids.append(message_id)
        return ids

    def _deduplicated_as(self, conn: sqlite3.Connection, key: str) -> str | None:
        """The id of the message sent with deduplication id `key` within the window, if any."""
        rows = conn.execute(
            "SELECT message_id FROM queue_deduplication WHERE queue = ? AND deduplication_id = ?",
            (self.name, key),
        ).fetchall()
        return str(rows[0]["message_id"]) if rows else None

    def _select_visible(
        self, conn: sqlite3.Connection, settings: QueueSettings, now: float, limit: int
    ) -> list[sqlite3.Row]:
        query = SELECT_VISIBLE_FIFO if settings.fifo else SELECT_VISIBLE
        cutoff = now - settings.retention_seconds
        params = {"queue": self.name, "cutoff": cutoff, "now": now, "limit": limit}
        return conn.execute(query, params).fetchall()

    def _any_visible(self) -> bool:
        conn = self._db.read()
        return bool(self._select_visible(conn, load_settings(conn, self.name), time.time(), 1))

    def _receive_now(self, max_messages: int, visibility_timeout: int | None) -> list[Message]:
        # Select and update in one BEGIN IMMEDIATE transaction: no other process can pick the
        # same rows between the two, so a message is never handed to two receivers at once.
        with self._db.write() as conn:
            settings = load_settings(conn, self.name)
            policy = settings.redrive_policy
            default = settings.visibility_timeout_seconds
            timeout = default if visibility_timeout is None else visibility_timeout
            now = time.time()
            self._drop_expired(conn, now - settings.retention_seconds)
            received: list[Message] = []
            taken: set[int] = set()
            # Loops again only when messages moved to the dead-letter queue left room; with a
            # zero timeout the messages taken stay visible, so they are skipped by seq.
            while len(received) < max_messages:
                need = max_messages - len(received)
                fetched = self._select_visible(conn, settings, now, need + len(taken))
                rows = [row for row in fetched if row["seq"] not in taken][:need]
                if not rows:
                    break
                for row in rows:
                    if policy is not None and row["receive_count"] >= policy.max_receive_count:
                        # As on SQS the message keeps its id, body, attributes, group and sent
                        # time (so the DLQ's retention counts from the first send); its count
                        # restarts, and on a FIFO queue its id becomes its deduplication id.
                        conn.execute(
                            "UPDATE queue_messages SET queue = ?, visible_at = ?,"
                            " receive_count = 0, receipt_handle = NULL,"
                            " deduplication_id = ? WHERE seq = ?",
                            (
                                policy.dead_letter_queue,
                                now,
                                row["message_id"] if settings.fifo else None,
                                row["seq"],
                            ),
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
                            group_id=row["group_id"],
                            deduplication_id=row["deduplication_id"],
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


def _deduplication_key(message: OutgoingMessage, settings: QueueSettings) -> str | None:
    """The id a FIFO queue deduplicates `message` by (None on a standard queue): the one given,
    else (content-based deduplication) the SHA-256 of the body, as SQS computes it."""
    if not settings.fifo:
        return None
    return message.deduplication_id or hashlib.sha256(message.body.encode()).hexdigest()
