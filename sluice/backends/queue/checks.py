"""Checks every queue implementation makes, so the embedded queue refuses what SQS refuses.

Names, messages, batches and settings are checked against SQS's limits (the constants of
`sluice.backends.queue.base`) before anything is sent or created.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sluice.backends.queue.base import (
    FIFO_SUFFIX,
    MAX_ATTRIBUTES,
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    OutgoingMessage,
    QueueSettings,
)
from sluice.errors import BatchTooLarge, ConfigError

_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")  # queue names and batch entry ids
_FIFO_NAME = re.compile(r"[A-Za-z0-9_-]{1,75}\.fifo")  # the suffix counts in the 80
# Group and deduplication ids: 1-128 letters, digits and ASCII punctuation (no spaces).
_FIFO_ID = re.compile(r"[!-~]{1,128}")
_ATTRIBUTE_NAME = re.compile(r"(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}")
_RESERVED_ATTRIBUTE_PREFIXES = ("aws.", "amazon.")
# SQS refuses any character outside XML 1.0's Char production (and so do lone surrogates here).
_INVALID_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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


def check_range(what: str, value: float, low: int, high: int) -> None:
    """Raises:
    ConfigError: `value` outside low..high."""
    if not low <= value <= high:
        raise ConfigError(f"{what} must be within {low}..{high}, not {value}")
