"""`sluice redrive` refuses what it cannot do safely: bad modes, URIs, flags and run ids."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.env import Env
from sluice.errors import ConfigError, ObjectNotFound
from sluice.layout import partition_prefix
from sluice.ops.redrive import Pacing, RedriveRequest, Target, redrive
from tests.ops.test_redrive import DAY, build_lake, day_request

# -- bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({}, "no mode given"),
        ({"s3_uri": "s3://raw/a.gz", "s3_prefix": "s3://raw/"}, "more than one mode"),
        ({"source_ref_day": DAY}, "needs --type"),
        ({"s3_uri": "s3://raw/a.gz", "type_": "lock"}, "--type goes with --source-ref-day"),
        ({"source_ref_day": "2025-13-01", "type_": "lock"}, "YYYY-MM-DD"),
        ({"source_ref_day": "20251124", "type_": "lock"}, "YYYY-MM-DD"),
        ({"source_ref_day": DAY, "type_": "thermostat"}, "unknown type 'thermostat'"),
    ],
)
def test_bad_modes_are_refused(flags: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Target.of(**flags)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"s3_uri": "raw/a.gz"}, "not an s3:// URI"),
        ({"s3_uri": "s3:///a.gz"}, "no bucket"),
        ({"s3_uri": "s3://raw/raw/json_telemetry/"}, "is a prefix"),
        ({"s3_uri": "s3://raw/a/../b.gz"}, "'..' segment"),
        ({"s3_uri": "s3://verified/telemetry_flat/x.parquet"}, "in the verified bucket"),
        ({"s3_prefix": "s3://Bad_Bucket/x"}, "invalid bucket name"),
        ({"parquet_uri": "s3://raw/raw/a.gz"}, "not one"),
        ({"parquet_uri": "s3://verified/telemetry_flat/type=lock/notes.txt"}, "not one"),
    ],
)
def test_bad_uris_are_refused(env: Env, flags: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        redrive(env, RedriveRequest(Target.of(**flags)))


def test_a_parquet_uri_that_does_not_exist_is_refused(env: Env) -> None:
    uri = f"s3://verified/{partition_prefix('lock', DAY, '21')}0123456789abcdef.parquet"
    with pytest.raises(ObjectNotFound):
        redrive(env, RedriveRequest(Target.of(parquet_uri=uri)))


def test_a_parquet_uri_that_is_not_parquet_is_refused(env: Env) -> None:
    key = f"{partition_prefix('lock', DAY, '21')}broken.parquet"
    env.store.put("verified", key, b"not parquet at all")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        redrive(env, RedriveRequest(Target.of(parquet_uri=f"s3://verified/{key}")))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"limit": -1}, "--limit must be at least 1"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"finish": True}, "--finish completes an earlier run"),
        ({"resume": "20251124T000000Z-abcdef"}, "not both"),
    ],
)
def test_bad_flags_are_refused(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        day_request(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rate": -5.0}, "--rate must be a positive"),
        ({"rate": 0.0}, "--rate must be a positive"),
        ({"max_queue_visible": 0}, "--max-queue-visible must be at least 1"),
    ],
)
def test_bad_pacing_is_refused(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Pacing(**kwargs)


@pytest.mark.parametrize("run_id", ["nope", "20251124T000000Z-abcdef"])
def test_an_unknown_run_is_refused_with_the_recent_ones(env: Env, run_id: str) -> None:
    build_lake(env, sources=1)
    known = redrive(env, day_request()).run_id
    with pytest.raises(ConfigError, match="no redrive run") as caught:
        redrive(env, RedriveRequest(resume=run_id))
    assert caught.value.hint == f"recent runs: {known}"


def test_a_day_without_data_is_nothing_to_redrive(env: Env) -> None:
    with pytest.raises(ConfigError, match="nothing to redrive"):
        redrive(env, day_request())
