"""`sluice doctor`: the debug playbook as one function (DESIGN §7).

One check per stage of the data flow, each with a verdict (OK / WARN / FAIL), the evidence
behind it (numbers, sample keys) and the commands that fix it. Checks look only at the recent
past — raw objects by arrival hour, partitions by event hour — so they cost the same on a lake of
a day and of five years; compaction freshness alone reads the whole ledger, as `sluice compact
--changed` does, so that it reports exactly what that command would rebuild.

The doctor only reads: it never receives from a queue (that would raise receive counts and push
messages towards the DLQ) and never repairs. A check that cannot run (a backend error) is that
check's FAIL; the others still run.

This module holds the report, the runner and what the checks share (`Context`, `Problems`);
the checks themselves are in `sluice.ops.doctor.checks`, in the order of the data flow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any

from sluice.backends.catalog.base import Partition, TableDef
from sluice.backends.ledger.base import FileRecord, FileStatus
from sluice.backends.store.base import ObjectInfo
from sluice.config import DEFAULT_ENV
from sluice.env import Env
from sluice.errors import ConfigError, QueueNotFound, SluiceError
from sluice.layout import RAW_OTLP_PREFIX, RAW_TELEMETRY_PREFIX, parse_uri

DEFAULT_HOURS = 3
RAW_STALE = timedelta(hours=1)  # longer than any buffer or Firehose flush interval
QUEUE_OLD = timedelta(minutes=15)
QUEUE_DEEP = 10_000
# A claim whose lease ran out this long ago was not taken over by a redelivery: its message is
# gone (deleted, expired or dead-lettered), so nothing will finish it without a reset.
STUCK_GRACE = timedelta(minutes=15)
# A raw object younger than this is left to its own notification (as the reconciler does).
UNPROCESSED_AFTER = timedelta(minutes=10)
RETRY_AGE = timedelta(hours=1)  # `sluice ledger retry-failed`'s default --older-than
COMPACTION_GRACE = timedelta(hours=1)
# DESIGN §7: visibility timeout >= 6x the timeout of a consumer that never renews it (the parser
# Lambda on AWS).
VISIBILITY_FACTOR = 6
# The embedded worker renews its lease and its message's visibility every third of the lease
# (`_Lease.tick` in sluice/process/processor.py); the visibility must cover two such intervals.
RENEWALS_PER_LEASE = 3
VISIBILITY_RENEWALS = 2
MAX_RECENT_OBJECTS = 500  # raw objects whose ledger records are compared with the store
MAX_LISTED = 1000  # failed or processing records read from the ledger
MAX_SCHEMA_FILES = 20  # newest files per table whose footers are read
SAMPLE = 5  # keys shown in the evidence, commands given per problem


class Verdict(StrEnum):
    """A check's verdict, from best to worst."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"

    @staticmethod
    def worst(verdicts: Iterable[Verdict]) -> Verdict:
        """The worst of `verdicts`; OK when there are none."""
        order = list(Verdict)
        return max(verdicts, key=order.index, default=Verdict.OK)


@dataclass(frozen=True)
class Finding:
    """What one check found; `fixes` are whole command lines, to run in order."""

    verdict: Verdict
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    fixes: tuple[str, ...] = ()
    see: str | None = None  # the command that shows more


@dataclass(frozen=True)
class Check:
    name: str
    title: str
    verdict: Verdict
    summary: str
    evidence: Mapping[str, Any]
    fixes: tuple[str, ...]
    see: str | None


@dataclass(frozen=True)
class DoctorReport:
    environment: str
    backend: str
    checked_at: datetime
    hours: int
    verdict: Verdict  # the worst of the checks
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def doctor(env: Env, *, now: datetime | None = None, hours: int = DEFAULT_HOURS) -> DoctorReport:
    """Check every stage over the last `hours` hours (of arrival and of event time).

    Raises:
        ConfigError: `hours` is below 1.
    """
    # The checks import this module's Context and Finding: they are imported once it is whole.
    from sluice.ops.doctor.checks import CHECKS

    if hours < 1:
        raise ConfigError(f"hours must be at least 1, not {hours}")
    ctx = Context(env, (now or datetime.now(UTC)).astimezone(UTC), hours)
    checks = tuple(_run(ctx, name, title, fn) for name, title, fn in CHECKS)
    worst = Verdict.worst(c.verdict for c in checks)
    return DoctorReport(env.config.name, env.config.backend, ctx.now, hours, worst, checks)


def _run(ctx: Context, name: str, title: str, fn: CheckFn) -> Check:
    try:
        found = fn(ctx)
    except Exception as exc:  # a bug or a backend error is this check's verdict, no other's
        message = exc.message if isinstance(exc, SluiceError) else str(exc)
        hint = exc.hint if isinstance(exc, SluiceError) else None
        evidence = {"error": type(exc).__name__, "message": message, "hint": hint}
        summary = f"the check could not run: {type(exc).__name__}: {message}"
        # A queue that does not exist is the one failure here with a command that fixes it.
        fixes = (ctx.cmd("setup"),) if isinstance(exc, QueueNotFound) else ()
        found = Finding(Verdict.FAIL, summary, evidence, fixes)
    return Check(name, title, found.verdict, found.summary, found.evidence, found.fixes, found.see)


