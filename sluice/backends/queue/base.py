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

The limits below are SQS's; every implementation checks them before sending
(`sluice.backends.queue.checks`), so what works on the embedded queue works on SQS. The DLQ →
source move for backends without a service-side move task is written once over the interface,
in `sluice.backends.queue.move`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

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
            ConfigError: a message the queue refuses (`checks.validate_message`,
                `checks.check_fifo_message`).
        """
        ...

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        """Send up to MAX_BATCH messages in one request; per-entry failures are reported.

        Entries without an `entry_id` are numbered "0", "1", … in the result. An entry the queue
        refuses (`checks.validate_message`, `checks.check_fifo_message`) is a failure of that
        entry only.

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
            ConfigError: a bad name or setting (`checks.check_queue_name`,
                `checks.check_fifo_settings`).
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
