from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.layout import ObjectUri, raw_key

ARRIVED = datetime(2025, 11, 25, 0, 0, 5, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    config = replace(
        EnvConfig(data_dir=tmp_path / "data"), visibility_timeout_seconds=2, lease_seconds=2
    )
    yield open_env(config)


def make_event(
    event_id: str = "e-1",
    type_: str = "lock",
    occurred_at: str = "2025-11-24T21:09:35.120Z",
    assertions: int = 2,
    **payload: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = dict(payload)
    if assertions:
        body["assertions"] = [
            {"component_name": f"c{i}", "passed": i % 2 == 0} for i in range(assertions)
        ]
    return {
        "envelope": {
            "event_id": event_id,
            "type": type_,
            "event_kind": "assertion",
            "device_id": "dev-1",
            "occurred_at": occurred_at,
            "schema_version": 1,
        },
        "payload": body,
    }


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def put_raw(
    env: Env, lines: list[bytes], *, key: str | None = None, raw: bytes | None = None
) -> ObjectUri:
    """Store a raw object (gzip JSONL of `lines`, or exactly `raw`) under the raw layout."""
    uri = ObjectUri(env.config.buckets.raw, key or raw_key(ARRIVED))
    data = raw if raw is not None else gzip.compress(b"".join(x + b"\n" for x in lines))
    env.store.put(uri.bucket, uri.key, data)
    return uri


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the whole test session (start it only when a test needs it)."""
    from tests.moto_server import aws_test_environment, moto_server

    saved = {k: os.environ.get(k) for k in aws_test_environment()}
    os.environ.update(aws_test_environment())
    try:
        with moto_server() as url:
            yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def aws_clients(moto_endpoint: str) -> object:
    """The project's own client factory, pointed at the moto server."""
    from sluice.backends.aws import AwsClients
    from tests.moto_server import REGION

    return AwsClients(
        EnvConfig(name="moto", backend="aws", region=REGION, endpoint_url=moto_endpoint)
    )


def deny_deletes(s3_client: Any, bucket: str, keys: str) -> None:
    """A bucket policy that refuses deleting the keys matching `keys` (a `*` pattern), every
    version included: S3 then answers DeleteObjects with per-key errors for them."""
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": f"arn:aws:s3:::{bucket}/{keys}",
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    s3_client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
