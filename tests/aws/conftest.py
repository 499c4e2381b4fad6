from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import Buckets, EnvConfig, QueueNames
from sluice.env import Env, open_env
from tests.moto_server import REGION


@pytest.fixture
def aws_config(moto_endpoint: str) -> EnvConfig:
    """An AWS environment of its own on the moto server (unique buckets, queues, tables)."""
    tag = uuid.uuid4().hex[:8]
    return EnvConfig(
        name="moto",
        backend="aws",
        region=REGION,
        endpoint_url=moto_endpoint,
        buckets=Buckets(f"raw-{tag}", f"verified-{tag}", f"quarantine-{tag}", f"lake-{tag}"),
        queues=QueueNames(f"processing-{tag}", f"processing-dlq-{tag}"),
        ledger_table=f"ledger-{tag}",
        glue_database=f"sluice_{tag}",
        visibility_timeout_seconds=5,
        lease_seconds=5,
        max_receive_count=3,
        retention_seconds=3600,
        dlq_retention_seconds=7200,
    )


@pytest.fixture
def aws_env(aws_config: EnvConfig) -> Iterator[Env]:
    yield open_env(aws_config, setup=True)


def write_toml(path: Path, config: EnvConfig) -> Path:
    b, q = config.buckets, config.queues
    path.write_text(
        f"""[env.moto]
backend = "aws"
region = "{config.region}"
endpoint_url = "{config.endpoint_url}"
ledger_table = "{config.ledger_table}"
glue_database = "{config.glue_database}"
visibility_timeout_seconds = {config.visibility_timeout_seconds}
lease_seconds = {config.lease_seconds}
max_receive_count = {config.max_receive_count}
retention_seconds = {config.retention_seconds}
dlq_retention_seconds = {config.dlq_retention_seconds}

[env.moto.buckets]
raw = "{b.raw}"
verified = "{b.verified}"
quarantine = "{b.quarantine}"
lake = "{b.lake}"

[env.moto.queues]
processing = "{q.processing}"
processing_dlq = "{q.processing_dlq}"
"""
    )
    return path
