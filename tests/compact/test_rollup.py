"""15-minute rollups: recomputed here in plain Python from the compacted rows, and built once
per compaction of a day."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sluice.compact.daily import compact_day
from sluice.compact.rollup import RollupStatus, build_rollup
from sluice.compact.run import compact
from sluice.compact.state import compacted_table, rollup_table
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.process.schemas import PAYLOAD_FIELDS, FieldKind
from tests.compact.conftest import verified_keys
from tests.e2e.conftest import Run

NUMERIC = (FieldKind.INT32, FieldKind.INT64, FieldKind.DOUBLE)


def _bucket(at: datetime) -> datetime:
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def expected_rollup(
    rows: list[dict[str, Any]], type_: str
) -> dict[tuple[Any, ...], dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        key = (
            row["envelope__device_id"],
            row["envelope__event_kind"],
            _bucket(row["envelope__occurred_at"]),
        )
        groups[key].append(row)
    out = {}
    for key, members in groups.items():
        events = [r for r in members if r["envelope__ordinal"] == 0]
        passed = [r["payload__assertion__passed"] for r in members]
        agg: dict[str, Any] = {
            "rows": len(members),
            "events": len(events),
            "assertions_passed": sum(p is True for p in passed),
            "assertions_failed": sum(p is False for p in passed),
        }
        fields = [
            (n, f"payload__{n}", events) for n, k in PAYLOAD_FIELDS[type_].items() if k in NUMERIC
        ]
        fields.append(("measured_value", "payload__assertion__measured_value", members))
        for name, column, scope in fields:
            every = [r[column] for r in members if r[column] is not None]
            values = [r[column] for r in scope if r[column] is not None]
            agg[f"{name}_min"] = min(every, default=None)
            agg[f"{name}_max"] = max(every, default=None)
            agg[f"{name}_avg"] = sum(values) / len(values) if values else None
        out[key] = agg
    return out


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def test_rollups_match_a_plain_recomputation(run: Run) -> None:
    compact(run.env, changed=True)
    for type_, day in sorted(verified_keys(run)):
        compacted = run.env.lake.scan(compacted_table(type_), day=day).read_all().to_pylist()
        want = expected_rollup(compacted, type_)
        got_rows = run.env.lake.scan(rollup_table(type_), day=day).read_all().to_pylist()
        got = {(r["device_id"], r["event_kind"], r["bucket_start"]): r for r in got_rows}
        assert len(got) == len(got_rows)  # one row per device, kind and bucket
        assert set(got) == set(want)
        for key, agg in want.items():
            for column, value in agg.items():
                assert _close(got[key][column], value), (type_, day, key, column)
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        assert all(start <= k[2] < start + timedelta(days=1) for k in got)
        assert sum(r["rows"] for r in got_rows) == len(compacted)


def test_a_day_is_built_once_per_compaction(run: Run) -> None:
    type_, day = sorted(verified_keys(run))[0]
    compact_day(run.env, type_, day)
    first = build_rollup(run.env, type_, day)
    assert first.status is RollupStatus.BUILT and first.rows > 0
    table = rollup_table(type_)
    snapshots = len(run.env.lake.snapshots(table))
    again = build_rollup(run.env, type_, day)
    assert again.status is RollupStatus.SKIPPED and again.from_build == first.from_build
    assert len(run.env.lake.snapshots(table)) == snapshots
    forced = build_rollup(run.env, type_, day, force=True)
    assert forced.status is RollupStatus.BUILT and forced.rows == first.rows
    assert len(run.env.lake.snapshots(table)) == snapshots + 1
    # A new compaction of the day makes its rollup stale: built again without force.
    recompacted = compact_day(run.env, type_, day)
    rebuilt = build_rollup(run.env, type_, day)
    assert rebuilt.status is RollupStatus.BUILT and rebuilt.from_build == recompacted.build


def test_a_day_never_compacted_is_reported_not_built(env: Env) -> None:
    result = build_rollup(env, "bridge", "2025-11-24")
    assert result.status is RollupStatus.NOT_COMPACTED and result.rows == 0
    assert env.lake.list_tables() == []


def test_bad_inputs_are_refused(env: Env) -> None:
    with pytest.raises(ConfigError, match="unknown type"):
        build_rollup(env, "toaster", "2025-11-24")
    with pytest.raises(ConfigError, match="not a day"):
        build_rollup(env, "lock", "2025-13-01")
