"""Queue operations: the depth of every queue of an environment, and waiting until it drains.

`queue_status` reports every queue named in the environment's configuration (each field of
`QueueNames` is a queue's role, so a queue added there is reported too) and any dead-letter queue
their redrive policies name. `wait_until_drained` is the step of a bulk redrive that waits for the
workers: it returns once the work queues have held nothing visible, in flight or delayed for a
whole period, and reports what the dead-letter queues hold at that point.

Durations are written as operators write them (`90s`, `15m`, `1h`, `30d`); `parse_duration` is
the one parser every ops command uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import timedelta

from sluice.backends.queue.base import Queue, QueueCounts
from sluice.config import DEFAULT_ENV
from sluice.env import Env
from sluice.errors import ConfigError, TransientError

DEFAULT_STABLE_FOR = timedelta(seconds=60)
DEFAULT_TIMEOUT = timedelta(minutes=30)
DEFAULT_POLL = timedelta(seconds=5)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_EXAMPLE = "write a number and a unit (s, m, h, d, w), e.g. 90s, 15m, 1h, 30d or 1h30m"


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """`90s`, `15m`, `1h`, `30d`, `2w`, or parts of them together (`1h30m`).

    A bare number is refused: `--older-than 30` could mean seconds or days, and guessing wrong
    on a destructive command is the mistake this parser exists to prevent.

    Raises:
        ConfigError: anything else, with an example of what is accepted.
    """
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"{what} {text!r} is not a duration", hint=_EXAMPLE)
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """A duration as `parse_duration` reads it, to the largest two units (`1h5m`, `45s`)."""
    if 0 < seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"  # short waits and timeouts in tests and demos
    rest = max(0, round(seconds))
    if rest == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if unit == "w":
            continue  # days read better than weeks in ages and retentions
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts[:2])


def command_prefix(env: Env) -> str:
    """`sluice`, with `--env NAME` unless it is the default environment: for hints."""
    return "sluice" if env.config.name == DEFAULT_ENV else f"sluice --env {env.config.name}"


# Status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueStatus:
    """One queue as it stands: its counts, settings and place in the redrive graph."""

    role: str  # the configuration field naming it (processing, processing_dlq, …), or dlq
    name: str
    visible: int
    in_flight: int
    delayed: int
    # None where the backend cannot tell (SQS publishes it only as a CloudWatch metric).
    oldest_age_seconds: float | None
    visibility_timeout_seconds: int
    retention_seconds: int
    dead_letter_queue: str | None  # from the redrive policy
    max_receive_count: int | None
    dlq_depth: int | None  # everything its DLQ holds; None without a redrive policy
    dead_letter_for: tuple[str, ...]  # queues whose redrive policy names this one

    @property
    def is_dead_letter_queue(self) -> bool:
        return bool(self.dead_letter_for) or self.role.endswith("dlq")

    @property
    def depth(self) -> int:
        return self.visible + self.in_flight + self.delayed

    @property
    def idle(self) -> bool:
        return self.depth == 0


def queue_status(env: Env) -> list[QueueStatus]:
    """Every queue of the environment: configured ones first, then DLQs only a policy names.

    Raises:
        QueueNotFound: a configured queue does not exist (run `sluice setup`).
    """
    opened: dict[str, tuple[str, Queue]] = {}
    for field in fields(env.config.queues):
        # Keyed by the queue's own name: the configuration may hold a URL (SQS), while redrive
        # policies name their DLQ by name.
        queue = env.queues.open(getattr(env.config.queues, field.name))
        opened.setdefault(queue.name, (field.name, queue))
    settings = {name: queue.settings() for name, (_, queue) in opened.items()}
    for policy in [s.redrive_policy for s in settings.values()]:
        if policy is not None and policy.dead_letter_queue not in opened:
            queue = env.queues.open(policy.dead_letter_queue)
            opened[queue.name] = ("dlq", queue)
            settings[queue.name] = queue.settings()
    counts: dict[str, QueueCounts] = {name: q.counts() for name, (_, q) in opened.items()}
    out = []
    for name, (role, _) in opened.items():
        policy = settings[name].redrive_policy
        dlq = None if policy is None else counts[policy.dead_letter_queue]
        c = counts[name]
        out.append(
            QueueStatus(
                role=role,
                name=name,
                visible=c.visible,
                in_flight=c.in_flight,
                delayed=c.delayed,
                oldest_age_seconds=c.oldest_age_seconds,
                visibility_timeout_seconds=settings[name].visibility_timeout_seconds,
                retention_seconds=settings[name].retention_seconds,
                dead_letter_queue=None if policy is None else policy.dead_letter_queue,
                max_receive_count=None if policy is None else policy.max_receive_count,
                dlq_depth=None if dlq is None else dlq.visible + dlq.in_flight + dlq.delayed,
                dead_letter_for=tuple(
                    other
                    for other, s in settings.items()
                    if s.redrive_policy is not None and s.redrive_policy.dead_letter_queue == name
                ),
            )
        )
    return out


def retention_horizon(env: Env) -> timedelta:
    """How long a message about an object can still be waiting: the longest retention of the
    processing queue and its dead-letter queue (whose messages an operator may move back).

    Read from the queues themselves, not the configuration: what was deployed decides."""
    queue = env.processing_queue
    settings = queue.settings()
    seconds = settings.retention_seconds
    if settings.redrive_policy is not None:
        dlq = env.queues.open(settings.redrive_policy.dead_letter_queue)
        seconds = max(seconds, dlq.settings().retention_seconds)
    return timedelta(seconds=seconds)


# Waiting -----------------------------------------------------------------------------------


class DrainTimeout(TransientError):
    """The work queues still held messages when the wait's timeout ran out (attributes: the
    counts of every queue at that moment)."""


@dataclass(frozen=True)
class WaitProgress:
    """One poll of `wait_until_drained`, for progress display."""

    elapsed_seconds: float
    # How long the work queues have been empty so far (0 while they are not).
    idle_for_seconds: float
    stable_for_seconds: float
    queues: tuple[QueueStatus, ...]

    @property
    def pending(self) -> int:
        return sum(q.depth for q in self.queues if not q.is_dead_letter_queue)


@dataclass(frozen=True)
class WaitResult:
    waited_seconds: float
    stable_for_seconds: float
    polls: int
    queues: tuple[QueueStatus, ...]  # every queue at the end
    dead_letters: dict[str, int]  # what each dead-letter queue holds at the end

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead_letters.values())


def wait_until_drained(
    env: Env,
    *,
    stable_for: timedelta = DEFAULT_STABLE_FOR,
    timeout: timedelta = DEFAULT_TIMEOUT,
    poll: timedelta = DEFAULT_POLL,
    on_progress: Callable[[WaitProgress], None] | None = None,
) -> WaitResult:
    """Return once every work queue (not a DLQ) holds nothing visible, in flight or delayed,
    and has held nothing for `stable_for` without a break.

    The stable period is what makes the answer trustworthy: SQS's counts are approximate and
    lag by up to a minute, and a worker between two messages of a batch shows an empty queue
    for an instant. Delayed messages count as pending work, since they will become visible.

    Raises:
        ConfigError: a negative duration, or a poll interval of zero.
        DrainTimeout: the queues were not drained and stable within `timeout`; it carries the
            counts at that moment.
    """
    for what, value in (("--stable-for", stable_for), ("--timeout", timeout)):
        if value < timedelta(0):
            raise ConfigError(f"{what} must not be negative", hint=f"e.g. {what} 60s")
    if poll <= timedelta(0):
        raise ConfigError("--poll must be longer than 0s", hint="e.g. --poll 5s")
    started = time.monotonic()
    deadline = started + timeout.total_seconds()
    idle_since: float | None = None
    polls = 0
    while True:
        statuses = tuple(queue_status(env))
        polls += 1
        now = time.monotonic()
        busy = [q for q in statuses if not q.is_dead_letter_queue and not q.idle]
        idle_since = None if busy else (now if idle_since is None else idle_since)
        idle_for = 0.0 if idle_since is None else now - idle_since
        if on_progress is not None:
            on_progress(WaitProgress(now - started, idle_for, stable_for.total_seconds(), statuses))
        if idle_since is not None and idle_for >= stable_for.total_seconds():
            return WaitResult(
                waited_seconds=now - started,
                stable_for_seconds=stable_for.total_seconds(),
                polls=polls,
                queues=statuses,
                dead_letters={q.name: q.depth for q in statuses if q.is_dead_letter_queue},
            )
        if now >= deadline:
            raise _timed_out(env, timeout, statuses)
        # Wake for whichever comes first: the next poll, the end of the stable period, the
        # deadline (so a timeout is reported on time, with counts read at that moment).
        wake = now + poll.total_seconds()
        if idle_since is not None:
            wake = min(wake, idle_since + stable_for.total_seconds())
        time.sleep(max(0.0, min(wake, deadline) - now))


def _timed_out(env: Env, timeout: timedelta, statuses: tuple[QueueStatus, ...]) -> DrainTimeout:
    busy = [q for q in statuses if not q.is_dead_letter_queue and not q.idle]
    described = "; ".join(
        f"{q.name}: {q.visible} visible, {q.in_flight} in flight, {q.delayed} delayed" for q in busy
    )
    waited = format_duration(timeout.total_seconds())
    return DrainTimeout(
        f"queues of {env.config.name!r} not drained after {waited}"
        f" ({described or 'emptied just now, not yet stable'})",
        hint=f"{command_prefix(env)} queue status   (then: {command_prefix(env)} ledger list"
        " --status processing, to see what the workers hold)",
        queues={
            q.name: {"visible": q.visible, "in_flight": q.in_flight, "delayed": q.delayed}
            for q in statuses
        },
    )
