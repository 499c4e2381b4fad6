"""The doctor's checks, in the order of the data flow (`CHECKS`, which `doctor` runs in turn).

Each check reads what it needs through the run's shared `Context` and returns one `Finding`: its
verdict, the evidence and the commands that fix what it found.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sluice.aws.template import PARSER_TIMEOUT_SECONDS
from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import FileStatus
from sluice.layout import type_of_table
from sluice.ops.doctor import (
    COMPACTION_GRACE,
    MAX_LISTED,
    MAX_SCHEMA_FILES,
    QUEUE_DEEP,
    QUEUE_OLD,
    RAW_STALE,
    RENEWALS_PER_LEASE,
    RETRY_AGE,
    SAMPLE,
    STUCK_GRACE,
    UNPROCESSED_AFTER,
    VISIBILITY_FACTOR,
    VISIBILITY_RENEWALS,
    CheckFn,
    Context,
    Finding,
    Problems,
    Verdict,
    duration,
)
from sluice.process.schemas import SPECS

CHECKS: list[tuple[str, str, CheckFn]] = []  # (name, title, check), in the order they run


def _check(name: str, title: str) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS.append((name, title, fn))
        return fn

    return register


def _hour(partition: Partition) -> str:
    return "/".join(partition.values)


@_check("raw_arriving", "raw arriving")
def _raw_arriving(ctx: Context) -> Finding:
    embedded = ctx.env.config.backend == "embedded"
    fixes = (ctx.cmd("serve"),) if embedded else ()
    where = "" if embedded else " (check the ingest function and its Firehose stream)"
    if not ctx.raw_objects:
        summary = f"no raw object arrived in the last {ctx.hours} hours{where}"
        return Finding(Verdict.WARN, summary, {"objects": 0}, fixes)
    newest = ctx.raw_objects[0]
    age = (ctx.now - newest.last_modified).total_seconds()
    count = len(ctx.raw_objects)
    evidence = {"objects": count, "newest": newest.uri, "newest_age_seconds": round(age)}
    if age > RAW_STALE.total_seconds():
        summary = f"the newest raw object is {duration(age)} old{where}"
        return Finding(Verdict.WARN, summary, evidence, fixes)
    summary = f"newest raw object {duration(age)} ago; {count} in the last {ctx.hours}h"
    return Finding(Verdict.OK, summary, evidence)


@_check("processing_queue", "processing queue")
def _processing_queue(ctx: Context) -> Finding:
    queue = ctx.env.processing_queue
    counts = queue.counts()
    age = counts.oldest_age_seconds
    evidence: dict[str, Any] = {"queue": queue.name, **asdict(counts)}
    problems = Problems()
    fix = ctx.cmd("worker --until-idle")
    if counts.visible >= QUEUE_DEEP:
        problems.add(Verdict.WARN, f"{counts.visible:,} messages waiting", fix)
    if age is None:
        evidence["oldest_age"] = (
            "not available from this backend (SQS publishes it only as the CloudWatch metric "
            "ApproximateAgeOfOldestMessage)"
        )
    elif age > QUEUE_OLD.total_seconds():
        problems.add(Verdict.WARN, f"the oldest message is {duration(age)} old", fix)
    summary = f"{counts.visible} visible, {counts.in_flight} in flight"
    if counts.visible + counts.in_flight + counts.delayed:
        summary += f"; oldest {'age unknown' if age is None else duration(age)}"
    see = ctx.cmd("queue status")
    return problems.finding(summary, evidence, see, then=": are the workers running?")


@_check("dlq", "dead-letter queue")
def _dlq(ctx: Context) -> Finding:
    dlq = ctx.env.processing_dlq
    counts = dlq.counts()
    depth = counts.visible + counts.in_flight + counts.delayed
    evidence = {"queue": dlq.name, "depth": depth, "oldest_age_seconds": counts.oldest_age_seconds}
    if depth == 0:
        return Finding(Verdict.OK, f"{dlq.name} is empty", evidence)
    see = ctx.cmd("dlq list")
    summary = f"{depth} message(s) in {dlq.name}: read why with `{see}`, fix that, then redrive"
    fixes = (ctx.cmd(f"dlq redrive-all --max-messages {depth}"),)
    return Finding(Verdict.FAIL, summary, evidence, fixes, see)


@_check("ledger_failures", "ledger failures")
def _ledger_failures(ctx: Context) -> Finding:
    failed = list(ctx.env.ledger.list(status=FileStatus.FAILED, limit=MAX_LISTED))
    if not failed:
        return Finding(Verdict.OK, "no failed files")
    terminal = [r for r in failed if r.terminal]
    classes = Counter(r.error_class or "unknown" for r in failed)
    sample = [
        {"source": r.uri, "error_class": r.error_class, "error": r.last_error}
        | {"terminal": r.terminal, "attempts": r.attempts}
        for r in (terminal or failed)[-SAMPLE:]
    ]
    evidence = {"failed": len(failed), "terminal": len(terminal)} | {
        "by_error_class": dict(classes.most_common()),
        "sample": sample,
    }
    more = "+" if len(failed) == MAX_LISTED else ""
    reasons = ", ".join(f"{n} {cls}" for cls, n in classes.most_common(3))
    summary = f"{len(failed)}{more} failed file(s), {len(terminal)} terminal: {reasons}"
    # The queue retries transient failures by itself, so retry-failed leaves alone those younger
    # than RETRY_AGE; it must be told to take in the terminal ones the queue will not retry.
    youngest = min((ctx.now - r.updated_at for r in terminal), default=RETRY_AGE)
    age = "" if youngest >= RETRY_AGE else f" --older-than {duration(youngest.total_seconds())}"
    fixes = (ctx.cmd(f"ledger retry-failed{age}"),)
    # Transient failures heal by themselves; terminal ones need their cause fixed first.
    verdict = Verdict.FAIL if terminal else Verdict.WARN
    return Finding(verdict, summary, evidence, fixes, ctx.cmd("ledger list --status failed"))


@_check("stuck_claims", "stuck claims")
def _stuck_claims(ctx: Context) -> Finding:
    processing = list(ctx.env.ledger.list(status=FileStatus.PROCESSING, limit=MAX_LISTED))
    stuck = [r for r in processing if r.is_stuck(ctx.now)]
    if not stuck:
        return Finding(Verdict.OK, f"{len(processing)} claim(s) in progress, none stuck")
    ago = {r.uri: (ctx.now - (r.lease_expires_at or ctx.now)).total_seconds() for r in stuck}
    sample = [
        {"source": r.uri, "owner": r.owner, "attempts": r.attempts}
        | {"lease_expired_seconds_ago": round(ago[r.uri])}
        for r in stuck[:SAMPLE]
    ]
    evidence = {"processing": len(processing), "stuck": len(stuck), "sample": sample}
    grace = int(STUCK_GRACE.total_seconds())
    old = [uri for uri, seconds in ago.items() if seconds >= grace]
    see = ctx.cmd("ledger list --status stuck")
    if old:
        summary = (
            f"{len(old)} claim(s) whose lease ran out over {duration(grace)} ago: their worker "
            "died and no redelivery took them over"
        )
        fixes = (ctx.cmd(f"ledger reset-stuck --older-than {duration(grace)}"),)
        return Finding(Verdict.FAIL, summary, evidence, fixes, see)
    summary = (
        f"{len(stuck)} claim(s) whose lease ran out in the last {duration(grace)}: a worker "
        "takes each over when its message comes back"
    )
    return Finding(Verdict.WARN, summary, evidence, (ctx.cmd("worker --until-idle"),), see)


@_check("verified_partitions", "verified partitions (latest hours)")
def _verified_partitions(ctx: Context) -> Finding:
    hours = ctx.event_hours
    registered = {
        name: [_hour(p) for p in hours if p in ctx.registered[name]] for name in ctx.tables
    }
    window = f"{_hour(hours[-1])} to {_hour(hours[0])}"
    evidence = {"event_hours": window, "registered": registered}
    total = sum(map(len, registered.values()))
    if not total:
        summary = f"no verified partition for the last {ctx.hours} hours of event time"
        fixes = (ctx.cmd("worker --until-idle"),)
        return Finding(Verdict.WARN, summary, evidence, fixes, ctx.cmd("queue status"))
    tables = sum(1 for ps in registered.values() if ps)
    summary = f"{total} partition(s) registered in {tables} table(s) for {window}"
    return Finding(Verdict.OK, summary, evidence)


@_check("registry", "registry vs catalog vs store")
def _registry(ctx: Context) -> Finding:
    missing: dict[str, list[str]] = defaultdict(list)  # source -> its outputs the store lacks
    unregistered: dict[str, set[Partition]] = defaultdict(set)
    for record in ctx.completed:
        for out in record.outputs:
            if not ctx.exists(out.bucket, out.key):
                missing[record.uri].append(out.uri)
            if out.hour and Partition((out.day, out.hour)) not in ctx.registered.get(out.table, ()):
                unregistered[out.table].add(Partition((out.day, out.hour)))
    empty = {
        name: [_hour(p) for p in sorted(ctx.recent_partitions(name)) if not ctx.files(table, p)]
        for name, table in ctx.tables.items()
    }
    empty = {name: hours for name, hours in empty.items() if hours}
    late = ctx.now - UNPROCESSED_AFTER
    # Failed and processing records are the ledger checks' business; these have no owner.
    unprocessed = [
        info.uri
        for info, r in ctx.recent
        if info.last_modified <= late
        and (
            r is None
            or r.status is FileStatus.PENDING
            or (r.status is FileStatus.COMPLETED and r.etag != info.etag)
        )
    ]
    evidence = {
        "records_checked": len(ctx.completed),
        "missing_outputs": {src: uris[:SAMPLE] for src, uris in sorted(missing.items())[:SAMPLE]},
        "unregistered": {t: [_hour(p) for p in sorted(ps)] for t, ps in unregistered.items()},
        "empty_partitions": empty,
        "unprocessed": len(unprocessed),
        "unprocessed_sample": unprocessed[:SAMPLE],
    }
    problems = Problems()
    repair = ctx.repair_cmd([*unregistered, *empty])  # one repair takes care of both
    if missing:
        text = f"{len(missing)} source(s) whose outputs the store lacks"
        problems.add(Verdict.FAIL, text, *ctx.redrive_cmds("--s3-uri", missing))
    if unregistered:
        text = (
            f"{sum(map(len, unregistered.values()))} partition(s) of recent outputs not registered"
        )
        problems.add(Verdict.FAIL, text, repair)
    if empty:
        text = f"{sum(map(len, empty.values()))} registered partition(s) with no files"
        problems.add(Verdict.WARN, text, repair)
    if unprocessed:
        age = duration(UNPROCESSED_AFTER.total_seconds())
        text = f"{len(unprocessed)} raw object(s) over {age} old that nobody processed"
        problems.add(Verdict.WARN, text, ctx.cmd("catalog reconcile"))
    ok = f"{len(ctx.completed)} recent record(s): outputs stored, partitions registered"
    return problems.finding(ok, evidence)


@_check("schemas", "file schemas vs table")
def _schemas(ctx: Context) -> Finding:
    tables_off: dict[str, dict[str, Any]] = {}
    files_off: list[dict[str, Any]] = []
    read = 0
    fs, root = ctx.env.store.arrow_filesystem()
    for name, table in ctx.tables.items():
        spec = SPECS.get(type_of_table(name))
        if spec is not None and (diff := _schema_diff(spec.schema, table.schema)):
            tables_off[name] = diff
        files = [f for p in ctx.recent_partitions(name) for f in ctx.files(table, p)]
        files.sort(key=lambda i: (i.last_modified, i.key), reverse=True)
        for info in files[:MAX_SCHEMA_FILES]:
            read += 1
            try:
                schema = pq.read_schema(f"{root}{info.bucket}/{info.key}", filesystem=fs)
            except (OSError, pa.ArrowException) as exc:
                # Whose file it is cannot be read either: redrive finds out, delete could not.
                files_off.append(
                    {"file": info.uri, "table": name, "lineage": None} | {"unreadable": str(exc)}
                )
                continue
            if diff := _schema_diff(table.schema, schema):
                lineage = "envelope__source_ref" in schema.names
                files_off.append({"file": info.uri, "table": name, "lineage": lineage, **diff})
    evidence = {"files_read": read, "tables_unlike_spec": tables_off} | {
        "files_unlike_table": len(files_off),
        "sample": files_off[:SAMPLE],
    }
    problems = Problems()
    for name in sorted({spec.table for spec in SPECS.values()} - set(ctx.tables)):
        problems.add(Verdict.FAIL, f"table {name} is not in the catalog", ctx.cmd("setup"))
    for name in tables_off:
        problems.add(Verdict.FAIL, f"table {name} differs from its spec", ctx.cmd("setup"))
    if files_off:
        # A file with lineage is rebuilt from its source; one without is no pipeline output that
        # anything could rebuild: it can only go.
        strays = sorted(f["file"] for f in files_off if f["lineage"] is False)[:SAMPLE]
        rebuild = ctx.redrive_cmds(
            "--parquet-uri", [f["file"] for f in files_off if f["lineage"] is not False]
        )
        text = f"{len(files_off)} recent file(s) do not match their table's schema"
        problems.add(
            Verdict.FAIL, text, *rebuild, *(ctx.cmd(f"delete --prefix {u}") for u in strays)
        )
    ok = f"{len(ctx.tables)} table(s) match their spec; {read} recent file(s) match"
    return problems.finding(ok, evidence)


def _schema_diff(expected: pa.Schema, actual: pa.Schema) -> dict[str, Any] | None:
    """How `actual` differs from `expected` in column names, types and order (not metadata)."""
    want = {f.name: f.type for f in expected}
    have = {f.name: f.type for f in actual}
    diff: dict[str, Any] = {}
    if missing := [n for n in want if n not in have]:
        diff["missing_columns"] = missing
    if extra := [n for n in have if n not in want]:
        diff["extra_columns"] = extra
    if types := {n: f"{have[n]}, not {want[n]}" for n in want if n in have and have[n] != want[n]}:
        diff["type_changes"] = types
    if not diff and list(want) != list(have):
        diff["column_order"] = list(have)
    return diff or None


@_check("compaction", "compaction freshness")
def _compaction(ctx: Context) -> Finding:
    # The plan `sluice compact --changed` would run: so the fix does exactly what this reports.
    from sluice.compact.run import plan_changed

    stale: list[str] = []
    filling: list[str] = []
    reasons: Counter[str] = Counter()
    for unit in plan_changed(ctx.env):
        # A day still filling changes by the minute: it counts once it is over (and compaction
        # has had its grace to take it up). Late events and redrives make an old day count again.
        if _day_end(unit.day) + COMPACTION_GRACE > ctx.now:
            filling.append(f"{unit.type} {unit.day}")
            continue
        reasons[unit.reason.value] += 1
        stale.append(f"{unit.type} {unit.day} ({unit.reason.value}, {unit.sources} source(s))")
    evidence = {"stale_days": len(stale), "sample": stale[:SAMPLE], "still_filling": filling}
    if not stale:
        summary = "every finished day was compacted after its files last changed"
        return Finding(Verdict.OK, summary, evidence)
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
    summary = f"{len(stale)} finished day(s) changed since their last compaction: {counts}"
    return Finding(Verdict.WARN, summary, evidence, (ctx.cmd("compact --changed"),))


def _day_end(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)


@_check("queue_settings", "queue settings")
def _queue_settings(ctx: Context) -> Finding:
    cfg = ctx.env.config
    src_name, dlq_name = ctx.env.processing_queue.name, ctx.env.processing_dlq.name
    src, dlq = ctx.env.processing_queue.settings(), ctx.env.processing_dlq.settings()
    policy = src.redrive_policy
    problems = Problems()
    setup = ctx.cmd("setup")
    if policy is None or policy.max_receive_count < 1:
        text = f"{src_name} has no redrive policy with a maxReceiveCount: nothing is dead-lettered"
        problems.add(Verdict.FAIL, text, setup)
    elif policy.dead_letter_queue != dlq_name:
        text = f"{src_name} dead-letters into {policy.dead_letter_queue}, not {dlq_name}"
        problems.add(Verdict.FAIL, text, setup)
    # A message keeps its first enqueue time when it moves to a standard DLQ: a DLQ that keeps
    # messages no longer than its source loses those that spent their life being retried.
    if dlq.retention_seconds <= src.retention_seconds:
        text = (
            f"{dlq_name} keeps messages {duration(dlq.retention_seconds)}, not longer than "
            f"{src_name}'s {duration(src.retention_seconds)}"
        )
        problems.add(Verdict.FAIL, text, setup)
    need, rule, short = _visibility_rule(cfg.backend == "aws", cfg.lease_seconds)
    visibility = src.visibility_timeout_seconds
    if visibility < need:
        problems.add(short, f"visibility timeout {visibility}s is under {rule}", setup)
    # `setup` applies the environment's settings: when those are the cause, they change first.
    configured = (
        cfg.dlq_retention_seconds <= cfg.retention_seconds
        or cfg.visibility_timeout_seconds < need
        or cfg.max_receive_count < 1
    )
    then = f"; fix them in [env.{cfg.name}] of sluice.toml, then run setup" if configured else ""
    evidence = {src_name: asdict(src), dlq_name: asdict(dlq)} | {
        "visibility_needed_seconds": need,
        "visibility_rule": rule,
    }
    ok = (
        f"{dlq_name} outlives {src_name}; visibility {visibility}s >= {rule}; "
        f"maxReceiveCount {policy and policy.max_receive_count}"
    )
    return problems.finding(ok, evidence, then=then)


def _visibility_rule(aws: bool, lease_seconds: int) -> tuple[int, str, Verdict]:
    """The shortest visibility timeout the consumer needs, the rule in words, and the verdict
    for a shorter one.

    The parser Lambda (AWS) never renews a message's visibility: it must stay hidden through a
    whole invocation and the retries around it, hence DESIGN §7's 6x the function's timeout; a
    shorter one brings the message back mid-invocation to a second parser: FAIL.

    The embedded worker renews the message's visibility together with its lease every third of
    the lease (`_Lease.tick` in sluice/process/processor.py calls `extend_visibility` in
    sluice/process/worker.py), so the visibility only has to outlast a renewal interval with
    margin. Ticks come between batches of lines and between uploads, so a renewal can be late:
    two intervals let it be a whole interval late. With less, the message comes back while its
    worker holds the lease: another worker finds the claim held and puts it back (a receive
    towards the DLQ), and the first worker's next renewal finds its receipt handle superseded.
    The lease still keeps two workers from writing the same outputs: WARN.
    """
    if aws:
        need = VISIBILITY_FACTOR * PARSER_TIMEOUT_SECONDS
        rule = (
            f"{need}s, {VISIBILITY_FACTOR}x the parser function's {PARSER_TIMEOUT_SECONDS}s "
            "timeout (it never renews visibility)"
        )
        return need, rule, Verdict.FAIL
    interval = lease_seconds / RENEWALS_PER_LEASE
    # Visibility is whole seconds: at least the ceiling of two intervals.
    need = math.ceil(VISIBILITY_RENEWALS * lease_seconds / RENEWALS_PER_LEASE)
    rule = (
        f"{need}s, {VISIBILITY_RENEWALS} renewal intervals of the worker, which renews its "
        f"{lease_seconds}s lease and the message's visibility every {interval:.3g}s"
    )
    return need, rule, Verdict.WARN
