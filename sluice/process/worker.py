"""The worker: takes messages off the processing queue and runs `process_object` for each.

What happens to a message is decided by the error class alone:

- success, or the object already completed: delete the message;
- BUSY (another worker holds the lease): leave it, invisible until that lease ends;
- TransientError: leave it; it comes back after a backoff, and the queue's redrive policy sends
  it to the DLQ after maxReceiveCount receives;
- TerminalError: send it to the DLQ at once (body and attributes unchanged), then delete it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any

from sluice.backends.queue.base import Message, Queue
from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.errors import SluiceError, TerminalError
from sluice.messages import CORRELATION_ID, parse_body
from sluice.process.processor import ProcessOutcome, ProcessResult, process_object

MAX_BACKOFF_SECONDS = 30
MAX_VISIBILITY = 12 * 3600  # SQS's limit
IDLE_POLL_SECONDS = 1.0
RUN_POLL_SECONDS = 5.0


@dataclass
class WorkerStats:
    messages: int = 0
    completed: int = 0
    skipped: int = 0
    busy: int = 0
    retried: int = 0
    dead_lettered: int = 0
    rows: int = 0
    quarantined_lines: int = 0
    files_written: int = 0
    errors: list[str] = field(default_factory=list)

    def record(self, decision: Decision) -> list[WorkerEvent]:
        """Count what a message led to; returns the events to show."""
        self.messages += 1
        source = decision.source
        if decision.disposition is Disposition.DEAD_LETTER:
            self.dead_lettered += 1
            self.errors.append(f"{source}: {decision.reason}")
            return [WorkerEvent("dead_lettered", source, f"{decision.reason} (sent to the DLQ)")]
        if decision.busy:
            self.busy += 1
            return [WorkerEvent("busy", source, decision.reason)]
        if decision.disposition is Disposition.RETRY:
            self.retried += 1
            self.errors.append(f"{source}: {decision.reason}")
            detail = f"{decision.reason} (retry in {decision.retry_after}s)"
            return [WorkerEvent("retried", source, detail)]
        events = []
        for result in decision.results:
            if result.outcome is ProcessOutcome.COMPLETED and result.counts is not None:
                self.completed += 1
                self.rows += result.counts.rows
                self.quarantined_lines += result.counts.quarantined_lines
                self.files_written += len(result.outputs)
                events.append(WorkerEvent("completed", result.source, f"{result.counts.rows} rows"))
            else:
                self.skipped += 1
                events.append(WorkerEvent("skipped", result.source, result.outcome.value))
        return events

    def add(self, other: WorkerStats) -> None:
        for name, value in asdict(other).items():
            if name == "errors":
                self.errors.extend(value)
            else:
                setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True)
class WorkerEvent:
    """What one message led to, for progress display."""

    kind: str  # completed | skipped | busy | retried | dead_lettered
    source: str
    detail: str = ""


OnEvent = Callable[[WorkerEvent], None]


def dead_letter(env: Env, queue: Queue, message: Message) -> str:
    """Move a message to its queue's DLQ: send first, delete only once the send is confirmed."""
    policy = queue.settings().redrive_policy
    if policy is None:
        raise TerminalError(f"queue {queue.name} has no dead-letter queue")
    dlq = env.queues.open(policy.dead_letter_queue)
    dlq.send(message.body, message.attributes)
    queue.delete(message.receipt_handle)
    return dlq.name


class Disposition(StrEnum):
    DELETE = "delete"  # done (or nothing to do): remove the message
    RETRY = "retry"  # leave it; it comes back after `retry_after` seconds
    DEAD_LETTER = "dead_letter"  # terminal: move it to the DLQ now


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    results: tuple[ProcessResult, ...] = ()
    source: str = ""
    reason: str = ""
    retry_after: int = 0
    busy: bool = False


def decide(
    env: Env,
    body: str,
    correlation_id: str,
    receive_count: int,
    owner: str,
    on_lease_extended: Callable[[], None] | None = None,
) -> Decision:
    """Process what one message asks for and say what should happen to the message.

    Shared by the worker and the Lambda handler: they differ only in how they apply it.
    """
    source = "?"
    results: list[ProcessResult] = []
    try:
        for request in parse_body(body):
            source = str(request.uri)
            result = process_object(
                env,
                request.uri,
                force=request.forced,
                redrive_id=request.redrive_id,
                owner=owner,
                correlation_id=correlation_id,
                on_lease_extended=on_lease_extended,
            )
            results.append(result)
            if result.outcome is ProcessOutcome.BUSY:
                wait = max(1, int((result.busy_until or time.time()) - time.time()) + 1)
                return Decision(
                    Disposition.RETRY,
                    tuple(results),
                    source,
                    f"leased by another worker for {wait}s",
                    min(wait, MAX_VISIBILITY),
                    busy=True,
                )
    except TerminalError as exc:
        reason = f"{exc.error_class}: {exc.message}"
        return Decision(Disposition.DEAD_LETTER, tuple(results), source, reason)
    except Exception as exc:  # transient, or a bug: retry, and let the redrive policy decide
        reason = exc.message if isinstance(exc, SluiceError) else f"{type(exc).__name__}: {exc}"
        backoff = min(2**receive_count, MAX_BACKOFF_SECONDS)
        return Decision(Disposition.RETRY, tuple(results), source, reason, backoff)
    return Decision(Disposition.DELETE, tuple(results), source)


