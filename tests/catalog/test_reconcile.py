"""The reconciler: break the registry/store/catalog agreement and see it find and fix it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.catalog.reconcile import MAX_LOOKBACK_HOURS, ReconcileResult, reconcile
from sluice.env import Env
from sluice.errors import ConfigError, TerminalError
from sluice.layout import raw_key
from sluice.messages import MessageKind
from sluice.process.processor import process_object
from sluice.process.worker import run_worker
from tests.catalog.conftest import LOCK, NOW, build_lake, part, partitions
from tests.conftest import put_raw


def run(env: Env, *, dry_run: bool = False) -> ReconcileResult:
    return reconcile(env, now=NOW, dry_run=dry_run)


def queued(env: Env) -> list[dict[str, str]]:
    """The bodies waiting in the processing queue (made visible again at once)."""
    messages = env.processing_queue.receive(10, wait_seconds=0)
    for message in messages:
        env.processing_queue.change_visibility(message.receipt_handle, 0)
    return [json.loads(m.body) for m in messages]


def nothing_to_do(result: ReconcileResult) -> bool:
    return not (
        result.enqueued
        or result.partitions_added
        or result.missing_outputs
        or result.redriven
        or result.orphan_files
    )


def test_a_healthy_lake_has_nothing_to_reconcile(env: Env) -> None:
    build_lake(env)
    result = run(env)
    assert nothing_to_do(result)
    assert result.raw_objects_seen == 2
    assert result.outputs_checked == 5  # 4 verified files and 1 quarantine file
    assert queued(env) == []


def test_partition_removed_from_the_catalog_is_registered_again(env: Env) -> None:
    build_lake(env)
    before = partitions(env, LOCK)
    env.catalog.drop_partitions(LOCK, [part(before[0])])

    dry = run(env, dry_run=True)
    assert dry.partitions_added == {LOCK: 1}
    assert partitions(env, LOCK) == before[1:]

    assert run(env).partitions_added == {LOCK: 1}
    assert partitions(env, LOCK) == before
    assert nothing_to_do(run(env))


def test_copied_and_foreign_files_are_reported_as_orphans_not_deleted(env: Env) -> None:
    lake = build_lake(env)
    bucket = env.config.buckets.verified
    hour = lake.lock_21.rsplit("/", 1)[0]
    copy, foreign, junk = (f"{hour}/{n}.parquet" for n in ("copy-of-a", "other-tool", "junk"))
    env.store.copy(bucket, lake.lock_21, bucket, copy)  # a pipeline duplicate in the making
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": [1, 2]}), sink)
    env.store.put(bucket, foreign, sink.getvalue().to_pybytes())
    env.store.put(bucket, junk, b"not parquet at all")

    result = run(env)
    expected = sorted(f"s3://{bucket}/{k}" for k in (copy, foreign, junk))
    assert sorted(result.orphan_files) == expected
    assert not (result.missing_outputs or result.redriven or result.enqueued)
    assert env.store.exists(bucket, copy)  # reported, never deleted by the reconciler
    again = run(env)
    assert sorted(again.orphan_files) == expected and queued(env) == []


def test_deleted_verified_file_is_rebuilt_from_its_source(env: Env) -> None:
    lake = build_lake(env)
    bucket = env.config.buckets.verified
    original = env.store.open(bucket, lake.lock_21).read()
    env.store.delete_batch(bucket, [lake.lock_21])
    source = str(lake.sources[0])

    dry = run(env, dry_run=True)
    assert dry.missing_outputs == [f"s3://{bucket}/{lake.lock_21}"]
    assert dry.redriven == [source]
    assert queued(env) == []  # a dry run sends nothing

    first = run(env)
    second = run(env)  # before any worker ran: asks again, with the same redrive id
    assert first.redriven == second.redriven == [source]
    bodies = queued(env)
    assert [b["kind"] for b in bodies] == [MessageKind.REDRIVE_RAW_FILE.value] * 2
    assert bodies[0]["redrive_id"] == bodies[1]["redrive_id"]
    assert first.partitions_added == {}  # the partition still holds the other source's file

    stats = run_worker(env, until_idle=True)
    assert (stats.completed, stats.skipped) == (1, 1)  # rebuilt once, the repeat skipped
    rebuilt = env.store.open(bucket, lake.lock_21).read()
    assert pq.read_table(pa.BufferReader(rebuilt)).equals(pq.read_table(pa.BufferReader(original)))
    assert nothing_to_do(run(env))
    assert queued(env) == []


def test_deleted_quarantine_file_is_rebuilt_too(env: Env) -> None:
    lake = build_lake(env)
    record = env.ledger.get(lake.sources[0].bucket, lake.sources[0].key)
    assert record is not None
    (quarantine,) = [o for o in record.outputs if o.bucket == env.config.buckets.quarantine]
    env.store.delete_batch(quarantine.bucket, [quarantine.key])
    assert run(env).redriven == [str(lake.sources[0])]
    run_worker(env, until_idle=True)
    assert env.store.exists(quarantine.bucket, quarantine.key)
    assert nothing_to_do(run(env))


def test_a_second_deletion_after_a_rebuild_is_rebuilt_again(env: Env) -> None:
    lake = build_lake(env)
    bucket = env.config.buckets.verified
    for _ in range(2):
        env.store.delete_batch(bucket, [lake.lock_23])
        assert run(env).redriven == [str(lake.sources[1])]
        run_worker(env, until_idle=True)
        assert env.store.exists(bucket, lake.lock_23)


def test_unprocessed_objects_are_enqueued_and_terminal_failures_left_to_the_dlq(
    env: Env,
) -> None:
    lost = put_raw(env, [b'{"lost": "notification"}'], key=raw_key(datetime.now(UTC)))
    corrupt = put_raw(env, [], key=raw_key(datetime.now(UTC)), raw=b"\x1f\x8b\x08\x00 nope")
    with pytest.raises(TerminalError):
        process_object(env, corrupt)
    result = reconcile(env, min_age=timedelta(0))
    assert result.enqueued == [str(lost)]
    assert result.failed_terminal == [str(corrupt)]  # its message went to the DLQ already
    assert [b["key"] for b in queued(env)] == [lost.key]


def test_young_objects_are_left_to_their_own_notification(env: Env) -> None:
    put_raw(env, [b"{}"], key=raw_key(datetime.now(UTC)))
    result = reconcile(env)
    assert result.raw_objects_seen == 1 and result.enqueued == []


@pytest.mark.parametrize("hours", [-1, MAX_LOOKBACK_HOURS + 1, 10**9])
def test_lookback_out_of_range_is_refused(env: Env, hours: int) -> None:
    with pytest.raises(ConfigError, match="lookback"):
        reconcile(env, lookback_hours=hours)


def test_objects_outside_the_window_are_not_looked_at(env: Env) -> None:
    lake = build_lake(env)
    env.store.delete_batch(env.config.buckets.verified, [lake.lock_21])
    late = reconcile(env, now=NOW + timedelta(hours=5), lookback_hours=3)
    assert late.raw_objects_seen == 0 and late.redriven == []
