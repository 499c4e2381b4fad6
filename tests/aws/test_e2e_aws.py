"""End to end on the AWS backends (moto server): the `sluice` CLI drives generate → ingest →
worker → query, with the same assertions as the embedded end-to-end test."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.layout import parse_uri, parse_verified_key
from sluice.messages import redrive_raw_file
from sluice.process.worker import run_worker
from tests.aws.conftest import write_toml

pytestmark = [pytest.mark.aws, pytest.mark.e2e]


def sluice(config: Path, *args: str) -> Any:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluice.cli",
            "--config",
            str(config),
            "--env",
            "moto",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def verified_state(env: Env) -> dict[str, int]:
    bucket = env.config.buckets.verified
    state = {}
    for info in env.store.list(bucket):
        with env.store.open(bucket, info.key) as f:
            state[info.key] = pq.read_metadata(io.BytesIO(f.read())).num_rows
    return state


def quarantine_codes(env: Env) -> Counter[str]:
    bucket = env.config.buckets.quarantine
    codes: Counter[str] = Counter()
    for info in env.store.list(bucket):
        with env.store.open(bucket, info.key) as f:
            codes.update(
                json.loads(x)["reason_code"] for x in gzip.decompress(f.read()).splitlines()
            )
    return codes


def test_cli_pipeline_on_aws_backends(aws_config: EnvConfig, tmp_path: Path) -> None:
    config = write_toml(tmp_path / "sluice.toml", aws_config)
    setup = sluice(config, "setup")
    assert setup["backend"] == "aws"
    data = tmp_path / "t.ndjson"
    expected = sluice(
        config,
        "generate",
        "-o",
        str(data),
        "--events",
        "400",
        "--days",
        "1",
        "--bad-fraction",
        "0.05",
    )
    ingested = sluice(config, "ingest", str(data), "--max-object-mb", "0.05")
    assert ingested["lines"] == expected["lines"] and len(ingested["objects"]) >= 3
    stats = sluice(config, "worker", "--until-idle")
    assert stats["rows"] == sum(expected["rows"].values())
    assert stats["quarantined_lines"] == sum(expected["bad_lines"].values())
    assert stats["dead_lettered"] == 0
    for table, rows in expected["rows"].items():
        (got,) = sluice(config, "query", f"SELECT count(*) AS n FROM {table}")
        assert got["n"] == rows
    # No pipeline duplicates: every (source_ref, line, ordinal) once.
    (dupes,) = sluice(
        config,
        "query",
        "SELECT count(*) - count(DISTINCT (envelope__source_ref, envelope__line, "
        "envelope__ordinal)) AS n FROM telemetry_lock_flat",
    )
    assert dupes["n"] == 0

    env = open_env(aws_config)
    assert quarantine_codes(env) == Counter(expected_codes(expected))
    for key in verified_state(env):
        parsed = parse_verified_key(key)
        assert parsed is not None

    # Replay: every object redriven through the queue leaves the lake exactly as it was.
    before = verified_state(env)
    objects = [parse_uri(u) for u in ingested["objects"]]
    for uri in objects:
        message = redrive_raw_file(uri, str(uuid.uuid4()))
        env.processing_queue.send(message.body, message.attributes)
    replay = run_worker(env, until_idle=True)
    assert replay.completed == len(objects)
    assert verified_state(env) == before
    counts = env.processing_dlq.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)


def expected_codes(generated: dict[str, Any]) -> dict[str, int]:
    from sluice.generate import QUARANTINE_CODES

    codes: Counter[str] = Counter()
    for kind, n in generated["bad_lines"].items():
        codes[QUARANTINE_CODES[kind]] += n
    return dict(codes)
