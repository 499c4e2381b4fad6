"""The queue interface: SQS semantics, on SQLite (embedded) and SQS (AWS).

A message is delivered at least once. Receiving makes it invisible for the visibility timeout
and gives a receipt handle; deleting with the newest handle removes it; otherwise it becomes
visible again and its receive count grows. A queue with a redrive policy moves a message to its
dead-letter queue once it has been received `max_receive_count` times without being deleted
(the move happens at the next receive, as on SQS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

MAX_BATCH = 10


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


class Queue(Protocol):
    """One queue. `name` identifies it within its environment (a URL on SQS)."""

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
