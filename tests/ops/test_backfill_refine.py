"""`sluice backfill` for the refined 15-minute rollups: built for a range of days (compacting
the days never compacted), equal to a DuckDB aggregation written here over the verified
Parquet files, skipped when already built, rebuilt with force."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from sluice.compact.state import rollup_table
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.ops.backfill import ChunkStatus, plan_refine, run_backfill
from sluice.ops.backfill.runs import open_run
from tests.e2e.conftest import verified_files
from tests.ops.test_backfill import DAYS, build_lake

START, END = "2025-11-21", DAYS[-1]  # the 21st has no data


def direct_rollup(env: Env, day: str) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """Per device, event kind and UTC quarter hour (epoch seconds of its start): rows, events,
    passed and failed assertions, battery min/max/avg — by DuckDB over the lock day's verified
    files. The lake holds no resent event, so the verified rows are the deduplicated rows."""
    paths = [
        str(path)
        for key, path in verified_files(env.config).items()
        if key.startswith(f"telemetry_flat/type=lock/day={day}/")
    ]
    rows = duckdb.execute(
        """
        SELECT envelope__device_id, envelope__event_kind,
               CAST(floor(epoch(envelope__occurred_at) / 900) * 900 AS BIGINT) AS bucket,
               count(*), count(*) FILTER (WHERE envelope__ordinal = 0),
               count(*) FILTER (WHERE payload__assertion__passed),
               count(*) FILTER (WHERE NOT payload__assertion__passed),
               min(payload__battery_pct), max(payload__battery_pct),
               avg(payload__battery_pct) FILTER (WHERE envelope__ordinal = 0)
        FROM read_parquet($paths)
        GROUP BY ALL
        """,
        {"paths": paths},
    ).fetchall()
    return {(r[0], r[1], int(r[2])): tuple(r[3:]) for r in rows}


def built_rollup(env: Env, day: str) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    out = {}
    for r in env.lake.scan(rollup_table("lock"), day=day).read_all().to_pylist():
        start: datetime = r["bucket_start"]
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        out[(r["device_id"], r["event_kind"], int(start.timestamp()))] = (
            r["rows"], r["events"], r["assertions_passed"], r["assertions_failed"],
            r["battery_pct_min"], r["battery_pct_max"], r["battery_pct_avg"],
        )  # fmt: skip
    return out


def unit_statuses(env: Env, run_id: str) -> dict[tuple[str, str], str]:
    store, _ = open_run(env, run_id)
    out = {}
    for result in store.results():
        assert result.status is ChunkStatus.SUCCEEDED, result.error
        for unit in result.detail["units"]:
            out[(unit["type"], unit["day"])] = unit["status"]
    return out


def test_refine_backfill_builds_rollups_equal_to_a_direct_computation(env: Env) -> None:
    build_lake(env, types=("lock",))
    plan = plan_refine(env, START, END, chunk_size=3, types=["lock"])
    assert (plan.total_chunks, plan.items) == (2, 4)
    result = run_backfill(env, plan.run_id, max_concurrency=2)
    assert result.ok and result.status is not None and result.status.done
    assert result.tally == {"empty": 1, "built": 3}
    assert unit_statuses(env, plan.run_id) == {
        ("lock", START): "empty",
        **{("lock", day): "built" for day in DAYS},
    }
    for day in DAYS:
        want = direct_rollup(env, day)
        assert len(want) == 18  # 6 hours x 3 quarter hours (one device in each)
        assert built_rollup(env, day) == want

    # A new plan over the same days skips what is built; --force builds again.
    again = plan_refine(env, DAYS[0], DAYS[0], types=["lock"])
    run_backfill(env, again.run_id)
    assert unit_statuses(env, again.run_id) == {("lock", DAYS[0]): "skipped"}
    run_backfill(env, again.run_id, chunk_keys=["chunk-00000"], force=True)
    assert unit_statuses(env, again.run_id) == {("lock", DAYS[0]): "built"}
    assert built_rollup(env, DAYS[0]) == direct_rollup(env, DAYS[0])


def test_refine_plan_bad_inputs(env: Env) -> None:
    with pytest.raises(ConfigError, match="not a day"):
        plan_refine(env, "2025-13-01", END)
    with pytest.raises(ConfigError, match="not a day"):
        plan_refine(env, START, "yesterday")
    with pytest.raises(ConfigError, match="before"):
        plan_refine(env, END, START)
    with pytest.raises(ConfigError, match="chunk-size"):
        plan_refine(env, START, END, chunk_size=0)
    with pytest.raises(ConfigError, match="unknown type"):
        plan_refine(env, START, END, types=["toaster"])
