"""Ledger operations: look at the ledger, and put its stuck, failed and finished records right.

- `ledger_stats`, `list_records`: counts by status and by day; records by status and age.
- `reset_stuck`: a PROCESSING record whose lease ran out long ago belongs to a worker that died.
  It is released (`Ledger.reset`) and sent a `process_raw_file` message, since the message that
  brought it may be gone (dead-lettered, expired, deleted by a worker that crashed after).
- `retry_failed`: FAILED records are sent `redrive_raw_file` messages under one fresh redrive id
  (a forced reprocess that each object runs once, however often the message is delivered).
- `cleanup`: completed records past the queues' retention are forgotten (`Ledger.forget`).

The three that change something plan first (count and sample, one pass over the ledger), pass
the plan to the guard (`--dry-run`, protected environments), then act in a second pass, so
memory stays bounded however many records match. A record that changed between the passes is
skipped, not forced: the second pass re-reads what it acts on.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sluice.backends.ledger.base import FileRecord, FileStatus
from sluice.backends.queue.base import MAX_BATCH, OutgoingMessage
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri
from sluice.messages import process_raw_file, redrive_raw_file
from sluice.ops.guard import confirm_destructive
from sluice.ops.queues import command_prefix, format_duration, retention_horizon

STUCK = "stuck"  # not a stored status: PROCESSING with an expired lease
STATUSES = (*(s.value for s in FileStatus), STUCK)
DEFAULT_LIST_LIMIT = 100
DEFAULT_STUCK_AGE = timedelta(minutes=15)
DEFAULT_FAILED_AGE = timedelta(hours=1)
PLAN_SAMPLE = 10

OnProgress = Callable[[int, int], None]  # (records done, records planned)


def parse_status(text: str) -> str:
    """A status name as `list` takes it (any `FileStatus`, or `stuck`).

    Raises:
        ConfigError: an unknown status, with the known ones.
    """
    value = text.strip().lower()
    if value not in STATUSES:
        raise ConfigError(f"unknown status {text!r}", hint=f"use one of {', '.join(STATUSES)}")
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def _check_age(older_than: timedelta, what: str = "--older-than") -> None:
    if older_than < timedelta(0):
        raise ConfigError(f"{what} must not be negative", hint=f"e.g. {what} 15m")


# Looking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerStats:
    total: int
    by_status: dict[str, int]  # every status, zero included
    stuck: int  # processing records whose lease has run out (included in `processing`)
    by_day: dict[str, dict[str, int]]  # UTC day of the last update → status → records
    oldest_update: datetime | None
    newest_update: datetime | None


def ledger_stats(env: Env, *, on_progress: Callable[[int], None] | None = None) -> LedgerStats:
    """Counts by status and by day of last update, from one pass over the ledger (memory: one
    counter per day and status). `on_progress` gets the records read so far, every thousand."""
    now = _now()
    by_status: Counter[str] = Counter({s.value: 0 for s in FileStatus})
    by_day: defaultdict[str, Counter[str]] = defaultdict(Counter)
    stuck = total = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    for record in env.ledger.list():
        total += 1
        by_status[record.status.value] += 1
        by_day[record.updated_at.astimezone(UTC).date().isoformat()][record.status.value] += 1
        stuck += record.is_stuck(now)
        oldest = record.updated_at if oldest is None else min(oldest, record.updated_at)
        newest = record.updated_at if newest is None else max(newest, record.updated_at)
        if on_progress is not None and total % 1000 == 0:
            on_progress(total)
    return LedgerStats(
        total=total,
        by_status=dict(by_status),
        stuck=stuck,
        by_day={day: dict(counts) for day, counts in sorted(by_day.items())},
        oldest_update=oldest,
        newest_update=newest,
    )


@dataclass(frozen=True)
class RecordListing:
    status: str | None
    older_than_seconds: float | None
    limit: int
    now: datetime
    records: tuple[FileRecord, ...]
    more: bool  # more records match than `limit` let through


def list_records(
    env: Env,
    *,
    status: str | None = None,
    older_than: timedelta | None = None,
    limit: int = DEFAULT_LIST_LIMIT,
) -> RecordListing:
    """Records by status (a `FileStatus` value or `stuck`) and age of their last update, oldest
    first, at most `limit`.

    Raises:
        ConfigError: an unknown status, a negative age, a limit below 1.
    """
    wanted = None if status is None else parse_status(status)
    if older_than is not None:
        _check_age(older_than)
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}", hint="e.g. --limit 100")
    now = _now()
    before = None if older_than is None else now - older_than
    records: Iterable[FileRecord]
    if wanted == STUCK:
        stuck = env.ledger.list(status=FileStatus.PROCESSING, updated_before=before)
        records = (r for r in stuck if r.is_stuck(now))
    else:
        stored = None if wanted is None else FileStatus(wanted)
        records = env.ledger.list(status=stored, updated_before=before, limit=limit + 1)
    # One more than asked, to tell the operator there is more.
    found = tuple(itertools.islice(records, limit + 1))
    return RecordListing(
        status=wanted,
        older_than_seconds=None if older_than is None else older_than.total_seconds(),
        limit=limit,
        now=now,
        records=found[:limit],
        more=len(found) > limit,
    )


# Acting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerOpResult:
    """What a reset-stuck, retry-failed or cleanup planned and did."""

    operation: str
    dry_run: bool
    older_than_seconds: float
    cutoff: datetime  # records older than this were chosen
    planned: int
    sample: tuple[str, ...]  # the first URIs of the plan
    plan: str
    done: int = 0  # records reset, re-enqueued or forgotten
    messages_sent: int = 0
    skipped: int = 0  # changed between planning and acting: left alone
    failed: dict[str, str] = field(default_factory=dict)  # uri → reason
    redrive_id: str | None = None
    queue: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Plan:
    operation: str
    older_than: timedelta
    cutoff: datetime
    count: int
    sample: tuple[str, ...]
    text: str
    go: bool  # False: nothing to do, or a dry run

    def result(self, *, dry_run: bool, queue: str | None = None) -> LedgerOpResult:
        """The result before anything is done (what a dry run returns)."""
        return LedgerOpResult(
            operation=self.operation,
            dry_run=dry_run,
            older_than_seconds=self.older_than.total_seconds(),
            cutoff=self.cutoff,
            planned=self.count,
            sample=self.sample,
            plan=self.text,
            queue=queue,
        )


def _plan(
    env: Env,
    operation: str,
    older_than: timedelta,
    records: Callable[[datetime], Iterable[FileRecord]],
    action: str,
    guard: tuple[bool, bool, str | None],
) -> _Plan:
    """Count and sample `records(cutoff)`, then ask the guard (`guard`: yes, dry run, command)
    whether to go ahead. Nothing to do needs no permission."""
    _check_age(older_than)
    cutoff = _now() - older_than
    count = 0
    sample: list[str] = []
    for record in records(cutoff):
        count += 1
        if len(sample) < PLAN_SAMPLE:
            sample.append(record.uri)
    lines = [f"{operation}: {action} (last changed before {cutoff:%F %T}Z): {count} record(s)"]
    lines += [f"  {uri}" for uri in sample]
    if count > len(sample):
        lines.append(f"  … and {count - len(sample)} more")
    text = "\n".join(lines)
    yes, dry_run, command = guard
    go = count > 0 and confirm_destructive(env, text, yes=yes, dry_run=dry_run, command=command)
    return _Plan(operation, older_than, cutoff, count, tuple(sample), text, go)


def _chunks(records: Iterable[FileRecord], size: int = MAX_BATCH) -> Iterator[list[FileRecord]]:
    it = iter(records)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _send(env: Env, messages: dict[str, OutgoingMessage], failed: dict[str, str]) -> int:
    """Send up to MAX_BATCH messages keyed by URI in one batch; failures go to `failed`."""
    if not messages:
        return 0
    uris = list(messages)
    entries = [
        OutgoingMessage(m.body, m.attributes, entry_id=str(i))
        for i, m in enumerate(messages.values())
    ]
    answer = env.processing_queue.send_batch(entries)
    for entry_id, reason in answer.failed.items():
        failed[uris[int(entry_id)]] = reason
    return len(answer.sent)


def _stranded(env: Env) -> Callable[[datetime], Iterator[FileRecord]]:
    def records(cutoff: datetime) -> Iterator[FileRecord]:
        # Processing records are listed whole, not by update time: a holder may record pending
        # outputs after its lease ran out, so the update says nothing certain about the lease.
        # They are the few objects in hand, so this stays a small read.
        processing = env.ledger.list(status=FileStatus.PROCESSING)
        yield from (r for r in processing if r.is_stuck(cutoff))
        # Only a reset makes a record pending, and a reset-stuck sends the message right after:
        # an old pending record is one whose message was never sent (an interrupted run).
        yield from env.ledger.list(status=FileStatus.PENDING, updated_before=cutoff)

    return records


def reset_stuck(
    env: Env,
    *,
    older_than: timedelta = DEFAULT_STUCK_AGE,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
    on_progress: OnProgress | None = None,
) -> LedgerOpResult:
    """Release PROCESSING records whose lease expired more than `older_than` ago and send each a
    `process_raw_file` message, so a worker processes it again.

    Each record is re-read just before its reset and left alone if it is no longer stuck (a
    slow worker came back, or another took it over). Released records are sent their message
    right after, ten to a batch. Pending records older than `older_than` are sent one too:
    they are the resets of a run interrupted before its send, which a rerun so finishes.

    Raises:
        ConfigError: a negative age.
        ProtectedEnvironment: a protected environment, without `yes` or `dry_run`.
    """
    queue = env.processing_queue.name
    action = f"reset to pending and send process_raw_file to {queue}: expired leases"
    guard = (yes, dry_run, command)
    plan = _plan(env, "reset-stuck", older_than, _stranded(env), action, guard)
    if not plan.go:
        return plan.result(dry_run=dry_run, queue=queue)
    done = sent = skipped = 0
    failed: dict[str, str] = {}
    for chunk in _chunks(_stranded(env)(plan.cutoff)):
        messages: dict[str, OutgoingMessage] = {}
        for listed in chunk:
            # The listing may be a moment old (eventually consistent on DynamoDB), and reset is
            # unconditional: re-read, so a lease extended meanwhile is not cut off.
            record = env.ledger.get(listed.bucket, listed.key)
            if record is not None and record.is_stuck(plan.cutoff):
                env.ledger.reset(record.bucket, record.key)
            elif record is None or record.status is not FileStatus.PENDING:
                skipped += 1
                continue
            messages[record.uri] = process_raw_file(ObjectUri(record.bucket, record.key))
            done += 1
        sent += _send(env, messages, failed)
        if on_progress is not None:
            on_progress(done + skipped, plan.count)
    result = plan.result(dry_run=False, queue=queue)
    return replace(result, done=done, messages_sent=sent, skipped=skipped, failed=failed)


def retry_failed(
    env: Env,
    *,
    older_than: timedelta = DEFAULT_FAILED_AGE,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
    on_progress: OnProgress | None = None,
) -> LedgerOpResult:
    """Send every FAILED record last updated more than `older_than` ago a `redrive_raw_file`
    message, ten to a batch, all under one fresh redrive id (in the result).

    The age keeps this clear of failures the queue is still retrying by itself. The object is
    processed again as it is now: fix it first (rewrite a corrupt object; a rewritten object
    is a new input) or the retry fails the same way and its message goes to the DLQ.

    Raises:
        ConfigError: a negative age.
        ProtectedEnvironment: a protected environment, without `yes` or `dry_run`.
    """
    queue = env.processing_queue.name

    def failed_records(cutoff: datetime) -> Iterator[FileRecord]:
        return env.ledger.list(status=FileStatus.FAILED, updated_before=cutoff)

    action = f"send redrive_raw_file to {queue}: failed records"
    plan = _plan(env, "retry-failed", older_than, failed_records, action, (yes, dry_run, command))
    if not plan.go:
        return plan.result(dry_run=dry_run, queue=queue)
    redrive_id = f"retry-failed-{uuid.uuid4()}"
    sent = 0
    failed: dict[str, str] = {}
    for chunk in _chunks(failed_records(plan.cutoff)):
        messages = {r.uri: redrive_raw_file(ObjectUri(r.bucket, r.key), redrive_id) for r in chunk}
        sent += _send(env, messages, failed)
        if on_progress is not None:
            on_progress(sent + len(failed), plan.count)
    result = plan.result(dry_run=False, queue=queue)
    return replace(result, done=sent, messages_sent=sent, failed=failed, redrive_id=redrive_id)


CLEANUP_RULE = (
    "A record is forgotten only once no message about its object can still exist: --older-than"
    " must be at least the longest message retention of the processing queue and its DLQ. A"
    " younger record may still have a message waiting (a duplicate delivery, a DLQ message an"
    " operator moves back), and once its record is gone that message would process the object"
    " again as a new input."
)


def cleanup(
    env: Env,
    *,
    older_than: timedelta,
    dry_run: bool = False,
    yes: bool = False,
    command: str | None = None,
    on_progress: OnProgress | None = None,
) -> LedgerOpResult:
    """Forget COMPLETED records last updated more than `older_than` ago (`Ledger.forget`, which
    checks status and age again in its conditional delete). Other statuses are never touched.

    Raises:
        ConfigError: a negative age, or one shorter than the queues' retention (`CLEANUP_RULE`).
        ProtectedEnvironment: a protected environment, without `yes` or `dry_run`.
    """
    _check_age(older_than)
    horizon = retention_horizon(env)
    if older_than < horizon:
        raise ConfigError(
            f"--older-than {format_duration(older_than.total_seconds())} is shorter than the"
            f" message retention of {env.processing_queue.name!r} and its DLQ"
            f" ({format_duration(horizon.total_seconds())}). {CLEANUP_RULE}",
            hint=f"{command_prefix(env)} ledger cleanup --older-than"
            f" {format_duration(horizon.total_seconds())} --dry-run",
            retention_seconds=horizon.total_seconds(),
        )

    def completed(cutoff: datetime) -> Iterator[FileRecord]:
        return env.ledger.list(status=FileStatus.COMPLETED, updated_before=cutoff)

    guard = (yes, dry_run, command)
    plan = _plan(env, "cleanup", older_than, completed, "forget completed records", guard)
    if not plan.go:
        return plan.result(dry_run=dry_run)
    done = skipped = 0
    for record in completed(plan.cutoff):
        if env.ledger.forget(record.bucket, record.key, updated_before=plan.cutoff):
            done += 1
        else:
            skipped += 1
        if on_progress is not None and (done + skipped) % 100 == 0:
            on_progress(done + skipped, plan.count)
    if on_progress is not None:
        on_progress(done + skipped, plan.count)
    return replace(plan.result(dry_run=False), done=done, skipped=skipped)
