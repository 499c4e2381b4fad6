"""`sluice redrive` on the AWS backends (S3, SQS, DynamoDB, Glue; DuckDB over S3) on a moto
server: a day redriven in place with an orphan copy beside it, followed to its end."""

from __future__ import annotations

import pytest

from sluice.env import Env
from sluice.ops.redrive import MissingSources, RedriveRequest, Target, redrive
from sluice.query import run_query
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.ops.test_redrive import DAY, FAST, background_worker, build_lake, copy_as_orphan

pytestmark = pytest.mark.aws

IDENTITY_SQL = f"""
SELECT count(*) AS n_rows,
       count(DISTINCT envelope__source_ref || '#' || CAST(envelope__line AS VARCHAR) || '#'
             || CAST(envelope__ordinal AS VARCHAR)) AS n_identities
FROM telemetry_lock_flat WHERE day = '{DAY}'
"""


def lock_day(env: Env) -> tuple[int, int]:
    row = run_query(env, IDENTITY_SQL).to_pylist()[0]
    return int(row["n_rows"]), int(row["n_identities"])


def test_a_day_redrive_on_aws_replaces_in_place_and_removes_the_orphan(
    aws_env: Env,  # noqa: F811
) -> None:
    uris = build_lake(aws_env, sources=2)
    rows, identities = lock_day(aws_env)
    assert rows == identities > 0
    orphan = copy_as_orphan(aws_env)
    doubled, same = lock_day(aws_env)
    assert doubled > rows and same == identities  # the copy's rows are pipeline duplicates

    request = RedriveRequest(Target.of(source_ref_day=DAY, type_="lock"), wait=True, follow=FAST)
    with background_worker(aws_env.config):
        result = redrive(aws_env, request)

    assert result.sources == 2 and result.orphans == 1 and result.sending.sent == 2
    assert result.follow is not None and result.follow.complete
    assert result.finish is not None and result.finish.orphans_removed == 1
    assert not result.failed, result.finish.verify
    bucket, key = orphan[5:].split("/", 1)
    assert not aws_env.store.exists(bucket, key)
    assert lock_day(aws_env) == (rows, identities)
    run_files = [i.key for i in aws_env.store.list(aws_env.config.buckets.lake, "redrive/runs/")]
    assert f"redrive/runs/{result.run_id}/manifest.json" in run_files

    # Promise 1 on S3: a removed raw object refuses the run before anything happens.
    aws_env.store.delete_batch(uris[0].bucket, [uris[0].key])
    with pytest.raises(MissingSources):
        redrive(aws_env, RedriveRequest(Target.of(source_ref_day=DAY, type_="lock")))
    assert aws_env.processing_queue.counts().visible == 0
