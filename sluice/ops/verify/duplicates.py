"""Duplicates: pipeline duplicates (sluice's fault, must be none) apart from upstream ones.

A row is identified by (source_ref, line, ordinal): the same identity twice is a pipeline
duplicate, e.g. a verified file copied under another name, or a stale output left beside its
replacement. The same (event_id, ordinal) on several lines or raw objects is an upstream
duplicate: a device resent the event. Verified tables keep those and compaction removes them,
so they are counted and sampled, never a failure.

Everything is SQL on the environment's engine (DuckDB or Athena), filtered on the day's
partition, and written in the dialect both share. One statement finds both kinds: it groups rows
by identity, then those groups by (event_id, ordinal); every CTE is used once, so Athena,
which does not materialise CTEs, scans the day once too. Samples cost one more query each,
only when asked for (`samples` > 0) and when there is something to show. The summary names the
first hour holding each kind, so a sample query reads one hour partition, not the whole day.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sluice.backends.catalog.base import Partition, TableDef
from sluice.errors import InvalidKey
from sluice.layout import parse_uri, type_of_table
from sluice.ops.verify.day import Day, FileFacts, num, quote, read_footer
from sluice.ops.verify.model import Check, CheckResult, Finding, Verdict

# Partitions whose files are opened (footers only) to name the files of sampled duplicates.
MAX_PARTITIONS_EXAMINED = 10


@dataclass(frozen=True)
class DaySummary:
    """One table's day, by row identity and by event key."""

    rows: int
    distinct_rows: int  # distinct (source_ref, line, ordinal)
    pipeline_groups: int  # identities seen more than once
    pipeline_extra: int  # rows beyond the first of each such identity
    unique_keys: int  # distinct (event_id, ordinal): the rows compaction keeps
    upstream_groups: int  # keys found on more than one line
    upstream_extra: int  # lines beyond the first of each such key
    first_doubled: tuple[str, str] | None  # (hour, source_ref) of the first pipeline duplicate
    first_resent_hour: str | None  # the first hour holding a line of a resent event


def summary_sql(table: str, where: str) -> str:
    return f"""
WITH r AS (
  SELECT min(envelope__event_id) AS event_id, envelope__ordinal AS ordinal, count(*) AS copies,
         min(hour) AS hour,
         CASE WHEN count(*) > 1 THEN min(hour) || ' ' || envelope__source_ref END AS doubled
  FROM {table} WHERE {where}
  GROUP BY envelope__source_ref, envelope__line, envelope__ordinal
), u AS (
  SELECT count(*) AS n_lines, sum(copies) AS n_rows, min(hour) AS hour,
         sum(CASE WHEN copies > 1 THEN 1 ELSE 0 END) AS n_doubled, sum(copies - 1) AS extra,
         min(doubled) AS doubled
  FROM r GROUP BY event_id, ordinal
)
SELECT count(*) AS unique_keys, sum(n_rows) AS n_rows, sum(n_lines) AS distinct_rows,
       sum(n_doubled) AS pipeline_groups, sum(extra) AS pipeline_extra,
       sum(CASE WHEN n_lines > 1 THEN 1 ELSE 0 END) AS upstream_groups,
       sum(n_lines - 1) AS upstream_extra, min(doubled) AS first_doubled,
       min(CASE WHEN n_lines > 1 THEN hour END) AS first_resent_hour
FROM u"""


def summary(day: Day, table: str) -> DaySummary:
    """The table's day summary, computed once per run (the counts check reuses it)."""
    cached = day.cache.get(("summary", table))
    if isinstance(cached, DaySummary):
        return cached
    row = day.rows(summary_sql(table, day.where))[0]
    result = DaySummary(
        rows=num(row["n_rows"]),
        distinct_rows=num(row["distinct_rows"]),
        pipeline_groups=num(row["pipeline_groups"]),
        pipeline_extra=num(row["pipeline_extra"]),
        unique_keys=num(row["unique_keys"]),
        upstream_groups=num(row["upstream_groups"]),
        upstream_extra=num(row["upstream_extra"]),
        first_doubled=_hour_and_source(row["first_doubled"]),
        first_resent_hour=row["first_resent_hour"],
    )
    day.cache[("summary", table)] = result
    return result


