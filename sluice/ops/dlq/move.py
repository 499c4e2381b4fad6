"""`redrive` and `redrive-all`: valid DLQ messages back to their source queue.

Only valid messages move (`sluice.ops.dlq.model.validate_message`); each keeps its body, every
attribute and, between FIFO queues, its group id (`sluice.backends.queue.move.resend`). A FIFO
DLQ is redriven only into a FIFO queue, a standard one only into a standard queue.

A message leaves the DLQ only after the target confirmed its send: a failed send leaves it
where it was (visible again at the end), so a message is never lost, and a message is never
both moved and kept unless the delete after a confirmed send fails (reported in `failed`: the
worker's ledger then finds the second copy already completed).

The service's own move task (`QueueFactory.start_message_move`) is not used: it moves every
message, valid or not, and cannot refuse one without a correlation id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sluice.backends.queue.base import (
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    MAX_MOVE_RATE,
    Message,
    OutgoingMessage,
    Queue,
)
from sluice.backends.queue.checks import is_fifo, message_size
from sluice.backends.queue.move import check_same_kind, resend
from sluice.env import Env
from sluice.errors import ConfigError, SluiceError
from sluice.ops.dlq.metrics import record_metrics
from sluice.ops.dlq.model import DEFAULT_REDRIVE_BATCH, MAX_SCAN, DlqPair, Refused, ScanCost
from sluice.ops.dlq.model import validate_message as check
from sluice.ops.dlq.scan import Held, holding, not_found, receive_batches
from sluice.ops.guard import confirm_destructive
from sluice.ops.queues import command_prefix

MAX_REDRIVE_BATCH = 10_000
# Held invisible while a run lasts, beyond the time its rate needs: if the run dies, its
# messages are back in the DLQ this long after.
_HOLD_MARGIN_SECONDS = 120


@dataclass
class RedriveResult:
    queue: str
    target: str
    dry_run: bool
    valid: int = 0  # messages that may move (all of them moved, unless failed)
    redriven: dict[str, str] = field(default_factory=dict)  # DLQ message id → id in target
    refused: list[Refused] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # message id → why it did not move
    cost: ScanCost = field(default_factory=ScanCost)

    @property
    def ok(self) -> bool:
        return not self.failed


def redrive_all(
    env: Env,
    pair: DlqPair,
    *,
    max_messages: int = DEFAULT_REDRIVE_BATCH,
    rate: int | None = None,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
) -> RedriveResult:
    """Move up to `max_messages` valid messages to the target, at most `rate` per second;
    invalid ones stay, listed with why.

    Raises:
        ConfigError: no target, a FIFO queue and a standard one, `max_messages` or `rate` out of
            range (nothing moved).
        ProtectedEnvironment: a protected environment without `yes` (nothing moved).
    """
    if not 1 <= max_messages <= MAX_REDRIVE_BATCH:
        raise ConfigError(
            f"--max-messages must be within 1..{MAX_REDRIVE_BATCH}, not {max_messages}",
            hint="redrive a large DLQ in several runs",
        )
    if rate is not None and not 1 <= rate <= MAX_MOVE_RATE:
        raise ConfigError(f"--rate must be within 1..{MAX_MOVE_RATE} messages/s, not {rate}")
    target = _target(env, pair)
    visible = pair.dlq.counts().visible
    plan = (
        f"move up to {min(max_messages, visible)} of the {visible} message(s) of"
        f" {pair.dlq.name!r} to {target.name!r} (invalid ones stay)"
    )
    go = confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command)
    hold = _HOLD_MARGIN_SECONDS + (0 if rate is None else math.ceil(max_messages / rate))
    return _redrive(env, pair, target, limit=max_messages, rate=rate, go=go, hold=hold)


def redrive_message(
    env: Env,
    pair: DlqPair,
    message_id: str,
    *,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
) -> RedriveResult:
    """Move one message, found by reading the DLQ in batches of 10 (the others stay).

    Raises:
        ConfigError: no target, a FIFO queue and a standard one (nothing moved), or no message
            with that id.
        ProtectedEnvironment: a protected environment without `yes` (nothing moved).
    """
    target = _target(env, pair)
    plan = f"move message {message_id!r} of {pair.dlq.name!r} to {target.name!r} if valid"
    go = confirm_destructive(env, plan, yes=yes, dry_run=dry_run, command=command)
    result = _redrive(
        env,
        pair,
        target,
        limit=MAX_SCAN,
        go=go,
        hold=_HOLD_MARGIN_SECONDS,
        only=lambda m: m.message_id == message_id,
    )
    if result.valid == 0 and not result.refused:
        raise not_found(env, pair, message_id, result.cost)
    return result


def _target(env: Env, pair: DlqPair) -> Queue:
    """Raises:
    ConfigError: no target, or a FIFO queue and a standard one."""
    if pair.target is None:
        raise ConfigError(
            f"which queue do the messages of {pair.dlq.name!r} go back to?",
            hint=f"{command_prefix(env)} dlq redrive-all --dlq-url {pair.dlq.name}"
            " --target-url SOURCE_QUEUE",
        )
    check_same_kind(pair.dlq, pair.target)
    return pair.target


def _redrive(
    env: Env,
    pair: DlqPair,
    target: Queue,
    *,
    limit: int,
    go: bool,
    hold: int,
    rate: int | None = None,
    only: Callable[[Message], bool] | None = None,
) -> RedriveResult:
    result = RedriveResult(pair.dlq.name, target.name, dry_run=not go)
    started = time.monotonic()
    with holding(pair.dlq) as held:
        for batch in receive_batches(held, limit=limit, visibility=hold, until=only):
            ready: list[Message] = []
            for message in batch:
                if only is not None and not only(message):
                    continue
                validation = check(message, pair.schema)
                if validation.valid:
                    ready.append(message)
                else:
                    category = str(validation.category)
                    reason = validation.reason or category
                    result.refused.append(Refused(message.message_id, category, reason))
            result.valid += len(ready)
            if not go:
                continue
            refused_request = False
            for chunk in _chunks(ready):
                if rate is not None:
                    # Paced before each send: this many messages may have gone by now, no more.
                    due = started + len(result.redriven) / rate
                    time.sleep(max(0.0, due - time.monotonic()))
                if not _send(held, target, chunk, result):
                    refused_request = True
                    break
            if refused_request:
                break  # the target refuses whole requests: stop, and leave the rest in place
        result.cost = held.cost
    counts = {"refused": len(result.refused)}
    if go:
        counts.update(redriven=len(result.redriven), failed=len(result.failed))
    else:
        counts["valid"] = result.valid  # what a real run would have tried to move
    record_metrics(env, "redrive" if go else "redrive_dry_run", counts, queue=pair.dlq.name)
    return result


def _send(held: Held, target: Queue, chunk: Sequence[Message], result: RedriveResult) -> bool:
    """Send `chunk`, delete each confirmed one from the DLQ; False when the request failed."""
    into_fifo = is_fifo(target.name)
    entries = [resend(m, str(i), into_fifo=into_fifo) for i, m in enumerate(chunk)]
    try:
        answer = target.send_batch(entries)
    except SluiceError as exc:
        for message in chunk:
            result.failed[message.message_id] = f"not sent: {exc.message}"
        return False
    for i, message in enumerate(chunk):
        new_id = answer.sent.get(str(i))
        if new_id is None:
            result.failed[message.message_id] = answer.failed.get(str(i), "not confirmed")
            continue
        result.redriven[message.message_id] = new_id
        try:
            held.queue.delete(message.receipt_handle)
        except SluiceError as exc:
            result.failed[message.message_id] = (
                f"sent to {target.name!r} as {new_id}, but still in the DLQ: {exc.message}"
            )
            continue
        held.forget(message)
    return True


def _chunks(messages: Sequence[Message]) -> list[list[Message]]:
    """Runs of at most MAX_BATCH messages whose sizes add up to at most MAX_MESSAGE_BYTES."""
    chunks: list[list[Message]] = []
    total = 0
    for message in messages:
        size = message_size(OutgoingMessage(message.body, message.attributes))
        if not chunks or len(chunks[-1]) == MAX_BATCH or total + size > MAX_MESSAGE_BYTES:
            chunks.append([])
            total = 0
        chunks[-1].append(message)
        total += size
    return chunks
