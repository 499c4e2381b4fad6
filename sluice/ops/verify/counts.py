"""Counts: every line of every raw object is accounted for, and the lake holds what the ledger says.

For each raw object with outputs in the table on the day (from the ledger):

- lines = blank + good + quarantined, rows = the rows of its outputs, quarantined lines = the
  lines of its quarantine file (the ledger's own numbers agree with each other);
- the rows the engine sees for it, per hour, are the rows the ledger says its file holds
  (one query grouped by source_ref and hour; footers of the offending files say why not);
- ingest's receipt, where there is one, counted the same lines;

and the table's distinct (event_id, ordinal) of the day are the compacted table's rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sluice.backends.catalog.base import TableDef
from sluice.backends.ledger.base import FileStatus
from sluice.env import Env
from sluice.layout import type_of_table
from sluice.ops.verify.day import Day, ObjectOutputs, num, read_footer
from sluice.ops.verify.duplicates import summary
from sluice.ops.verify.model import Check, CheckResult, Finding, Verdict


def check_counts(day: Day, table: TableDef) -> CheckResult:
    objects = day.objects(table.name)
    seen = {
        (r["source_ref"], r["hour"]): num(r["n_rows"])
        for r in day.rows(
            f"SELECT envelope__source_ref AS source_ref, hour, count(*) AS n_rows "
            f"FROM {table.name} WHERE {day.where} GROUP BY envelope__source_ref, hour"
        )
    }
    if not objects and not seen:
        finding = Finding(
            "no_data",
            Verdict.WARN,
            f"no raw object has outputs in {table.name} on {day.day}, and no rows are visible",
        )
        return CheckResult.of(Check.COUNTS, table.name, [finding])
    findings = [
        _lines_balance(day, objects),
        _rows_in_files(day, table, objects, seen),
        _receipts(day, objects),
        _compacted(day, table),
    ]
    return CheckResult.of(Check.COUNTS, table.name, findings)


def _lines_balance(day: Day, objects: list[ObjectOutputs]) -> Finding:
    offenders: list[dict[str, Any]] = []
    checked = 0
    for obj in objects:
        c = obj.record.counts
        if c is None:
            continue
        checked += 1
        verified = sum(o.rows for o in obj.record.outputs if o.hour)
        quarantined = sum(o.rows for o in obj.record.outputs if not o.hour)
        problems = []
        if c.lines != c.blank_lines + c.good_lines + c.quarantined_lines:
            problems.append("lines != blank + good + quarantined")
        if c.rows != verified:
            problems.append(f"rows {c.rows} != {verified} rows in its outputs")
        if c.quarantined_lines != quarantined:
            problems.append(f"quarantined {c.quarantined_lines} != {quarantined} in quarantine")
        if problems:
            offenders.append(
                {
                    "source_ref": obj.record.uri,
                    "problems": problems,
                    "lines": c.lines,
                    "blank_lines": c.blank_lines,
                    "good_lines": c.good_lines,
                    "quarantined_lines": c.quarantined_lines,
                    "rows": c.rows,
                }
            )
    numbers = {"objects": len(objects), "checked": checked, "offenders": len(offenders)}
    if offenders:
        return Finding(
            "lines_balance",
            Verdict.FAIL,
            f"{len(offenders)} raw object(s) whose ledger counts do not add up",
            numbers,
            offenders[: day.samples],
            hint="sluice redrive --s3-uri SOURCE_REF   (reprocess it: counts and outputs anew)",
        )
    return Finding(
        "lines_balance",
        Verdict.PASS,
        f"{checked} raw object(s): lines = blank + good + quarantined",
        numbers,
    )


def _rows_in_files(
    day: Day, table: TableDef, objects: list[ObjectOutputs], seen: dict[tuple[str, str], int]
) -> Finding:
    expected = {(obj.record.uri, o.hour): (obj, o) for obj in objects for o in obj.outputs}
    keys = sorted(set(expected) | set(seen))
    mismatched = [
        k for k in keys if (expected[k][1].rows if k in expected else 0) != seen.get(k, 0)
    ]
    # An object being reprocessed right now may be between its new files and its ledger entry.
    settling = [
        k
        for k in mismatched
        if k in expected and expected[k][0].record.status is FileStatus.PROCESSING
    ]
    numbers = {
        "objects": len(objects),
        "files": len(expected),
        "ledger_rows": sum(o.rows for _, o in expected.values()),
        "visible_rows": sum(seen.values()),
        "mismatches": len(mismatched),
    }
    if not mismatched:
        return Finding(
            "rows_in_files",
            Verdict.PASS,
            f"{len(expected)} file(s) of {len(objects)} raw object(s) hold the "
            f"{numbers['ledger_rows']:,} rows the ledger says",
            numbers,
        )
    registered = {p.values for p in day.env.catalog.list_partitions(table.name)}
    samples = [
        _explain(day.env, key, expected.get(key), seen.get(key, 0), registered, day.day)
        for key in mismatched[: day.samples]
    ]
    return Finding(
        "rows_in_files",
        Verdict.WARN if len(settling) == len(mismatched) else Verdict.FAIL,
        f"{len(mismatched)} (raw object, hour) pair(s) where the rows visible differ from the "
        "ledger's" + (f" ({len(settling)} being reprocessed now)" if settling else ""),
        numbers,
        samples,
        hint="; ".join(dict.fromkeys(_fix(day.day, table.name, s) for s in samples)) or None,
    )


def _fix(day: str, table: str, sample: dict[str, Any]) -> str:
    """The command that fixes one mismatch, by its cause."""
    problem = sample["problem"]
    if "not registered" in problem:
        return f"sluice catalog repair --table {table}"
    if "other files" in problem or "lists no file" in problem:
        return f"sluice redrive --source-ref-day {day} --type {type_of_table(table)} --wait"
    return f"sluice redrive --s3-uri {sample['source_ref']}"


def _explain(
    env: Env,
    key: tuple[str, str],
    expected: tuple[ObjectOutputs, Any] | None,
    visible: int,
    registered: set[tuple[str, ...]],
    day: str,
) -> dict[str, Any]:
    source_ref, hour = key
    sample: dict[str, Any] = {"source_ref": source_ref, "hour": hour, "visible_rows": visible}
    if expected is None:
        sample["problem"] = "rows of a raw object whose ledger entry lists no file here"
        return sample
    obj, output = expected
    facts = read_footer(env, output.bucket, output.key)
    sample |= {
        "file": output.uri,
        "ledger_rows": output.rows,
        "file_rows": None if facts is None else facts.rows,
        "status": obj.record.status.value,
    }
    if (day, hour) not in registered:
        sample["problem"] = f"partition day={day}/hour={hour} is not registered in the catalog"
    elif facts is None:
        sample["problem"] = "the file the ledger lists is missing"
    elif facts.error is not None:
        sample["problem"] = f"the file is not readable Parquet: {facts.error}"
    elif facts.rows != output.rows:
        sample["problem"] = f"the file holds {facts.rows} rows, the ledger says {output.rows}"
    else:
        sample["problem"] = "other files in the partition hold rows of this object (a copy?)"
    return sample


def _receipts(day: Day, objects: Iterable[ObjectOutputs]) -> Finding:
    offenders: list[dict[str, Any]] = []
    with_receipt = without = 0
    for obj in objects:
        record = obj.record
        receipt = day.env.ledger.get_receipt(record.bucket, record.key)
        if receipt is None or record.counts is None:
            without += 1
            continue
        with_receipt += 1
        if receipt.lines != record.counts.lines:
            offenders.append(
                {
                    "source_ref": record.uri,
                    "receipt_lines": receipt.lines,
                    "ledger_lines": record.counts.lines,
                }
            )
    numbers = {
        "with_receipt": with_receipt,
        "without_receipt": without,
        "offenders": len(offenders),
    }
    if offenders:
        return Finding(
            "receipts",
            Verdict.FAIL,
            f"{len(offenders)} raw object(s) where the parser read other lines than ingest wrote",
            numbers,
            offenders[: day.samples],
            hint="sluice redrive --s3-uri SOURCE_REF   (raw objects are never modified: "
            "a difference that stays means the object was)",
        )
    message = f"{with_receipt} object(s): parser lines = ingest receipt lines"
    if without:
        message += f"; {without} without a receipt (not written by sluice's ingest)"
    return Finding("receipts", Verdict.PASS, message, numbers)


def _compacted(day: Day, table: TableDef) -> Finding:
    unique = summary(day, table.name).unique_keys
    type_ = type_of_table(table.name)
    compacted = compacted_rows(day.env, type_, day.day)
    fix = f"sluice compact --date {day.day} --type {type_}"
    numbers = {"verified_unique_rows": unique, "compacted_rows": compacted}
    if compacted is None:
        return Finding("compacted", Verdict.WARN, "not compacted yet", numbers, hint=fix)
    if compacted != unique:
        return Finding(
            "compacted",
            Verdict.FAIL,
            f"{unique:,} distinct (event_id, ordinal) verified, {compacted:,} compacted "
            "(a stale or broken compaction)",
            numbers,
            hint=fix,
        )
    return Finding(
        "compacted", Verdict.PASS, f"{unique:,} unique verified rows = compacted rows", numbers
    )


def compacted_rows(env: Env, type_: str, day: str) -> int | None:
    """Rows of the day in `int_<type>_compacted_daily`; None when the day is not compacted, or
    the type has no compacted table (compaction knows only the verified JSON types)."""
    from sluice.compact.daily import compacted_rows as rows_of_day
    from sluice.compact.state import known_types

    if type_ not in known_types():
        return None
    return rows_of_day(env, type_, day)
