"""`sluice dlq` on the AWS backends (SQS, S3, DynamoDB) on a moto server: the same scenario as
the embedded tests, and the CloudWatch embedded-metric-format lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.env import Env
from sluice.ops.dlq import list_messages, open_pair
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.ops.test_dlq import (
    check_no_message_lost,
    check_purge_and_restore,
    check_reading_leaves_the_queue_as_it_was,
    check_redrive_after_the_fix,
    poison,
)

pytestmark = pytest.mark.aws


def test_dlq_on_aws_reads_redrives_purges_and_restores(
    aws_env: Env,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    poisoned = poison(aws_env)
    check_reading_leaves_the_queue_as_it_was(aws_env, poisoned)
    emf = [json.loads(text) for text in capsys.readouterr().err.splitlines() if '"_aws"' in text]
    listed = next(record for record in emf if record["operation"] == "list")
    assert listed["dlq_listed"] == 4 and listed["environment"] == "moto"
    assert listed["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "sluice"
    assert not (aws_env.config.data_dir / "metrics").exists()  # no local file on AWS

    check_redrive_after_the_fix(aws_env, poisoned)
    check_purge_and_restore(aws_env, tmp_path)
    # The SQS queue, named by its URL as sluice.toml on AWS often holds it.
    url = aws_env.processing_dlq.url  # type: ignore[attr-defined]
    assert len(list_messages(aws_env, open_pair(aws_env, url)).messages) == 2


def test_on_aws_with_sends_failing_at_random_no_message_is_lost(
    aws_env: Env,  # noqa: F811
) -> None:
    check_no_message_lost(aws_env, total=12)
