"""Repair and reconcile on the AWS backends (S3, Glue, DynamoDB, SQS on a moto server).

Sized small: moto answers about 100 requests a second.
"""

from __future__ import annotations

import pytest

from sluice.backends.catalog.base import Partition
from sluice.catalog.reconcile import reconcile
from sluice.catalog.repair import repair
from sluice.env import Env
from sluice.process.worker import run_worker
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.catalog.conftest import LOCK, NOW, build_lake, part, partitions

pytestmark = pytest.mark.aws


def test_repair_adds_missing_and_drops_empty_partitions_in_glue(aws_env: Env) -> None:  # noqa: F811
    build_lake(aws_env)
    good = partitions(aws_env, LOCK)
    aws_env.catalog.drop_partitions(LOCK, [part(good[0])])
    # More than one BatchDeletePartition (25 a call) of partitions nobody wrote a file into.
    empty = [Partition(("2024-02-01", f"{h:02d}")) for h in range(24)]
    empty += [Partition(("2024-02-02", f"{h:02d}")) for h in range(6)]
    aws_env.catalog.add_partitions(LOCK, empty)
    before = partitions(aws_env, LOCK)

    dry = repair(aws_env, table=LOCK, dry_run=True)
    (plan,) = dry.tables
    assert plan.to_add == [good[0]] and len(plan.to_drop) == 30
    assert partitions(aws_env, LOCK) == before

    done = repair(aws_env)
    (lock,) = [t for t in done.tables if t.table == LOCK]
    assert (lock.added, lock.dropped) == (1, 30)
    assert partitions(aws_env, LOCK) == good
    assert repair(aws_env).planned == 0


def test_reconcile_rebuilds_a_deleted_file_and_reports_a_copy(aws_env: Env) -> None:  # noqa: F811
    lake = build_lake(aws_env)
    bucket = aws_env.config.buckets.verified
    copy = lake.lock_21.rsplit("/", 1)[0] + "/copy.parquet"
    aws_env.store.copy(bucket, lake.lock_21, bucket, copy)
    aws_env.store.delete_batch(bucket, [lake.lock_23])
    aws_env.catalog.drop_partitions(LOCK, [Partition(("2025-11-24", "21"))])

    found = reconcile(aws_env, now=NOW)
    assert found.missing_outputs == [f"s3://{bucket}/{lake.lock_23}"]
    assert found.redriven == [str(lake.sources[1])]
    assert found.orphan_files == [f"s3://{bucket}/{copy}"]
    assert found.partitions_added == {LOCK: 1}

    stats = run_worker(aws_env, until_idle=True)
    assert stats.completed == 1
    assert aws_env.store.exists(bucket, lake.lock_23)
    again = reconcile(aws_env, now=NOW)
    assert not (again.missing_outputs or again.redriven or again.partitions_added)
    assert again.orphan_files == [f"s3://{bucket}/{copy}"]  # reported until someone removes it
