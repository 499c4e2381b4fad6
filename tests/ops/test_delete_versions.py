"""`sluice delete` on a versioned bucket: a plain delete keeps the history and says so,
`--all-versions` removes every version and delete marker, and only of files that can be rebuilt.

The history is checked with the bucket's own ListObjectVersions, not through the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.config import EnvConfig
from sluice.env import Env
from sluice.layout import ObjectUri, source_hash, verified_key
from sluice.ops.delete import delete
from sluice.process.processor import process_object
from tests.aws.conftest import aws_config, aws_env, write_toml  # noqa: F401 (fixtures)
from tests.conftest import deny_deletes
from tests.ops.test_delete import SOURCE_A, SOURCE_B, build, cli, failed_lines, verified

pytestmark = pytest.mark.aws

History = list[tuple[str, str, bool]]  # (key, version id, delete marker)


def history(env: Env, prefix: str = "telemetry_flat/") -> History:
    client = env.aws.client("s3") if env.aws else None
    assert client is not None
    answer = client.list_object_versions(Bucket=env.config.buckets.verified, Prefix=prefix)
    versions = [(v["Key"], v["VersionId"], False) for v in answer.get("Versions", [])]
    markers = [(m["Key"], m["VersionId"], True) for m in answer.get("DeleteMarkers", [])]
    return sorted(versions + markers)


@pytest.fixture
def lake(
    aws_env: Env,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Env, ObjectUri]]:
    """A versioned verified bucket: every file of sources A and B written twice (two
    versions), and B's lock file deleted since (a delete marker over its versions). Yields the
    environment and B."""
    monkeypatch.chdir(tmp_path)
    env = aws_env
    client = env.aws.client("s3") if env.aws else None
    assert client is not None
    bucket = env.config.buckets.verified
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for uri in (build(env, SOURCE_A, "a"), b := build(env, SOURCE_B, "b")):
        process_object(env, uri, force=True)
    env.store.delete_batch(bucket, [verified_key(str(b), "lock", "2025-11-24", "21")])
    yield env, b
    client.delete_bucket_policy(Bucket=bucket)


def lock(entries: History) -> History:
    return [e for e in entries if "type=lock/" in e[0]]


def test_plain_delete_keeps_the_history_and_says_so(
    lake: tuple[Env, ObjectUri],
    aws_config: EnvConfig,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, _ = lake
    before = history(env)
    config = write_toml(tmp_path / "sluice.toml", aws_config)
    code, out, _ = cli(capsys, "--config", str(config), "--env", "moto", "delete", "--type", "lock")
    assert code == 0
    text = " ".join(out.split())
    assert "delete markers only" in text and "--all-versions" in text
    assert not [k for k in verified(env) if "type=lock" in k]
    after = history(env)
    assert set(before) < set(after)  # every version stays; delete markers were added
    assert len(lock(after)) == len(lock(before)) + 3  # one marker per lock file still current
    code, out, _ = cli(
        capsys, "--config", str(config), "--env", "moto", "delete", "--type", "lock", "--json"
    )
    shown = json.loads(out)
    assert shown["versioned"] and not shown["all_versions"] and "--all-versions" in shown["history"]


def test_all_versions_dry_run_counts_then_deletes_every_version(
    lake: tuple[Env, ObjectUri],
) -> None:
    env, _ = lake
    before = history(env)
    dry = delete(env, types=["lock"], all_versions=True, dry_run=True)
    assert dry.dry_run and dry.versioned and dry.history is None
    assert dry.versions == len([e for e in lock(before) if not e[2]]) == 8
    assert dry.delete_markers == len([e for e in lock(before) if e[2]]) == 1
    assert dry.listed == dry.would_delete == 9 and history(env) == before

    # Batches of 3: each key's versions and marker stay together.
    done = delete(env, types=["lock"], all_versions=True, batch_size=3)
    assert done.ok and done.deleted == 9 and (done.versions, done.delete_markers) == (8, 1)
    assert history(env) == [e for e in before if e not in lock(before)]


def test_failed_versions_go_to_a_file_that_from_file_finishes(
    lake: tuple[Env, ObjectUri],
    aws_config: EnvConfig,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env, _ = lake
    client: Any = env.aws.client("s3") if env.aws else None
    bucket = env.config.buckets.verified
    locked = max(k for k, _, _ in lock(history(env)))  # A's, without a delete marker
    deny_deletes(client, bucket, locked)
    config = write_toml(tmp_path / "sluice.toml", aws_config)
    base = ["--config", str(config), "--env", "moto", "delete"]
    code, _, err = cli(
        capsys, *base, "--type", "lock", "--all-versions", "--failed-keys", "f.jsonl"
    )
    assert code == 1 and "--from-file f.jsonl --all-versions" in err
    lines = failed_lines("f.jsonl")
    assert {(e["key"], e["version_id"], e["delete_marker"]) for e in lines} == set(
        lock(history(env))
    )
    assert len(lines) == 2 and all(e["error"].startswith("AccessDenied") for e in lines)

    code, _, err = cli(capsys, *base, "--from-file", "f.jsonl")
    assert code == 1 and "names versions" in err and "--all-versions" in err
    client.delete_bucket_policy(Bucket=bucket)
    code, out, _ = cli(capsys, *base, "--from-file", "f.jsonl", "--all-versions", "--json")
    assert code == 0 and json.loads(out)["deleted"] == 2
    assert lock(history(env)) == []


def test_all_versions_refuses_every_version_of_a_file_whose_source_is_gone(
    lake: tuple[Env, ObjectUri],
) -> None:
    env, gone = lake
    b_lock = [e for e in lock(history(env)) if e[0].endswith(f"/{source_hash(str(gone))}.parquet")]
    assert len(b_lock) == 3  # two versions and the delete marker
    env.store.delete_batch(gone.bucket, [gone.key])
    result = delete(env, types=["lock"], all_versions=True, batch_size=3)
    assert result.refused == 3 and result.deleted == 6 and not result.ok
    assert result.missing_sources == [str(gone)]
    assert lock(history(env)) == b_lock  # the marker stays with the versions it hides
    lines = failed_lines(result.failed_keys_file)
    assert {(e["key"], e["version_id"], e["delete_marker"]) for e in lines} == set(b_lock)
    assert all(str(gone) in e["error"] for e in lines)
