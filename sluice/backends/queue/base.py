"""The queue interface: SQS semantics, on SQLite (embedded) and SQS (AWS).

A message is delivered at least once. Receiving makes it invisible for the visibility timeout
and gives a receipt handle; deleting with the newest handle removes it; otherwise it becomes
visible again and its receive count grows. A queue with a redrive policy moves a message to its
dead-letter queue once it has been received `max_receive_count` times without being deleted
(the move happens at the next receive, as on SQS).

The limits below are SQS's; every implementation checks them before sending, so what works on
the embedded queue works on SQS. `move_messages` is the DLQ → source move written once over the
interface, for backends without a service-side move task.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sluice.errors import BatchTooLarge, ConfigError

MAX_BATCH = 10
MAX_MESSAGE_BYTES = 256 * 1024  # body and attributes together; also the limit of a whole batch
MAX_ATTRIBUTES = 10
MAX_VISIBILITY_SECONDS = 12 * 3600
MAX_RETENTION_SECONDS = 14 * 24 * 3600
MAX_WAIT_SECONDS = 20
MAX_RECEIVE_COUNT = 1000
MAX_MOVE_RATE = 500  # messages per second of a message-move task

_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # queue names and batch entry ids
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}")
_RESERVED_ATTRIBUTE_PREFIXES = ("aws.", "amazon.")
# SQS refuses any character outside XML 1.0's Char production (and so do lone surrogates here).
_INVALID_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class OutgoingMessage:
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    # Caller's id for the entry inside a batch (SQS's batch entry Id).
    entry_id: str = ""


@dataclass(frozen=True)
class Message:
    message_id: str
    body: str
    attributes: Mapping[str, str]
    receipt_handle: str
    receive_count: int
    sent_at: datetime


@dataclass(frozen=True)
class SendBatchResult:
    """Message ids of the entries sent and reasons for those that failed, by entry id."""

    sent: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    delayed: int = 0
    oldest_age_seconds: float | None = None


@dataclass(frozen=True)
class RedrivePolicy:
    dead_letter_queue: str
    max_receive_count: int


@dataclass(frozen=True)
class QueueSettings:
    visibility_timeout_seconds: int
    retention_seconds: int
    redrive_policy: RedrivePolicy | None = None


class MoveStatus(StrEnum):
    """The states of SQS's message-move task, which the embedded move reuses."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class MoveTask:
    """A move of a dead-letter queue's messages back to a source queue (DESIGN §5)."""

    source: str
    # None: each message goes back to the queue it came from (SQS's own move task).
    destination: str | None
    status: MoveStatus
    moved: int = 0
    to_move: int | None = None
    failure_reason: str | None = None
    # The service's handle while it runs the move; None when sluice moved the messages itself,
    # which is finished before `start_message_move` returns.
    task_handle: str | None = None


class Queue(Protocol):
    """One queue. `name` identifies it within its environment (SQS queues also have a `url`)."""

    name: str

    def send(self, body: str, attributes: Mapping[str, str] | None = None) -> str:
        """Send one message; returns its message id."""
        ...

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        """Send up to MAX_BATCH messages in one request; per-entry failures are reported.

        Entries without an `entry_id` are numbered "0", "1", … in the result.

        Raises:
            BatchTooLarge: more than MAX_BATCH entries.
        """
        ...

    def receive(
        self,
        max_messages: int = 1,
        *,
        visibility_timeout: int | None = None,
        wait_seconds: float = 0,
    ) -> list[Message]:
        """Receive up to `max_messages` (at most MAX_BATCH) visible messages.

        Waits up to `wait_seconds` for one to become visible (long poll). Each received message
        is invisible for `visibility_timeout` seconds (the queue's default when None).
        """
        ...

    def delete(self, receipt_handle: str) -> None:
        """Delete a received message.

        Raises:
            ReceiptHandleInvalid: the handle is unknown or superseded by a later receive
                (embedded); SQS accepts a stale handle but leaves the message in place.
        """
        ...

    def change_visibility(self, receipt_handle: str, timeout_seconds: int) -> None:
        """Make a received message visible again after `timeout_seconds` (0: at once).

        Raises:
            ReceiptHandleInvalid: the handle is unknown or superseded.
        """
        ...

    def counts(self) -> QueueCounts:
        """Approximate visible, in-flight and delayed counts and the oldest message's age."""
        ...

    def settings(self) -> QueueSettings: ...

    def purge(self) -> None:
        """Delete every message."""
        ...


class QueueFactory(Protocol):
    """Creates and opens the queues of one environment."""

    def create(self, name: str, settings: QueueSettings) -> Queue:
        """Create a queue, or update the settings of an existing one (idempotent)."""
        ...

    def open(self, name: str) -> Queue:
        """Raises:
        QueueNotFound: no queue of that name."""
        ...

    def start_message_move(
        self, source_dlq: str, destination: str | None = None, max_per_second: int | None = None
    ) -> MoveTask:
        """Move every message of the dead-letter queue `source_dlq` to `destination`.

        Each message keeps its body and attributes and leaves the DLQ only after its send is
        confirmed. `destination` None: back to the queue whose redrive policy names the DLQ.
        `max_per_second` (1..MAX_MOVE_RATE) caps the rate; None moves as fast as the backend
        goes. Where the service runs the move itself (SQS's message-move task) the task comes
        back RUNNING: poll `move_task_status`. Otherwise the messages are moved inside this call
        and the task comes back COMPLETED, or FAILED with the reason.

        Raises:
            QueueNotFound: either queue does not exist.
            ConfigError: a rate out of range, the source as its own destination, or no
                destination given and the DLQ is not the DLQ of exactly one queue.
        """
        ...

    def move_task_status(self, task: MoveTask) -> MoveTask:
        """The task as it stands now (a finished task is returned as it is)."""
        ...


