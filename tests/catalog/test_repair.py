"""`repair`: break the catalog on purpose and see repair find and fix it (embedded backends)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sluice.backends.catalog.base import Partition
from sluice.catalog.repair import RepairResult, repair
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.query import run_query
from tests.catalog.conftest import BRIDGE, LOCK, build_lake, part, partitions

LAKE_LOCK = ["day=2025-11-24/hour=21", "day=2025-11-24/hour=23"]


def plan(result: RepairResult, table: str) -> tuple[list[str], list[str]]:
    (t,) = [t for t in result.tables if t.table == table]
    return t.to_add, t.to_drop


def lock_rows(env: Env) -> int:
    rows = run_query(env, f"SELECT count(*) AS n FROM {LOCK}").to_pylist()
    return int(rows[0]["n"])


def test_a_lake_built_by_the_pipeline_needs_no_repair(env: Env) -> None:
    build_lake(env)
    result = repair(env)
    assert result.planned == 0 and result.stray_count == 0
    assert [t.table for t in result.tables] == [LOCK, BRIDGE, "telemetry_video_doorbell_flat"]
    (lock,) = [t for t in result.tables if t.table == LOCK]
    assert (lock.parquet_files, lock.registered, lock.with_files) == (3, 2, 2)


def test_partition_removed_from_the_catalog_is_added_back(env: Env) -> None:
    build_lake(env)
    rows = lock_rows(env)
    env.catalog.drop_partitions(LOCK, [part(LAKE_LOCK[0])])
    assert lock_rows(env) < rows  # the query engine reads registered partitions only

    dry = repair(env, dry_run=True)
    assert dry.dry_run and plan(dry, LOCK) == ([LAKE_LOCK[0]], [])
    assert partitions(env, LOCK) == LAKE_LOCK[1:]  # a dry run changes nothing

    done = repair(env)
    assert plan(done, LOCK) == ([LAKE_LOCK[0]], [])
    assert [t.added for t in done.tables] == [1, 0, 0]
    assert partitions(env, LOCK) == LAKE_LOCK
    assert lock_rows(env) == rows
    assert repair(env).planned == 0  # idempotent


def test_empty_partitions_are_dropped(env: Env) -> None:
    lake = build_lake(env)
    # Left behind: one registered by hand, one whose only file was deleted by hand.
    env.catalog.add_partitions(LOCK, [Partition(("2025-01-01", "00"))])
    env.store.delete_batch(env.config.buckets.verified, [lake.lock_23])
    before = partitions(env, LOCK)

    dry = repair(env, table=LOCK, dry_run=True)
    assert plan(dry, LOCK) == ([], ["day=2025-01-01/hour=00", "day=2025-11-24/hour=23"])
    assert partitions(env, LOCK) == before

    done = repair(env, table=LOCK)
    assert [t.dropped for t in done.tables] == [2]
    assert partitions(env, LOCK) == ["day=2025-11-24/hour=21"]
    assert repair(env).planned == 0


def test_many_partitions_both_ways(env: Env) -> None:
    build_lake(env)
    empty = [Partition((f"2024-01-{1 + i // 24:02d}", f"{i % 24:02d}")) for i in range(250)]
    env.catalog.add_partitions(BRIDGE, empty)
    env.catalog.drop_partitions(LOCK, [part(s) for s in LAKE_LOCK])
    done = repair(env)
    assert plan(done, LOCK) == (LAKE_LOCK, [])
    assert len(plan(done, BRIDGE)[1]) == 250
    assert partitions(env, BRIDGE) == ["day=2025-11-24/hour=22"]
    assert partitions(env, LOCK) == LAKE_LOCK


def test_protected_environment_adds_but_refuses_drops_without_yes(env: Env) -> None:
    build_lake(env)
    prod = replace(env, config=replace(env.config, protected=True))
    env.catalog.add_partitions(LOCK, [Partition(("2025-01-01", "00"))])
    env.catalog.drop_partitions(LOCK, [part(LAKE_LOCK[0])])

    refused = repair(prod)
    assert refused.drops_refused
    assert plan(refused, LOCK) == ([LAKE_LOCK[0]], ["day=2025-01-01/hour=00"])
    assert partitions(env, LOCK) == ["day=2025-01-01/hour=00", *LAKE_LOCK]  # added, not dropped

    assert not repair(prod, dry_run=True).drops_refused  # a dry run drops nothing anyway
    done = repair(prod, yes=True)
    assert not done.drops_refused and partitions(env, LOCK) == LAKE_LOCK


def test_stray_keys_are_reported_not_registered(env: Env) -> None:
    build_lake(env)
    bucket = env.config.buckets.verified
    strays = [
        "telemetry_flat/type=lock/README.md",
        "telemetry_flat/type=lock/day=2025-11-24/no-hour.parquet",
        "telemetry_flat/type=lock/day=2025-11-24/hour=21/notes.txt",
        "telemetry_flat/type=lock/day=2030-01-01/hour=00/export.csv",
        "telemetry_flat/type=lock/day=tomorrow/hour=00/x.parquet",
        "telemetry_flat/type=lock/day=2025-11-24/hour=7/x.parquet",
        "telemetry_flat/type=lock/day=2025-11-24/hour=21/deeper/x.parquet",
    ]
    for key in strays:
        env.store.put(bucket, key, b"not a verified file")
    result = repair(env)
    (lock,) = [t for t in result.tables if t.table == LOCK]
    assert lock.stray_count == len(strays)
    assert sorted(lock.stray_keys) == sorted(f"s3://{bucket}/{k}" for k in strays)
    assert result.planned == 0  # a partition holding only strays holds no Parquet
    assert partitions(env, LOCK) == LAKE_LOCK


@pytest.mark.parametrize(
    "table",
    [
        "telemetry_nope_flat",
        "../../etc/passwd",
        "telemetry_lock_flat/../telemetry_bridge_flat",
        "telemetry_lock_flat'; DROP TABLE partitions; --",
        "telemetry_lock_flat\x00",
        "",
        "int_lock_compacted_daily",
    ],
)
def test_unknown_or_hostile_table_is_refused(env: Env, table: str) -> None:
    build_lake(env)
    env.catalog.drop_partitions(LOCK, [part(LAKE_LOCK[0])])
    with pytest.raises(ConfigError, match="unknown table") as caught:
        repair(env, table=table)
    assert caught.value.hint is not None and LOCK in caught.value.hint
    assert partitions(env, LOCK) == LAKE_LOCK[1:]  # nothing touched


def test_table_missing_from_the_catalog_points_to_setup(env: Env) -> None:
    env.catalog.drop_table(BRIDGE)
    with pytest.raises(ConfigError, match="not in the catalog") as caught:
        repair(env, table=BRIDGE)
    assert caught.value.hint is not None and "setup" in caught.value.hint


def test_progress_is_reported_per_table(env: Env) -> None:
    build_lake(env)
    seen: list[tuple[str, int]] = []
    repair(env, on_progress=lambda what, n: seen.append((what, n)))
    assert ("listing telemetry_lock_flat", 3) in seen
    assert ("listing telemetry_bridge_flat", 1) in seen


def test_a_partition_filled_while_repair_listed_is_not_dropped(env: Env) -> None:
    lake = build_lake(env)
    bucket = env.config.buckets.verified
    env.catalog.add_partitions(LOCK, [Partition(("2025-01-01", "00"))])
    late = "telemetry_flat/type=lock/day=2025-01-01/hour=00/0123456789abcdef.parquet"

    def worker_publishes(what: str, listed: int) -> None:
        # Called when the listing of the table ends: a worker writes into the empty partition.
        if what == f"listing {LOCK}":
            env.store.copy(bucket, lake.lock_21, bucket, late)

    result = repair(env, table=LOCK, on_progress=worker_publishes)
    (lock,) = result.tables
    assert lock.to_drop == ["day=2025-01-01/hour=00"]
    assert lock.kept == ["day=2025-01-01/hour=00"] and lock.dropped == 0
    assert "day=2025-01-01/hour=00" in partitions(env, LOCK)
