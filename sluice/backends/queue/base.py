"""The queue interface: SQS semantics, on SQLite (embedded) and SQS (AWS).

A message is delivered at least once. Receiving makes it invisible for the visibility timeout
and gives a receipt handle; deleting with the newest handle removes it; otherwise it becomes
visible again and its receive count grows. A queue with a redrive policy moves a message to its
dead-letter queue once it has been received `max_receive_count` times without being deleted
(the move happens at the next receive, as on SQS).

A FIFO queue (SQS: a name ending in ".fifo") delivers the messages of one group in the order
they were sent, and none of a group while another of it is in flight; a message sent again with
the deduplication id (or, with content-based deduplication, the body) of one sent in the last
DEDUPLICATION_WINDOW_SECONDS is accepted but not enqueued again.

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
DEDUPLICATION_WINDOW_SECONDS = 5 * 60
FIFO_SUFFIX = ".fifo"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # queue names and batch entry ids
_FIFO_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}\.fifo")  # the suffix counts in the 80
# Group and deduplication ids: 1-128 letters, digits and ASCII punctuation (no spaces).
_FIFO_ID = re.compile(r"[!-~]{1,128}")
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
    # FIFO queues only: every message needs a group id, and a deduplication id unless the queue
    # deduplicates by content.
    group_id: str | None = None
    deduplication_id: str | None = None


@dataclass(frozen=True)
class Message:
    message_id: str
    body: str
    attributes: Mapping[str, str]
    receipt_handle: str
    receive_count: int
    sent_at: datetime
    # FIFO queues only. The deduplication id is the one sent, or the body's hash with
    # content-based deduplication.
    group_id: str | None = None
    deduplication_id: str | None = None


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
    # A FIFO queue's name ends in FIFO_SUFFIX, and a standard queue's does not (SQS's rule).
    fifo: bool = False
    # FIFO only: a message sent without a deduplication id is deduplicated by its body's SHA-256.
    content_based_deduplication: bool = False


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

    def send(
        self,
        body: str,
        attributes: Mapping[str, str] | None = None,
        *,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Send one message; returns its message id.

        A FIFO queue accepts a duplicate (`DEDUPLICATION_WINDOW_SECONDS`) without enqueuing it;
        the id returned for it is the first message's on the embedded queue, SQS's on SQS.

        Raises:
            ConfigError: a message the queue refuses (`validate_message`, `check_fifo_message`).
        """
        ...

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        """Send up to MAX_BATCH messages in one request; per-entry failures are reported.

        Entries without an `entry_id` are numbered "0", "1", … in the result. An entry the queue
        refuses (`validate_message`, `check_fifo_message`) is a failure of that entry only.

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
        """Create a queue, or update the settings of an existing one (idempotent).

        Raises:
            ConfigError: a bad name or setting (`check_queue_name`, `check_fifo_settings`).
            QueueNotFound: the redrive policy names a queue that does not exist.
        """
        ...

    def open(self, name: str) -> Queue:
        """Raises:
        QueueNotFound: no queue of that name."""
        ...

    def start_message_move(
        self, source_dlq: str, destination: str | None = None, max_per_second: int | None = None
    ) -> MoveTask:
        """Move every message of the dead-letter queue `source_dlq` to `destination`.

        Each message keeps its body, attributes and group id and leaves the DLQ only after its
        send is confirmed. `destination` None: back to the queue whose redrive policy names the DLQ.
        `max_per_second` (1..MAX_MOVE_RATE) caps the rate; None moves as fast as the backend
        goes. Where the service runs the move itself (SQS's message-move task) the task comes
        back RUNNING: poll `move_task_status`. Otherwise the messages are moved inside this call
        and the task comes back COMPLETED, or FAILED with the reason.

        Raises:
            QueueNotFound: either queue does not exist.
            ConfigError: a rate out of range, the source as its own destination, a FIFO queue
                and a standard one, or no destination given and the DLQ is not the DLQ of
                exactly one queue.
        """
        ...

    def move_task_status(self, task: MoveTask) -> MoveTask:
        """The task as it stands now (a finished task is returned as it is)."""
        ...


# Checks shared by every implementation ------------------------------------------------------


def validate_message(message: OutgoingMessage) -> None:
    """Raises:
    ConfigError: an empty or oversized message, attributes SQS refuses, or a malformed group or
        deduplication id."""
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
    for what, fifo_id in (
        ("group id", message.group_id),
        ("deduplication id", message.deduplication_id),
    ):
        if fifo_id is not None and not _FIFO_ID.fullmatch(fifo_id):
            shown = fifo_id if len(fifo_id) <= 40 else fifo_id[:40] + "…"
            raise ConfigError(
                f"a {what} must be 1-128 letters, digits or ASCII punctuation, not {shown!r}"
                f" ({len(fifo_id)} characters)",
                hint="SQS accepts a-z, A-Z, 0-9 and !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
            )


def check_fifo_message(
    queue: str, message: OutgoingMessage, *, fifo: bool, content_based_deduplication: bool
) -> None:
    """Raises:
    ConfigError: for a FIFO queue, a message without a group id, or without a deduplication id
        where the queue does not deduplicate by content; for a standard queue, either id."""
    if not fifo:
        # SQS now takes a group id on a standard queue too, as a tenant for its fair queues,
        # without any order. Refused here: a group id always means FIFO order, and a move never
        # carries one into a queue that would drop that order silently.
        if message.group_id is not None or message.deduplication_id is not None:
            raise ConfigError(
                f"queue {queue!r} is a standard queue, which takes no group or deduplication id",
                hint=f"leave the ids out, or send to a FIFO queue (a name ending in {FIFO_SUFFIX})",
                queue=queue,
            )
        return
    if message.group_id is None:
        raise ConfigError(
            f"queue {queue!r} is a FIFO queue: every message needs a group id",
            hint="pass a group id: the messages of one group are delivered in order, one at a time",
            queue=queue,
        )
    if message.deduplication_id is None and not content_based_deduplication:
        raise ConfigError(
            f"FIFO queue {queue!r} does not deduplicate by content: every message needs a"
            " deduplication id",
            hint="pass a deduplication id (a send repeated within 5 minutes is not enqueued"
            " again), or create the queue with content-based deduplication",
            queue=queue,
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
    ConfigError: not a valid batch entry id."""
    if not _NAME.fullmatch(value):
        raise ConfigError(f"{what} {value!r} must be 1-80 letters, digits, '-' or '_'")


def check_queue_name(name: str) -> None:
    """Raises:
    ConfigError: not 1-80 letters, digits, '-' or '_' (or, for a FIFO queue, up to 75 of them
        and ".fifo")."""
    if not (_NAME.fullmatch(name) or _FIFO_NAME.fullmatch(name)):
        raise ConfigError(
            f"queue name {name!r} must be 1-80 letters, digits, '-' or '_'",
            hint=f"a FIFO queue's name ends in {FIFO_SUFFIX}, which counts in the 80",
        )


def is_fifo(name: str) -> bool:
    """Whether the queue of this name (or URL) is a FIFO queue: SQS ties the type to the name."""
    return name.rstrip("/").endswith(FIFO_SUFFIX)


def check_fifo_settings(name: str, settings: QueueSettings) -> None:
    """Raises:
    ConfigError: a FIFO queue whose name does not end in ".fifo" or the reverse, content-based
        deduplication on a standard queue, or a dead-letter queue of the other type (SQS's
        rules)."""
    if settings.fifo and not is_fifo(name):
        raise ConfigError(
            f"FIFO queue {name!r} needs a name ending in {FIFO_SUFFIX}",
            hint=f"rename it {name}{FIFO_SUFFIX}",
            queue=name,
        )
    if is_fifo(name) and not settings.fifo:
        raise ConfigError(
            f"queue {name!r} ends in {FIFO_SUFFIX}, which only a FIFO queue's name does",
            hint="create it with fifo=True, or drop the suffix for a standard queue",
            queue=name,
        )
    if settings.content_based_deduplication and not settings.fifo:
        raise ConfigError(f"queue {name!r}: only a FIFO queue deduplicates by content", queue=name)
    policy = settings.redrive_policy
    if policy is not None and is_fifo(policy.dead_letter_queue) != settings.fifo:
        kind = "FIFO" if settings.fifo else "standard"
        raise ConfigError(
            f"the dead-letter queue of {kind} queue {name!r} must be {kind} too, not"
            f" {policy.dead_letter_queue!r}",
            hint="a FIFO queue's dead-letter queue is a FIFO queue, a standard queue's a standard"
            " one",
            queue=name,
        )


def check_same_kind(source: Queue, destination: Queue) -> bool:
    """Whether a move from `source` goes into a FIFO queue.

    Raises:
        ConfigError: one queue is FIFO and the other standard (SQS moves only between queues
            of one type: FIFO messages need their group ids, standard ones have none).
    """
    into_fifo = is_fifo(destination.name)
    if is_fifo(source.name) != into_fifo:
        kinds = ("FIFO", "standard") if into_fifo else ("standard", "FIFO")
        raise ConfigError(
            f"cannot move messages from {kinds[1]} queue {source.name!r} to {kinds[0]} queue"
            f" {destination.name!r}",
            hint="move between two FIFO queues or two standard queues",
            source=source.name,
            destination=destination.name,
        )
    return into_fifo


def resend(message: Message, entry_id: str, *, into_fifo: bool) -> OutgoingMessage:
    """`message` as a batch entry for the queue it moves to: body and attributes, and into a
    FIFO queue its group id and a deduplication id."""
    if not into_fifo:
        return OutgoingMessage(message.body, message.attributes, entry_id=entry_id)
    # The original deduplication id, else the message's own id: either is the same every time
    # this message is moved, so a move retried after a crash (sent, not yet deleted from the
    # source) within the deduplication window does not enqueue it twice.
    return OutgoingMessage(
        message.body,
        message.attributes,
        entry_id=entry_id,
        group_id=message.group_id,
        deduplication_id=message.deduplication_id or message.message_id,
    )


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

    Receives a batch, sends it on with body, attributes and group id (`resend`), and deletes
    from `source` only the entries whose send was confirmed. An entry that fails makes the move
    stop FAILED with its reason, the messages not moved visible again in `source`.
    `wait_seconds` is the receive's long poll: a queue whose short poll can miss messages (SQS)
    needs it to tell empty from unlucky.

    Raises:
        ConfigError: a rate out of range, `source` as its own destination, or a FIFO queue and
            a standard one.
    """
    if max_per_second is not None:
        check_range("max_per_second", max_per_second, 1, MAX_MOVE_RATE)
    if source.name == destination.name:
        raise ConfigError(f"queue {source.name!r} cannot be moved into itself", queue=source.name)
    into_fifo = check_same_kind(source, destination)
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
                [resend(m, str(i), into_fifo=into_fifo) for i, m in enumerate(chunk)]
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