# Checks shared by every implementation ------------------------------------------------------


def validate_message(message: OutgoingMessage) -> None:
    """Raises:
    ConfigError: an empty or oversized message, or attributes SQS refuses."""
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
    size = message_size(message)
    if size > MAX_MESSAGE_BYTES:
        raise ConfigError(
            f"the message is {size} bytes with its attributes; the limit is"
            f" {MAX_MESSAGE_BYTES} (256 KiB): put large payloads in the object store",
            size=size,
        )


def batch_entry_ids(queue: str, entries: Sequence[OutgoingMessage]) -> list[str]:
    """The entry id of each entry ("0", "1", … where none is given), once the batch is checked.

    Raises:
        BatchTooLarge: more than MAX_BATCH entries, or more than MAX_MESSAGE_BYTES in all.
        ConfigError: no entries, or entry ids that are malformed or not distinct.
    """
    if not entries:
        raise ConfigError("a batch needs at least one entry", queue=queue)
    if len(entries) > MAX_BATCH:
        raise BatchTooLarge(
            f"{len(entries)} entries in one batch; the limit is {MAX_BATCH}",
            queue=queue,
            entries=len(entries),
        )
    ids = [entry.entry_id or str(i) for i, entry in enumerate(entries)]
    for entry_id in ids:
        check_name("batch entry id", entry_id)
    if len(set(ids)) != len(ids):
        raise ConfigError("batch entry ids are not distinct", queue=queue, entry_ids=ids)
    total = sum(message_size(entry) for entry in entries)
    if total > MAX_MESSAGE_BYTES:
        raise BatchTooLarge(
            f"the batch holds {total} bytes; the limit is {MAX_MESSAGE_BYTES}",
            queue=queue,
            size=total,
        )
    return ids


def message_size(message: OutgoingMessage) -> int:
    parts = [message.body, *message.attributes.keys(), *message.attributes.values()]
    return len("".join(parts).encode("utf-8", "surrogatepass"))


def check_name(what: str, value: str) -> None:
    """Raises:
    ConfigError: not a valid queue name or batch entry id."""
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} must be 1-80 letters, digits, '-' or '_'")


def check_range(what: str, value: float, low: int, high: int) -> None:
    """Raises:
    ConfigError: `value` outside low..high."""
    if not low <= value <= high:
        raise ConfigError(f"{what} must be within {low}..{high}, not {value}")


# The DLQ move, for backends without a service-side move task ---------------------------------

# A message being moved is hidden this long; if the mover dies it reappears in the DLQ.
_MOVE_VISIBILITY_SECONDS = 60


def move_messages(
    source: Queue,
    destination: Queue,
    *,
    max_per_second: int | None = None,
    wait_seconds: float = 0,
) -> MoveTask:
    """Move every message of `source` to `destination`; returns the finished task.

    Receives a batch, sends it on with body and attributes, and deletes from `source` only the
    entries whose send was confirmed. An entry that fails makes the move stop FAILED with its
    reason, the messages not moved visible again in `source`. `wait_seconds` is the receive's
    long poll: a queue whose short poll can miss messages (SQS) needs it to tell empty from
    unlucky.

    Raises:
        ConfigError: a rate out of range, or `source` as its own destination.
    """
    if max_per_second is not None:
        check_range("max_per_second", max_per_second, 1, MAX_MOVE_RATE)
    if source.name == destination.name:
        raise ConfigError(f"queue {source.name!r} cannot be moved into itself", queue=source.name)
    batch = MAX_BATCH if max_per_second is None else min(MAX_BATCH, max_per_second)
    started = time.monotonic()
    moved = 0
    failed: dict[str, str] = {}
    while not failed and (
        received := source.receive(
            batch, visibility_timeout=_MOVE_VISIBILITY_SECONDS, wait_seconds=wait_seconds
        )
    ):
        for chunk in _within_batch_size(received):
            if failed:
                for message in chunk:
                    source.change_visibility(message.receipt_handle, 0)
                continue
            if max_per_second is not None:
                # Paced before each send: `moved` messages may have gone by now, no more.
                time.sleep(max(0.0, started + moved / max_per_second - time.monotonic()))
            result = destination.send_batch(
                [
                    OutgoingMessage(m.body, m.attributes, entry_id=str(i))
                    for i, m in enumerate(chunk)
                ]
            )
            for i, message in enumerate(chunk):
                if str(i) in result.sent:
                    source.delete(message.receipt_handle)
                    moved += 1
                else:
                    source.change_visibility(message.receipt_handle, 0)
            failed.update(result.failed)
    if failed:
        reason = "; ".join(sorted(set(failed.values())))
        return MoveTask(source.name, destination.name, MoveStatus.FAILED, moved, None, reason)
    return MoveTask(source.name, destination.name, MoveStatus.COMPLETED, moved, to_move=moved)


def _within_batch_size(messages: Sequence[Message]) -> list[list[Message]]:
    """`messages` in runs whose sizes add up to at most MAX_MESSAGE_BYTES (a batch's limit)."""
    chunks: list[list[Message]] = []
    total = MAX_MESSAGE_BYTES
    for message in messages:
        size = message_size(OutgoingMessage(message.body, message.attributes))
        if total + size > MAX_MESSAGE_BYTES:
            chunks.append([])
            total = 0
        chunks[-1].append(message)
        total += size
    return chunks
