"""`sluice backfill` on the AWS backends (S3 run files, Glue partitions) on a moto server: an
emptied Glue table registered again by plan + run, with one chunk failing and rerun."""

from __future__ import annotations

import pytest

from sluice.env import Env
from sluice.ops.backfill import plan_partitions, run_backfill, run_status
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.ops.test_backfill import (
    DAYS,
    LOCK,
    FaultyCatalog,
    build_lake,
    empty_catalog,
    files_partitions,
    registered,
    with_catalog,
)

pytestmark = pytest.mark.aws


def test_partitions_backfill_on_aws(aws_env: Env) -> None:  # noqa: F811
    build_lake(aws_env, types=("lock",))
    empty_catalog(aws_env)
    plan = plan_partitions(aws_env, LOCK, chunk_size=6)
    assert (plan.items, plan.total_chunks) == (18, 3)
    assert plan.location.startswith(f"s3://{aws_env.config.buckets.lake}/backfill/partitions/")

    faulty = FaultyCatalog(aws_env.catalog, fail_day=DAYS[2])
    result = run_backfill(with_catalog(aws_env, faulty), plan.run_id, max_concurrency=3)
    assert list(result.failed) == ["chunk-00002"]
    assert run_status(aws_env, plan.run_id).failed_chunk_keys == ["chunk-00002"]

    rerun = run_backfill(aws_env, plan.run_id, failed_only=True)
    assert rerun.selected == ["chunk-00002"] and rerun.ok
    assert run_status(aws_env, plan.run_id).done
    assert registered(aws_env, LOCK) == files_partitions(aws_env, LOCK)