class Context:
    """What several checks read, read once per run (and only for the recent hours)."""

    def __init__(self, env: Env, now: datetime, hours: int) -> None:
        self.env, self.now, self.hours = env, now, hours
        self._listings: dict[tuple[str, str], dict[str, ObjectInfo]] = {}

    def cmd(self, args: str) -> str:
        """A `sluice` command line for this environment."""
        name = self.env.config.name
        return f"sluice {args}" if name == DEFAULT_ENV else f"sluice --env {name} {args}"

    def repair_cmd(self, tables: Iterable[str]) -> str:
        """One `catalog repair` for all of `tables`."""
        names = sorted(set(tables))
        return self.cmd(
            f"catalog repair --table {names[0]}" if len(names) == 1 else "catalog repair"
        )

    def redrive_cmds(self, flag: str, uris: Iterable[str]) -> list[str]:
        """One redrive per object, for the first few: each rebuilds only what it names."""
        return [self.cmd(f"redrive {flag} {uri}") for uri in sorted(uris)[:SAMPLE]]

    def _hours_back(self) -> list[datetime]:
        start = self.now.replace(minute=0, second=0, microsecond=0)
        return [start - timedelta(hours=back) for back in range(self.hours + 1)]

    @cached_property
    def raw_objects(self) -> list[ObjectInfo]:
        """Raw objects of the arrival hours from `now - hours` to `now`, newest first."""
        raw = self.env.config.buckets.raw
        found = [
            info
            for kind in (RAW_TELEMETRY_PREFIX, RAW_OTLP_PREFIX)
            for t in self._hours_back()
            for info in self.env.store.list(
                raw, f"{kind}year={t:%Y}/month={t:%m}/day={t:%d}/hour={t:%H}/"
            )
        ]
        return sorted(found, key=lambda i: (i.last_modified, i.key), reverse=True)

    @cached_property
    def recent(self) -> list[tuple[ObjectInfo, FileRecord | None]]:
        objects = self.raw_objects[:MAX_RECENT_OBJECTS]
        return [(info, self.env.ledger.get(info.bucket, info.key)) for info in objects]

    @cached_property
    def completed(self) -> list[FileRecord]:
        """Ledger records completed at the current ETag of a recent raw object."""
        return [
            r
            for info, r in self.recent
            if r is not None and r.status is FileStatus.COMPLETED and r.etag == info.etag
        ]

    @cached_property
    def tables(self) -> dict[str, TableDef]:
        """The verified tables (telemetry_<type>_flat) in the catalog."""
        return {
            t.name: t
            for t in self.env.catalog.list_tables()
            if t.name.startswith("telemetry_") and t.name.endswith("_flat")
        }

    @cached_property
    def registered(self) -> dict[str, set[Partition]]:
        # The catalog lists a table's partitions only all at once; the checks use recent ones.
        return {name: set(self.env.catalog.list_partitions(name)) for name in self.tables}

    @cached_property
    def event_hours(self) -> list[Partition]:
        """(day, hour) of event time from `now - hours` to `now`, newest first."""
        return [Partition((f"{t:%Y-%m-%d}", f"{t:%H}")) for t in self._hours_back()]

    def recent_partitions(self, table: str) -> set[Partition]:
        """Registered partitions of the event window and of recent outputs (late events)."""
        outputs = {
            Partition((o.day, o.hour))
            for r in self.completed
            for o in r.outputs
            if o.table == table
        }
        return (set(self.event_hours) | outputs) & self.registered[table]

    def listing(self, bucket: str, prefix: str) -> dict[str, ObjectInfo]:
        """The objects under `prefix` by key, listed once per run."""
        if (bucket, prefix) not in self._listings:
            listed = self.env.store.list(bucket, prefix)
            self._listings[bucket, prefix] = {info.key: info for info in listed}
        return self._listings[bucket, prefix]

    def exists(self, bucket: str, key: str) -> bool:
        # One listing per folder rather than one HEAD per output.
        return key in self.listing(bucket, key.rsplit("/", 1)[0] + "/")

    def files(self, table: TableDef, partition: Partition) -> list[ObjectInfo]:
        where = parse_uri(partition.location(table))
        listed = self.listing(where.bucket, where.key).values()
        return [info for info in listed if info.key.endswith(".parquet")]


CheckFn = Callable[[Context], Finding]


class Problems:
    """The problems one check finds, each with its verdict and fixes, made into one Finding."""

    def __init__(self) -> None:
        self.found: list[tuple[Verdict, str]] = []
        self.fixes: list[str] = []

    def add(self, verdict: Verdict, text: str, *fixes: str) -> None:
        self.found.append((verdict, text))
        self.fixes += [fix for fix in fixes if fix not in self.fixes]

    def finding(
        self, ok: str, evidence: Mapping[str, Any], see: str | None = None, *, then: str = ""
    ) -> Finding:
        """OK with summary `ok` when nothing was found, else the worst verdict and every fix."""
        if not self.found:
            return Finding(Verdict.OK, ok, evidence)
        summary = "; ".join(text for _, text in self.found) + then
        verdict = Verdict.worst(v for v, _ in self.found)
        return Finding(verdict, summary, evidence, tuple(self.fixes), see)


def duration(seconds: float) -> str:
    """A duration as `sluice` flags take it (`45s`, `12m`, `3h5m`, `4d`), rounded down."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 2 * 3600:
        return f"{s // 60}m"
    big, small = (3600, 60) if s < 2 * 86400 else (86400, 3600)
    unit, rest = ("h", "m") if big == 3600 else ("d", "h")
    return f"{s // big}{unit}" + (f"{s % big // small}{rest}" if s % big // small else "")
