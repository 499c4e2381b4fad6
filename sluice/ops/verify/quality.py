"""Quality: null rates of the required columns, and assertion rows with their component names.

Thresholds are per table: `DEFAULTS` below, overridden by an optional file (TOML, or JSON when
the name ends in .json) whose sections are `default`, a type (`lock`) or a table
(`telemetry_lock_flat`), later ones winning::

    [default]
    max_null_rate = { envelope__batch_id = 0.5 }   # any column; required ones default to 0

    [lock]
    max_missing_component_rate = 0.0   # share of assertion rows without a component_name
    max_failed_assertion_rate = 0.25   # share of assertion rows with passed = false
    components = ["motor", "battery", "keypad"]   # names outside the list fail

The parser quarantines a line whose required field is missing, so any null there means rows
that did not come through it (or a parser bug): the default threshold is 0.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.backends.catalog.base import TableDef
from sluice.errors import ConfigError
from sluice.layout import ALL_TYPES, table_name, type_of_table
from sluice.ops.verify.day import Day, num, quote
from sluice.ops.verify.model import Check, CheckResult, Finding, Verdict
from sluice.process.schemas import REQUIRED_COLUMNS

ASSERTION_PREFIX = "payload__assertion__"
COMPONENT = "payload__assertion__component_name"
PASSED = "payload__assertion__passed"
TOP_COMPONENTS = 20

DEFAULTS: dict[str, dict[str, Any]] = {
    "default": {
        "max_null_rate": dict.fromkeys(REQUIRED_COLUMNS, 0.0),
        "max_missing_component_rate": 0.0,
        "max_failed_assertion_rate": None,
        "components": None,
    },
}
_KEYS = set(DEFAULTS["default"])


@dataclass(frozen=True)
class Thresholds:
    max_null_rate: dict[str, float]
    max_missing_component_rate: float
    max_failed_assertion_rate: float | None
    components: tuple[str, ...] | None


def load_thresholds(path: Path | None) -> dict[str, dict[str, Any]]:
    """The threshold sections of a file (TOML, or JSON for *.json); none without a file.

    Raises:
        ConfigError: unreadable file, unknown section or key, a rate outside 0..1.
    """
    if path is None:
        return {}
    try:
        text = path.read_text()
        raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {path}: {exc.strerror}") from exc
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"thresholds file {path} is not valid: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"thresholds file {path} must hold sections (tables)")
    sections = {"default", *ALL_TYPES, *(table_name(t) for t in ALL_TYPES)}
    for name, section in raw.items():
        if name not in sections or not isinstance(section, dict):
            raise ConfigError(
                f"thresholds file {path}: unknown section {name!r}",
                hint="sections: default, a type (lock) or a table (telemetry_lock_flat)",
            )
        _validate(f"{path} [{name}]", section)
    return raw


def _validate(where: str, section: dict[str, Any]) -> None:
    unknown = set(section) - _KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}", hint=f"keys: {sorted(_KEYS)}"
        )
    rates = dict(section.get("max_null_rate") or {})
    for key in ("max_missing_component_rate", "max_failed_assertion_rate"):
        if section.get(key) is not None:
            rates[key] = section[key]
    for key, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ConfigError(f"{where}: {key} must be a rate between 0 and 1, not {rate!r}")
    components = section.get("components")
    if components is not None and not (
        isinstance(components, list) and all(isinstance(c, str) for c in components)
    ):
        raise ConfigError(f"{where}: components must be a list of names")


def thresholds_for(table: TableDef, sections: dict[str, dict[str, Any]]) -> Thresholds:
    """Defaults, then the file's `default`, type and table sections, later ones winning.

    Raises:
        ConfigError: a null-rate threshold names a column the table does not have.
    """
    columns = set(table.schema.names)
    general = [DEFAULTS["default"], sections.get("default", {})]
    specific = [sections.get(type_of_table(table.name), {}), sections.get(table.name, {})]
    # A default (built in or the file's) applies to the tables that have its column; a type or
    # table section naming a column its table lacks is a typo.
    unknown = sorted({c for s in specific for c in s.get("max_null_rate") or {}} - columns)
    if unknown:
        raise ConfigError(
            f"max_null_rate names column(s) {unknown} that {table.name} does not have",
            hint=f"columns: {', '.join(table.schema.names)}",
        )
    nulls: dict[str, float] = {}
    merged: dict[str, Any] = {}
    for layer in (*general, *specific):
        rates = layer.get("max_null_rate") or {}
        nulls |= {c: float(r) for c, r in rates.items() if c in columns}
        merged |= {k: v for k, v in layer.items() if k != "max_null_rate"}
    components = merged["components"]
    return Thresholds(
        nulls,
        float(merged["max_missing_component_rate"]),
        None
        if merged["max_failed_assertion_rate"] is None
        else float(merged["max_failed_assertion_rate"]),
        None if components is None else tuple(components),
    )


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def check_quality(day: Day, table: TableDef, limits: Thresholds) -> CheckResult:
    columns = sorted(limits.max_null_rate)
    assertion_cols = [c for c in table.schema.names if c.startswith(ASSERTION_PREFIX)]
    has_component = COMPONENT in assertion_cols
    is_assertion = " OR ".join(f"{c} IS NOT NULL" for c in assertion_cols) or "false"
    select = ["count(*) AS n_rows", *(f"count({c}) AS nn_{i}" for i, c in enumerate(columns))]
    select += [f"sum(CASE WHEN {is_assertion} THEN 1 ELSE 0 END) AS assertion_rows"]
    if has_component:
        select.append(
            f"sum(CASE WHEN ({is_assertion}) AND {COMPONENT} IS NULL THEN 1 ELSE 0 END) "
            "AS missing_component"
        )
    if PASSED in assertion_cols:
        select.append(f"sum(CASE WHEN {PASSED} = false THEN 1 ELSE 0 END) AS failed_assertions")
    row = day.rows(f"SELECT {', '.join(select)} FROM {table.name} WHERE {day.where}")[0]
    rows = num(row["n_rows"])
    if rows == 0:
        finding = Finding("no_data", Verdict.WARN, f"no verified rows in {table.name} on {day.day}")
        return CheckResult.of(Check.QUALITY, table.name, [finding])
    rates = {c: _rate(rows - num(row[f"nn_{i}"]), rows) for i, c in enumerate(columns)}
    findings = [_nulls(day, table, limits, rows, rates)]
    if has_component:
        findings.append(_assertions(day, table, limits, row))
    return CheckResult.of(Check.QUALITY, table.name, findings)


def _nulls(
    day: Day, table: TableDef, limits: Thresholds, rows: int, rates: dict[str, float]
) -> Finding:
    over = {c: r for c, r in rates.items() if r > limits.max_null_rate[c]}
    numbers = {"rows": rows, "null_rates": rates, "max_null_rate": limits.max_null_rate}
    if not over:
        return Finding(
            "null_rates", Verdict.PASS, f"{len(rates)} column(s) within their null rates", numbers
        )
    samples = (
        _sample_rows(day, table, " OR ".join(f"{c} IS NULL" for c in sorted(over)))
        if day.samples
        else []
    )
    listed = ", ".join(f"{c} {r:.2%} > {limits.max_null_rate[c]:.2%}" for c, r in over.items())
    return Finding(
        "null_rates",
        Verdict.FAIL,
        f"null rates over their thresholds: {listed}",
        numbers,
        samples,
        hint="sluice redrive --s3-uri SOURCE_REF rebuilds rows through the parser, which "
        "quarantines lines without required fields",
    )


def _assertions(day: Day, table: TableDef, limits: Thresholds, row: dict[str, Any]) -> Finding:
    assertion_rows = num(row["assertion_rows"])
    missing = num(row["missing_component"])
    failed = num(row.get("failed_assertions"))
    top = day.rows(
        f"SELECT {COMPONENT} AS component, count(*) AS n_rows FROM {table.name} "
        f"WHERE {day.where} AND {COMPONENT} IS NOT NULL "
        f"GROUP BY {COMPONENT} ORDER BY n_rows DESC, component LIMIT {TOP_COMPONENTS}"
    )
    numbers: dict[str, Any] = {
        "assertion_rows": assertion_rows,
        "missing_component": missing,
        "missing_component_rate": _rate(missing, assertion_rows),
        "failed_assertions": failed,
        "failed_assertion_rate": _rate(failed, assertion_rows),
        "components": {r["component"]: num(r["n_rows"]) for r in top},
    }
    problems: list[str] = []
    samples: list[dict[str, Any]] = []
    if numbers["missing_component_rate"] > limits.max_missing_component_rate:
        problems.append(f"{missing:,} assertion row(s) without a component_name")
        if day.samples:
            assertion = " OR ".join(
                f"{c} IS NOT NULL" for c in table.schema.names if c.startswith(ASSERTION_PREFIX)
            )
            samples += _sample_rows(day, table, f"({assertion}) AND {COMPONENT} IS NULL")
    limit = limits.max_failed_assertion_rate
    if limit is not None and numbers["failed_assertion_rate"] > limit:
        problems.append(f"failed assertions {numbers['failed_assertion_rate']:.2%} > {limit:.2%}")
    if limits.components is not None:
        known = ", ".join(map(quote, limits.components)) or "''"
        unknown = day.rows(
            f"SELECT {COMPONENT} AS component, count(*) AS n_rows FROM {table.name} "
            f"WHERE {day.where} AND {COMPONENT} IS NOT NULL AND {COMPONENT} NOT IN ({known}) "
            f"GROUP BY {COMPONENT} ORDER BY n_rows DESC, component LIMIT {max(day.samples, 1)}"
        )
        numbers["unknown_components"] = {r["component"]: num(r["n_rows"]) for r in unknown}
        if unknown:
            problems.append(
                f"component names outside the list: {sorted(numbers['unknown_components'])}"
            )
    if problems:
        return Finding("assertions", Verdict.FAIL, "; ".join(problems), numbers, samples)
    named = f"{len(numbers['components'])} component name(s)"
    if len(numbers["components"]) == TOP_COMPONENTS:
        named = f"top {TOP_COMPONENTS} component names counted"
    without = f", {missing:,} without a component name (allowed)" if missing else ""
    return Finding(
        "assertions",
        Verdict.PASS,
        f"{assertion_rows:,} assertion row(s): {named}{without}",
        numbers,
    )


def _sample_rows(day: Day, table: TableDef, condition: str) -> list[dict[str, Any]]:
    return day.rows(
        f"SELECT envelope__source_ref AS source_ref, envelope__line AS line, "
        f"envelope__ordinal AS ordinal, hour FROM {table.name} "
        f"WHERE {day.where} AND ({condition}) "
        f"ORDER BY source_ref, line, ordinal LIMIT {day.samples}"
    )
