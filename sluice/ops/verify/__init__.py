"""`sluice verify`: prove one day of the lake whole, table by table (DESIGN §1, §7).

Three checks, each a `CheckResult` per table made of findings with a verdict:

- duplicates (`duplicates.py`): no pipeline duplicate; upstream duplicates counted, not failed;
- counts (`counts.py`): the ledger's counts add up, the files hold the rows it says, ingest's
  receipts agree, and the unique verified rows are the compacted rows;
- quality (`quality.py`): null rates and assertion component names within thresholds.

Every query goes through the environment's engine (DuckDB or Athena) and reads only the day's
partitions. A check that cannot run (the engine or a backend fails) is that check's FAIL, with
the error; the others still run. Verify only reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from sluice.env import Env
from sluice.errors import ConfigError, SluiceError
from sluice.layout import check_day
from sluice.ops.verify.counts import check_counts, compacted_rows
from sluice.ops.verify.day import Day, resolve_tables
from sluice.ops.verify.duplicates import DaySummary, check_duplicates, summary
from sluice.ops.verify.model import Check, CheckResult, Finding, Verdict, VerifyReport, worst
from sluice.ops.verify.quality import (
    DEFAULTS,
    Thresholds,
    check_quality,
    load_thresholds,
    thresholds_for,
)

__all__ = [
    "DEFAULTS",
    "Check",
    "CheckResult",
    "DaySummary",
    "Finding",
    "Thresholds",
    "Verdict",
    "VerifyReport",
    "check_day",
    "compacted_rows",
    "load_thresholds",
    "summary",
    "verify",
]

DEFAULT_SAMPLES = 10


def verify(
    env: Env,
    day: str,
    types: Iterable[str] | None = None,
    checks: Iterable[Check] | None = None,
    *,
    thresholds: dict[str, dict[str, Any]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    on_step: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Run `checks` (all when None or empty) on the day's partitions of the tables of `types`
    (every verified table when None).

    `thresholds` are sections as `load_thresholds` returns them; `samples` bounds the
    offenders kept per finding; `on_step` hears "check table" before each check runs.

    Raises:
        ConfigError: a day not written YYYY-MM-DD, an unknown type, a bad threshold.
    """
    started = time.monotonic()
    context = Day(env, check_day(day), samples)
    tables = resolve_tables(env, None if types is None else list(types))
    wanted = list(dict.fromkeys(checks or ())) or list(Check)
    limits = {t.name: thresholds_for(t, thresholds or {}) for t in tables}
    _check_default_columns(thresholds or {}, {c for t in tables for c in t.schema.names})
    results: list[CheckResult] = []
    for table in tables:
        for check in wanted:
            if on_step is not None:
                on_step(f"{check.value} {table.name}")
            try:
                if check is Check.DUPLICATES:
                    result = check_duplicates(context, table)
                elif check is Check.COUNTS:
                    result = check_counts(context, table)
                else:
                    result = check_quality(context, table, limits[table.name])
            except SluiceError as exc:  # inputs were checked above: this is a backend's
                result = _could_not_run(check, table.name, exc)
            results.append(result)
    has_data = any(f.name != "no_data" for r in results for f in r.findings)
    return VerifyReport(
        day=context.day,
        tables=[t.name for t in tables],
        checks=wanted,
        verdict=worst(r.verdict for r in results),
        has_data=has_data,
        results=results,
        seconds=round(time.monotonic() - started, 3),
    )


def _could_not_run(check: Check, table: str, exc: SluiceError) -> CheckResult:
    finding = Finding(
        "error",
        Verdict.FAIL,
        f"the check could not run: {exc.error_class}: {exc.message}",
        hint=exc.hint,
    )
    return CheckResult.of(check, table, [finding])


def _check_default_columns(sections: dict[str, dict[str, Any]], columns: set[str]) -> None:
    """A column in the file's `default` section that no table checked has is a typo."""
    unknown = sorted(set(sections.get("default", {}).get("max_null_rate") or {}) - columns)
    if unknown:
        raise ConfigError(
            f"thresholds [default] max_null_rate names column(s) {unknown} that no table has"
        )