def _hour_and_source(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    hour, _, source_ref = value.partition(" ")
    return hour, source_ref


def check_duplicates(day: Day, table: TableDef) -> CheckResult:
    s = summary(day, table.name)
    if s.rows == 0:
        finding = Finding(
            "no_data",
            Verdict.WARN,
            f"no verified rows in {table.name} on {day.day} (registered partitions only)",
            hint=f"sluice catalog repair --table {table.name}   (if files exist but are unseen)",
        )
        return CheckResult.of(Check.DUPLICATES, table.name, [finding])
    numbers = {"rows": s.rows, "distinct_rows": s.distinct_rows}
    if s.pipeline_groups:
        hour, source_ref = s.first_doubled or ("", "")
        samples = _pipeline_samples(day, table, hour, source_ref) if day.samples else []
        pipeline = Finding(
            "pipeline_duplicates",
            Verdict.FAIL,
            f"{s.pipeline_groups:,} row(s) appear more than once by (source_ref, line, ordinal): "
            f"{s.pipeline_extra:,} extra row(s), the first of {source_ref} at hour {hour}",
            numbers
            | {
                "groups": s.pipeline_groups,
                "extra_rows": s.pipeline_extra,
                "first_source_ref": source_ref,
                "first_hour": hour,
            },
            samples,
            hint=_pipeline_hint(day, table, samples),
        )
    else:
        pipeline = Finding(
            "pipeline_duplicates", Verdict.PASS, "every row appears once", numbers | {"groups": 0}
        )
    upstream = Finding(
        "upstream_duplicates",
        Verdict.PASS,
        f"{s.upstream_groups:,} (event_id, ordinal) key(s) on more than one line (devices "
        f"resent them): {s.upstream_extra:,} extra row(s), kept here, removed by compaction"
        if s.upstream_groups
        else "no event was resent",
        {
            "unique_keys": s.unique_keys,
            "groups": s.upstream_groups,
            "extra_lines": s.upstream_extra,
        },
        _upstream_samples(day, table, s.first_resent_hour)
        if s.first_resent_hour is not None and day.samples
        else [],
    )
    return CheckResult.of(Check.DUPLICATES, table.name, [pipeline, upstream])


def _pipeline_hint(day: Day, table: TableDef, samples: list[dict[str, Any]]) -> str:
    """A file no ledger record lists is a copy: redriving it rebuilds its sources' files, then
    removes it; without samples, the day's sources are redriven (which removes copies too)."""
    stray = next(
        (f["uri"] for s in samples for f in s["files"] if not f["in_ledger"]),
        None,
    )
    if stray is not None:
        return f"sluice redrive --parquet-uri {stray} --wait   (rebuilds its sources, removes it)"
    return (
        f"sluice redrive --source-ref-day {day.day} --type {type_of_table(table.name)} --wait"
        "   (rewrites the day's files, removes the copies)"
    )


def _pipeline_samples(
    day: Day, table: TableDef, hour: str, source_ref: str
) -> list[dict[str, Any]]:
    """Duplicates of one raw object in one hour: the first the summary found."""
    if not source_ref:
        return []

    def query(where: str) -> list[dict[str, Any]]:
        return day.rows(f"""
SELECT envelope__source_ref AS source_ref, envelope__line AS line, envelope__ordinal AS ordinal,
       min(envelope__event_id) AS event_id, count(*) AS copies, min(hour) AS hour,
       max(hour) AS last_hour
FROM {table.name} WHERE {where} AND envelope__source_ref = {quote(source_ref)}
GROUP BY envelope__source_ref, envelope__line, envelope__ordinal
HAVING count(*) > 1
ORDER BY line, ordinal
LIMIT {day.samples}""")

    # A copy in another hour's partition doubles rows across hours: then the whole day.
    rows = query(f"{day.where} AND hour = {quote(hour)}") or query(day.where)
    hours = {(r["source_ref"], h) for r in rows for h in (r["hour"], r["last_hour"])}
    files = _files_holding(day, table, hours)
    for row in rows:
        row["copies"] = num(row["copies"])
        hours_of_row = dict.fromkeys((row["hour"], row.pop("last_hour")))
        row["files"] = [
            {"uri": f.uri, "rows": f.rows, "in_ledger": known}
            for h in hours_of_row
            for f, known in files.get((row["source_ref"], h), [])
            if f.min_line is None or f.min_line <= row["line"] <= (f.max_line or row["line"])
        ]
    return rows


def _files_holding(
    day: Day, table: TableDef, wanted: set[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[FileFacts, bool]]]:
    """The files of each (source_ref, hour), found by their footers, and whether the ledger
    lists each one as an output of that source (a file it does not list is a stray)."""
    by_hour: dict[str, set[str]] = defaultdict(set)
    for source_ref, hour in wanted:
        by_hour[hour].add(source_ref)
    found: dict[tuple[str, str], list[tuple[FileFacts, bool]]] = defaultdict(list)
    for hour in sorted(by_hour)[:MAX_PARTITIONS_EXAMINED]:
        prefix = parse_uri(Partition((day.day, hour)).location(table))
        for obj in day.env.store.list(prefix.bucket, prefix.key):
            if not obj.key.endswith(".parquet"):
                continue
            facts = read_footer(day.env, obj.bucket, obj.key)
            if facts is None or facts.source_ref not in by_hour[hour]:
                continue
            found[(facts.source_ref, hour)].append((facts, _listed(day, facts)))
    return found


def _listed(day: Day, facts: FileFacts) -> bool:
    if facts.source_ref is None:
        return False
    try:
        source = parse_uri(facts.source_ref)
    except InvalidKey:  # not a URI: nothing sluice wrote
        return False
    record = day.env.ledger.get(source.bucket, source.key)
    return record is not None and any(o.uri == facts.uri for o in record.outputs)


def _upstream_samples(day: Day, table: TableDef, hour: str) -> list[dict[str, Any]]:
    """Events resent within the first hour that holds any. Only the lines in that hour are
    listed (a resend normally carries the same occurred_at, so the same hour)."""
    rows = day.rows(f"""
WITH r AS (
  SELECT envelope__event_id AS event_id, envelope__ordinal AS ordinal,
         envelope__source_ref AS source_ref, envelope__line AS line, min(hour) AS hour
  FROM {table.name} WHERE {day.where} AND hour = {quote(hour)}
  GROUP BY envelope__event_id, envelope__ordinal, envelope__source_ref, envelope__line
), k AS (
  SELECT event_id, ordinal FROM r GROUP BY event_id, ordinal HAVING count(*) > 1
  ORDER BY event_id, ordinal LIMIT {day.samples}
)
SELECT r.event_id, r.ordinal, r.source_ref, r.line, r.hour
FROM r JOIN k ON r.event_id = k.event_id AND r.ordinal = k.ordinal
ORDER BY r.event_id, r.ordinal, r.source_ref, r.line""")
    samples: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["event_id"], row["ordinal"])
        sample = samples.setdefault(
            key, {"event_id": key[0], "ordinal": key[1], "objects": 0, "lines": []}
        )
        sample["lines"].append(
            {"source_ref": row["source_ref"], "line": row["line"], "hour": row["hour"]}
        )
    for sample in samples.values():
        sample["objects"] = len({line["source_ref"] for line in sample["lines"]})
    return list(samples.values())