def near_dead_letter(queue: Queue, receive_count: int) -> bool:
    """True when one more failed receive would send the message to the DLQ."""
    policy = queue.settings().redrive_policy
    return policy is not None and receive_count >= policy.max_receive_count - 1


def requeue(queue: Queue, message: Message) -> None:
    """Send a copy (body and attributes unchanged) and delete the original, so its receive
    count starts again. For messages whose object is busy: waiting for another worker's lease
    is not a failure, and must not push a message to the DLQ however long the wait."""
    queue.send(message.body, message.attributes)
    queue.delete(message.receipt_handle)


def handle_message(
    env: Env,
    queue: Queue,
    message: Message,
    stats: WorkerStats,
    owner: str,
    on_event: OnEvent | None = None,
) -> Decision:
    def extend_visibility() -> None:
        queue.change_visibility(message.receipt_handle, env.config.visibility_timeout_seconds)

    correlation_id = message.attributes.get(CORRELATION_ID, message.message_id)
    decision = decide(
        env, message.body, correlation_id, message.receive_count, owner, extend_visibility
    )
    if decision.disposition is Disposition.DELETE:
        queue.delete(message.receipt_handle)
    elif decision.disposition is Disposition.DEAD_LETTER:
        dead_letter(env, queue, message)
    elif decision.busy and near_dead_letter(queue, message.receive_count):
        requeue(queue, message)
    else:
        queue.change_visibility(message.receipt_handle, decision.retry_after)
    for event in stats.record(decision):
        if on_event is not None:
            on_event(event)
    return decision


def run_worker(
    env: Env,
    *,
    until_idle: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    on_event: OnEvent | None = None,
) -> WorkerStats:
    """Process messages until stopped, or (`until_idle`) until nothing is visible or in flight.

    `until_idle` waits out messages another worker left in flight (a dead worker's message comes
    back when its visibility timeout ends). `should_stop` is checked between messages, so the
    object in hand is always finished.
    """
    queue = env.processing_queue
    owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    stats = WorkerStats()
    wait = IDLE_POLL_SECONDS if until_idle else RUN_POLL_SECONDS
    while not should_stop():
        messages = queue.receive(1, wait_seconds=wait)
        if not messages:
            if until_idle:
                counts = queue.counts()
                if counts.visible == 0 and counts.in_flight == 0 and counts.delayed == 0:
                    break
            continue
        for message in messages:
            handle_message(env, queue, message, stats, owner, on_event)
    return stats


class _StopFlag:
    """Set by SIGTERM/SIGINT: finish the object in hand, then exit."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped

    def set(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.set)
        signal.signal(signal.SIGINT, self.set)


@contextmanager
def _signals_to(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """Route SIGTERM/SIGINT to `handler` for the duration, then give back the previous ones."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _child(config: EnvConfig, until_idle: bool, results: Any) -> None:
    flag = _StopFlag()
    flag.install()
    env = open_env(config, setup=False)
    stats = run_worker(
        env,
        until_idle=until_idle,
        should_stop=flag,
        on_event=lambda e: results.put(("event", asdict(e))),
    )
    results.put(("stats", asdict(stats)))


def run_workers(
    config: EnvConfig,
    processes: int,
    *,
    until_idle: bool = False,
    on_event: OnEvent | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> WorkerStats:
    """Run `processes` worker processes (1: in this process) and add up their stats.

    SIGTERM/SIGINT reach every child, which finishes its object in hand and exits.
    """
    if processes < 1:
        raise SluiceError(f"--processes must be at least 1, not {processes}")
    if processes == 1:
        flag = _StopFlag()
        stop = (lambda: flag() or should_stop()) if should_stop else flag
        with _signals_to(flag.set):
            return run_worker(
                open_env(config), until_idle=until_idle, should_stop=stop, on_event=on_event
            )
    open_env(config)  # set up queues and tables once, before the children race to
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    children = [
        ctx.Process(target=_child, args=(config, until_idle, results)) for _ in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    with _signals_to(forward):
        total = WorkerStats()
        finished = 0
        while finished < processes:
            try:
                kind, payload = results.get(timeout=1)
            except Exception:  # queue.Empty: check whether a child died without reporting
                if all(not c.is_alive() for c in children) and results.empty():
                    break
                if should_stop is not None and should_stop():
                    forward(signal.SIGTERM, None)
                continue
            if kind == "event":
                if on_event is not None:
                    on_event(WorkerEvent(**payload))
            else:
                total.add(WorkerStats(**payload))
                finished += 1
        for child in children:
            child.join()
        return total
