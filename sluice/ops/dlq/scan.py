"""Reading a DLQ without consuming it: `list`, `inspect` and `explain`.

Every read holds what it received invisible while it reads on (so the next receive returns
new messages, not the same ones again), then makes all of it visible again at once: the queue
ends as it began, except that each message read counts one more receive (reported as the cost).

A FIFO queue hands out no message of a group while another of it is held, so a read without
consuming sees of each group only what the first receive reaching it returned (up to 10
messages): `list`, `inspect` and `explain` see no deeper into a group. `redrive-all` and `purge`
delete as they go, which lets them read on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sluice.backends.ledger.base import FailureEvent
from sluice.backends.queue.base import MAX_BATCH, MAX_VISIBILITY_SECONDS, Message, Queue
from sluice.env import Env
from sluice.errors import ConfigError, SluiceError
from sluice.ops.dlq.metrics import record_metrics
from sluice.ops.dlq.model import (
    DEFAULT_LIST,
    MAX_LIST,
    MAX_SCAN,
    Category,
    DlqMessage,
    DlqPair,
    ScanCost,
    Validation,
    describe,
    validate_message,
)
from sluice.ops.queues import command_prefix

READ_VISIBILITY_SECONDS = 30  # long enough to read a page of messages and their ledger rows
# A receive without a wait can come back empty from a non-empty SQS queue (it samples a subset
# of servers): while fewer messages were found than the queue said it held, poll again, waiting.
_EMPTY_RETRIES = 2
_RETRY_WAIT_SECONDS = 1


@dataclass
class Held:
    """The messages a scan holds invisible, by message id (the newest receipt of each)."""

    queue: Queue
    cost: ScanCost = field(default_factory=ScanCost)
    messages: dict[str, Message] = field(default_factory=dict)
    # Every id received, held or since deleted: limits and the end of the queue count these.
    seen: set[str] = field(default_factory=set)

    def forget(self, message: Message) -> None:
        """The message was deleted: nothing to release."""
        self.messages.pop(message.message_id, None)

    def release(self) -> None:
        for message in self.messages.values():
            try:
                self.queue.change_visibility(message.receipt_handle, 0)
            except SluiceError as exc:
                # Visible again by itself once its timeout ends; say so rather than fail.
                self.cost.release_failures.append(f"{message.message_id}: {exc.message}")
        self.messages.clear()


@contextmanager
def holding(queue: Queue) -> Iterator[Held]:
    """Whatever happens inside, every message still held is made visible again at the end."""
    held = Held(queue)
    try:
        yield held
    finally:
        held.release()


def receive_batches(
    held: Held,
    *,
    limit: int,
    visibility: int = READ_VISIBILITY_SECONDS,
    until: Callable[[Message], bool] | None = None,
) -> Iterator[list[Message]]:
    """Receive batches of up to 10 new messages into `held` until `limit` messages, the queue
    is exhausted, or a message satisfies `until` (the batch holding it is the last)."""
    queue = held.queue
    expected = queue.counts().visible
    empty = 0
    # About a second per receive of 10 is ample even on SQS: the hold grows with the queue, so
    # the first messages read are still held when the last are received.
    visibility = min(visibility + expected // MAX_BATCH, MAX_VISIBILITY_SECONDS)
    while len(held.seen) < limit:
        wait = _RETRY_WAIT_SECONDS if empty else 0
        batch = queue.receive(
            min(MAX_BATCH, limit - len(held.seen)),
            visibility_timeout=visibility,
            wait_seconds=wait,
        )
        held.cost.receive_requests += 1
        held.cost.messages_received += len(batch)
        if not batch:
            empty += 1
            if empty > _EMPTY_RETRIES or len(held.seen) >= expected:
                return
            continue
        empty = 0
        # A message seen again (its hold ran out) is held under its newest receipt only.
        fresh = [m for m in batch if m.message_id not in held.seen]
        held.seen.update(m.message_id for m in batch)
        held.messages.update((m.message_id, m) for m in batch)
        if fresh:
            yield fresh
        elif len(held.seen) >= expected:
            return  # only messages read before came back: the queue has nothing new
        if until is not None and any(until(m) for m in batch):
            return


def check_limit(max_messages: int, *, everything: bool, cap: int = MAX_LIST) -> int:
    """Raises:
    ConfigError: `max_messages` below 1, or above `cap` without `everything`."""
    if max_messages < 1:
        raise ConfigError(f"--max-messages must be at least 1, not {max_messages}")
    if max_messages > cap and not everything:
        raise ConfigError(
            f"--max-messages {max_messages} is above {cap}",
            hint=f"add --all to read up to {max_messages} messages",
        )
    return min(max_messages, MAX_SCAN)


# list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqListing:
    queue: str
    messages: list[DlqMessage]
    queue_visible: int  # as the queue counted them before the read
    cost: ScanCost


def list_messages(
    env: Env, pair: DlqPair, *, max_messages: int = DEFAULT_LIST, everything: bool = False
) -> DlqListing:
    """Up to `max_messages` messages of the DLQ with why each failed, oldest first.

    Raises:
        ConfigError: `max_messages` out of range (above 50 needs `everything`).
    """
    limit = check_limit(max_messages, everything=everything)
    retention = pair.dlq.settings().retention_seconds
    visible = pair.dlq.counts().visible
    views: list[DlqMessage] = []
    with holding(pair.dlq) as held:
        for batch in receive_batches(held, limit=limit):
            for message in batch:
                views.append(describe(env, message, _validate(pair, message), retention)[0])
    views.sort(key=lambda v: (v.sent_at, v.message_id))
    record_metrics(env, "list", {"listed": len(views)}, queue=pair.dlq.name)
    return DlqListing(pair.dlq.name, views, visible, held.cost)


def _validate(pair: DlqPair, message: Message) -> Validation:
    return validate_message(message, pair.schema)


# inspect ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DlqInspection:
    queue: str
    message: DlqMessage
    body: str
    attributes: dict[str, str]
    validation: Validation
    history: dict[str, list[FailureEvent]]  # each source's failures, oldest first
    cost: ScanCost


def inspect_message(env: Env, pair: DlqPair, message_id: str) -> DlqInspection:
    """One message whole (body, attributes, validity, its sources' failure history), found by
    reading the DLQ in batches of 10 and left in it.

    Raises:
        ConfigError: no message with that id (the queue was read to its end).
    """
    retention = pair.dlq.settings().retention_seconds
    found: Message | None = None
    with holding(pair.dlq) as held:
        for batch in receive_batches(
            held, limit=MAX_SCAN, until=lambda m: m.message_id == message_id
        ):
            found = next((m for m in batch if m.message_id == message_id), found)
    if found is None:
        raise not_found(env, pair, message_id, held.cost)
    validation = _validate(pair, found)
    view, history = describe(env, found, validation, retention)
    record_metrics(env, "inspect", {"listed": 1}, queue=pair.dlq.name)
    return DlqInspection(
        pair.dlq.name, view, found.body, dict(found.attributes), validation, history, held.cost
    )


def not_found(env: Env, pair: DlqPair, message_id: str, cost: ScanCost) -> ConfigError:
    return ConfigError(
        f"no message {message_id!r} in queue {pair.dlq.name!r}"
        f" ({cost.messages_received} message(s) read)",
        hint=f"{command_prefix(env)} dlq list --all --max-messages 1000   (ids of what is there)",
        message_id=message_id,
        queue=pair.dlq.name,
    )


# explain ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainGroup:
    category: Category
    count: int
    message_ids: list[str]
    example: str  # one message's reason
    action: str  # the command (or step) that deals with the group


@dataclass(frozen=True)
class DlqExplanation:
    queue: str
    total: int
    groups: list[ExplainGroup]
    complete: bool  # False: --max-messages stopped the read before the queue's end
    cost: ScanCost


def explain(env: Env, pair: DlqPair, *, max_messages: int = 1000) -> DlqExplanation:
    """The DLQ's messages grouped by why they are there, with the command for each group.

    Raises:
        ConfigError: `max_messages` below 1.
    """
    limit = check_limit(max_messages, everything=True)
    retention = pair.dlq.settings().retention_seconds
    groups: dict[Category, list[DlqMessage]] = {}
    with holding(pair.dlq) as held:
        for batch in receive_batches(held, limit=limit):
            for message in batch:
                view = describe(env, message, _validate(pair, message), retention)[0]
                groups.setdefault(view.category, []).append(view)
        complete = len(held.seen) < limit or pair.dlq.counts().visible == 0
    total = sum(len(views) for views in groups.values())
    out = [
        ExplainGroup(
            category,
            len(views),
            [v.message_id for v in views],
            views[0].reason,
            _action(env, pair, category),
        )
        for category, views in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]
    record_metrics(env, "explain", {"listed": total}, queue=pair.dlq.name)
    return DlqExplanation(pair.dlq.name, total, out, complete, held.cost)


def _action(env: Env, pair: DlqPair, category: Category) -> str:
    dlq = f"{command_prefix(env)} dlq"
    redrive = f"{dlq} redrive-all --dry-run"
    keep = f"{dlq} purge --backup dlq-backup.jsonl"
    return {
        Category.INVALID_MESSAGE: f"not a message sluice understands: look ({dlq} inspect"
        f" --message-id ID), then back it up and remove it: {keep}",
        Category.MISSING_CORRELATION_ID: "refused (it could be processed twice): back up with"
        f" {keep}, add a correlation_id attribute to the lines, then {dlq} restore FILE",
        Category.SCHEMA_FAILURE: f"the body breaks the schema: fix the producer, then {keep}",
        Category.MISSING_RAW_OBJECT: "the raw object is gone: put it back under its key"
        f" (sluice never deletes raw), then {redrive}; if it is lost for good: {keep}",
        Category.CORRUPT_RAW_OBJECT: "the raw object cannot be decoded: rewrite it from the"
        f" sender's copy, then {redrive}",
        Category.TRANSIENT_ERROR: f"a passing failure that outlived the retries: {redrive}",
        Category.TERMINAL_ERROR: f"read the error ({dlq} inspect --message-id ID), fix the"
        f" cause, then {redrive}",
        Category.NO_RECORDED_FAILURE: f"the ledger has no failure for it: {redrive}",
    }[category]
