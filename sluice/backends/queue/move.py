"""Moving messages between queues, written once over the queue interface.

`move_messages` is the DLQ → source move for backends without a service-side move task;
`check_same_kind` and `resend` are shared with the other moves (SQS's fallback, redrive).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sluice.backends.queue.base import (
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    MAX_MOVE_RATE,
    Message,
    MoveStatus,
    MoveTask,
    OutgoingMessage,
    Queue,
)
from sluice.backends.queue.checks import check_range, is_fifo, message_size
from sluice.errors import ConfigError

# A message being moved is hidden this long; if the mover dies it reappears in the DLQ.
_MOVE_VISIBILITY_SECONDS = 60


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
