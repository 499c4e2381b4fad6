"""`sluice delete`: exactly the targeted verified files go, and only what can be rebuilt."""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.backends.store.base import ObjectStore, VersionDeleteResult, VersionRef
from sluice.cli.app import Options, main
from sluice.env import Env
from sluice.errors import BackendBusy
from sluice.layout import VERIFIED_PREFIX, ObjectUri, raw_key, verified_key
from sluice.ops.delete import TAIL_BYTES, Backoff, Limiter, delete, read_source_ref
from sluice.process.processor import process_object
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.conftest import ARRIVED, line, make_event, put_raw

FAST = Backoff(base_seconds=0.001, max_seconds=0.01, restore_after=2)
# Where each source's events land: (type, event time). A: lock on two days, bridge; B: lock on
# the same hour as A (so a partition mixes sources), video_doorbell.
SOURCE_A = [
    ("lock", "2025-11-24T21:09:35Z"),
    ("lock", "2025-11-24T22:09:35Z"),
    ("lock", "2025-11-23T10:00:00Z"),
    ("bridge", "2025-11-24T21:30:00Z"),
]
SOURCE_B = [("lock", "2025-11-24T21:45:00Z"), ("video_doorbell", "2025-11-24T05:00:00Z")]


def build(env: Env, events: list[tuple[str, str]], tag: str) -> ObjectUri:
    lines = [
        line(make_event(f"{tag}-{i}", type_=t, occurred_at=at)) for i, (t, at) in enumerate(events)
    ]
    uri = put_raw(env, lines)
    process_object(env, uri)
    return uri


def verified(env: Env) -> set[str]:
    return {o.key for o in env.store.list(env.config.buckets.verified, VERIFIED_PREFIX)}


@pytest.fixture
def lake(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, ObjectUri]:
    monkeypatch.chdir(tmp_path)  # default failed-keys files land here
    build(env, SOURCE_A, "a")
    return env, build(env, SOURCE_B, "b")


@pytest.fixture
def wide(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """One source fanning out to 72 files (3 types x 24 hours): many small batches."""
    monkeypatch.chdir(tmp_path)
    events = [
        (t, f"2025-11-24T{h:02d}:05:00Z")
        for t in ("lock", "bridge", "video_doorbell")
        for h in range(24)
    ]
    build(env, events, "w")
    assert len(verified(env)) == 72
    return env


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, " ".join(err.split())


def failed_lines(path: str | None) -> list[dict[str, Any]]:
    assert path is not None
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


# What goes ---------------------------------------------------------------------------------


def test_delete_type_and_day_takes_exactly_that(lake: tuple[Env, ObjectUri]) -> None:
    env, _ = lake
    before = verified(env)
    target = {k for k in before if k.startswith("telemetry_flat/type=lock/day=2025-11-24/")}
    assert len(target) == 3  # hour 21 (both sources: one file each) and hour 22
    result = delete(env, types=["lock"], day="2025-11-24", workers=2, batch_size=1)
    assert result.ok and result.deleted == result.listed == 3
    assert verified(env) == before - target
    assert any("day=2025-11-23" in k for k in verified(env))  # the other day stays


def test_delete_prefix_and_all_types(lake: tuple[Env, ObjectUri]) -> None:
    env, b = lake
    before = verified(env)
    prefix = f"s3://{env.config.buckets.verified}/telemetry_flat/type=bridge/"
    assert delete(env, prefix=prefix).deleted == 1
    assert verified(env) == {k for k in before if "type=bridge" not in k}
    result = delete(env, types=["lock", "bridge", "video_doorbell", "otlp_logs"])
    assert result.ok and result.deleted == len(before) - 1 and not verified(env)
    assert env.store.exists(b.bucket, b.key)  # raw is never touched


def test_dry_run_counts_and_changes_nothing(lake: tuple[Env, ObjectUri]) -> None:
    env, _ = lake
    before = verified(env)
    result = delete(env, types=["lock"], dry_run=True)
    assert result.dry_run and result.deleted == 0
    assert result.listed == result.would_delete == 4
    assert result.sample == sorted(k for k in before if "type=lock" in k)
    assert verified(env) == before and result.failed_keys_file is None


# Promise 1 ---------------------------------------------------------------------------------


def test_file_of_a_missing_source_is_refused_unless_allowed(lake: tuple[Env, ObjectUri]) -> None:
    env, b = lake
    env.store.delete_batch(b.bucket, [b.key])
    before = verified(env)
    result = delete(env, types=["lock", "video_doorbell"], failed_keys_file=Path("f.jsonl"))
    assert not result.ok and result.refused == 2 and result.deleted == 3
    assert result.missing_sources == [str(b)] and result.missing_source_count == 1
    left = verified(env)
    refused = {e["key"] for e in failed_lines(result.failed_keys_file)}
    assert left == {k for k in before if "type=bridge" in k} | refused
    assert all(str(b) in e["error"] for e in failed_lines(result.failed_keys_file))
    # The dry run of the override shows them; the override deletes them.
    assert delete(env, from_file=Path("f.jsonl"), dry_run=True).would_delete == 0
    done = delete(env, from_file=Path("f.jsonl"), allow_missing_sources=True)
    assert done.ok and done.deleted == 2 and not done.sources_checked
    assert verified(env) == {k for k in before if "type=bridge" in k}


def test_a_copy_under_another_name_is_checked_by_its_own_footer(
    lake: tuple[Env, ObjectUri],
) -> None:
    env, b = lake
    bucket = env.config.buckets.verified
    original = next(k for k in verified(env) if "type=video_doorbell" in k)
    copy = original.rsplit("/", 1)[0] + "/copy.parquet"
    env.store.copy(bucket, original, bucket, copy)
    env.store.delete_batch(b.bucket, [b.key])
    result = delete(env, types=["video_doorbell"])
    assert result.refused == 2 and verified(env) >= {original, copy}


def test_refusal_through_the_cli_names_the_override(
    lake: tuple[Env, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    env, b = lake
    env.store.delete_batch(b.bucket, [b.key])
    code, _, err = cli(capsys, "--data-dir", str(env.config.data_dir), "delete", "--type", "lock")
    assert code == 1 and "--allow-missing-sources" in err and "--from-file" in err


def parquet_of(source: str, padding: int = 0) -> bytes:
    """A tiny Parquet file that records `source` (and `padding` bytes more of metadata)."""
    metadata = {b"sluice.source_ref": source.encode(), b"padding": b"x" * padding}
    sink = io.BytesIO()
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(metadata), sink)
    return sink.getvalue()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.aws)])
def any_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.chdir(tmp_path)
    env: Env = request.getfixturevalue("env" if request.param == "local" else "aws_env")
    return env


def test_sources_of_one_raw_folder_are_checked_together(any_env: Env) -> None:
    # Twelve raw objects of one arrival hour, two lock files each: one listing of their folder
    # answers for most of them; the file of the one that is gone is refused all the same.
    env = any_env
    raw, bucket = env.config.buckets.raw, env.config.buckets.verified
    sources = [ObjectUri(raw, raw_key(ARRIVED)) for _ in range(12)]
    for uri in sources:
        env.store.put(uri.bucket, uri.key, gzip.compress(b"{}\n"))
        for hour in ("00", "01"):
            key = verified_key(str(uri), "lock", "2025-11-24", hour)
            env.store.put(bucket, key, parquet_of(str(uri)))
    gone = sources[5]
    env.store.delete_batch(gone.bucket, [gone.key])
    result = delete(env, types=["lock"], batch_size=7)
    assert (result.deleted, result.refused, result.missing_sources) == (22, 2, [str(gone)])
    assert verified(env) == {verified_key(str(gone), "lock", "2025-11-24", h) for h in ("00", "01")}


def test_footers_are_read_whatever_their_size(env: Env) -> None:
    bucket = env.config.buckets.verified
    for key, body in [
        ("big", parquet_of("s3://raw/big", padding=2 * TAIL_BYTES)),
        ("small", parquet_of("s3://raw/small")),
        ("text", b"not parquet, PAR1"),
        ("empty", b""),
    ]:
        env.store.put(bucket, f"f/{key}", body)
    found = {k: read_source_ref(env.store, bucket, VersionRef(f"f/{k}")) for k in ("big", "small")}
    assert found == {"big": "s3://raw/big", "small": "s3://raw/small"}
    assert read_source_ref(env.store, bucket, VersionRef("f/text")) is None
    assert read_source_ref(env.store, bucket, VersionRef("f/empty")) is None


def test_all_versions_without_versions_is_a_plain_delete(
    lake: tuple[Env, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    env, _ = lake
    before = verified(env)
    args = ["--data-dir", str(env.config.data_dir), "delete", "--type", "lock", "--json"]
    code, out, _ = cli(capsys, *args, "--all-versions")
    shown = json.loads(out)
    assert code == 0 and shown["all_versions"] and not shown["versioned"]
    assert shown["history"] is None and (shown["versions"], shown["delete_markers"]) == (0, 0)
    assert shown["deleted"] == 4 and verified(env) == {k for k in before if "type=lock" not in k}


def test_a_from_file_naming_versions_needs_all_versions(
    lake: tuple[Env, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    env, _ = lake
    before = verified(env)
    bucket, key = env.config.buckets.verified, min(before)
    Path("f.jsonl").write_text(
        json.dumps({"bucket": bucket, "key": key, "error": "x"})
        + "\n"
        + json.dumps({"bucket": bucket, "key": key, "version_id": "v1", "error": "x"})
        + "\n"
    )
    args = ["--data-dir", str(env.config.data_dir), "delete", "--from-file", "f.jsonl"]
    code, _, err = cli(capsys, *args)
    assert code == 1 and "names versions" in err and "--all-versions" in err
    assert verified(env) == before
    # The local store keeps no versions: the version's line fails, the key's line deletes.
    result = delete(env, from_file=Path("f.jsonl"), all_versions=True)
    assert (result.deleted, result.failed) == (1, 1) and verified(env) == before - {key}


# Failures and throttling ---------------------------------------------------------------------


class FailingStore:
    """The real store, except that `delete_versions` fails some keys (per key, inside a
    success) or throttles whole batches, and records how many batches were in flight at once."""

    def __init__(self, store: ObjectStore, fail: set[str], throttle: int = 0) -> None:
        self._store = store
        self.fail = fail
        self.throttles_left = throttle
        self.in_flight = 0
        self.peak_after_throttle = 0
        self._throttled = False
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete_versions(self, bucket: str, versions: Sequence[VersionRef]) -> VersionDeleteResult:
        with self._lock:
            self.in_flight += 1
            if self._throttled:
                self.peak_after_throttle = max(self.peak_after_throttle, self.in_flight)
            throttle = self.throttles_left > 0
            self.throttles_left -= throttle
        try:
            if throttle:
                with self._lock:
                    self._throttled = True
                raise BackendBusy("SlowDown: reduce your request rate", bucket=bucket)
            threading.Event().wait(0.01)  # long enough for the workers to overlap
            ok = [v for v in versions if v.key not in self.fail]
            done = self._store.delete_versions(bucket, ok)
            failed = [v for v in versions if v.key in self.fail]
            errors = {**done.errors, **dict.fromkeys(failed, "AccessDenied: no")}
            return VersionDeleteResult(deleted=done.deleted, errors=errors)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_per_key_failures_fail_the_run_and_from_file_finishes_it(
    wide: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = wide
    fail = set(sorted(verified(env))[::7])
    double = FailingStore(env.store, fail)
    monkeypatch.setattr(Options, "open", lambda self: replace(env, store=double))
    args = ["--data-dir", str(env.config.data_dir), "delete", "--all-types", "--workers", "4"]
    code, _, err = cli(capsys, *args, "--failed-keys", "failed.jsonl")
    assert code == 1 and "--from-file failed.jsonl" in err
    assert verified(env) == fail
    assert {(e["key"], e["error"]) for e in failed_lines("failed.jsonl")} == {
        (k, "AccessDenied: no") for k in fail
    }
    double.fail = set()
    code, out, _ = cli(capsys, *args[:3], "--from-file", "failed.jsonl", "--json")
    assert code == 0 and json.loads(out)["deleted"] == len(fail)
    assert not verified(env)


def test_limiter_halves_once_per_throttling_and_restores_step_by_step() -> None:
    limiter = Limiter(8, restore_after=2)
    epoch = limiter.acquire()
    limiter.release()
    limiter.throttled(epoch)
    limiter.throttled(epoch)  # the same wave of requests: one cut
    assert limiter.limit == 4
    limiter.throttled(limiter.acquire())
    limiter.release()
    assert (limiter.limit, limiter.lowest) == (2, 2)
    for _ in range(4):
        limiter.succeeded()
    assert (limiter.limit, limiter.lowest) == (4, 2)


def test_throttling_retries_with_fewer_workers(wide: Env) -> None:
    double = FailingStore(wide.store, set(), throttle=6)
    result = delete(
        replace(wide, store=double),
        types=["lock", "bridge", "video_doorbell"],
        workers=8,
        batch_size=4,
        # No restoring here: every request after the throttling must see the lower limit.
        backoff=replace(FAST, restore_after=1000),
    )
    assert result.ok and result.deleted == 72 and not verified(wide)
    assert result.retries == 6
    assert result.lowest_workers <= 4
    assert 0 < double.peak_after_throttle <= 4


# The guard and bad inputs -------------------------------------------------------------------


def test_guard_refuses_on_a_protected_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sluice.config import load_config
    from sluice.env import open_env

    monkeypatch.delenv("SLUICE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "sluice.toml"
    config.write_text(f'[env.prod]\nprotected = true\ndata_dir = "{tmp_path / "data"}"\n')
    env = open_env(load_config("prod", config_file=config))
    build(env, SOURCE_A, "a")
    before = verified(env)
    args = ["--env", "prod", "--config", str(config), "delete", "--type", "lock"]
    code, _, err = cli(capsys, *args)
    assert code == 1 and "protected" in err and "--yes" in err and "--dry-run" in err
    assert verified(env) == before
    assert cli(capsys, *args, "--dry-run")[0] == 0 and verified(env) == before
    assert cli(capsys, *args, "--yes")[0] == 0
    assert verified(env) == {k for k in before if "type=bridge" in k}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one target: no target"),
        (("--type", "lock", "--prefix", "s3://verified/telemetry_flat/"), "more than one"),
        (("--type", "lock", "--all-types"), "exclude each other"),
        (("--type", "nope"), "unknown type"),
        (("--type", "lock", "--day", "2025-13-01"), "not a day"),
        (("--prefix", "s3://verified/telemetry_flat/", "--day", "2025-11-24"), "--day goes"),
        (("--prefix", "verified/telemetry_flat/"), "not an s3:// URI"),
        (("--prefix", "s3://raw/raw/json_telemetry/"), "outside the verified files"),
        (("--prefix", "s3://verified/other/"), "outside the verified files"),
        (("--type", "lock", "--workers", "0"), "--workers must be at least 1"),
        (("--from-file", "missing.jsonl"), "no such file"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else None,
)
def test_bad_inputs_are_refused(
    lake: tuple[Env, ObjectUri],
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    env, _ = lake
    before = verified(env)
    code, _, err = cli(capsys, "--data-dir", str(env.config.data_dir), "delete", *args)
    assert code == 1 and message in err
    assert verified(env) == before


def test_from_file_outside_the_verified_files_is_refused(
    lake: tuple[Env, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    env, b = lake
    Path("f.jsonl").write_text(json.dumps({"bucket": b.bucket, "key": b.key}) + "\n")
    code, _, err = cli(
        capsys, "--data-dir", str(env.config.data_dir), "delete", "--from-file", "f.jsonl"
    )
    assert code == 1 and "outside the verified files" in err
    assert env.store.exists(b.bucket, b.key)


# AWS ---------------------------------------------------------------------------------------


@pytest.mark.aws
def test_delete_on_aws(
    aws_env: Env,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    build(aws_env, SOURCE_A, "a")
    b = build(aws_env, SOURCE_B, "b")
    aws_env.store.delete_batch(b.bucket, [b.key])
    before = verified(aws_env)
    result = delete(aws_env, types=["lock"], workers=2, batch_size=2)
    assert result.deleted == 3 and result.refused == 1 and not result.ok
    assert verified(aws_env) == {k for k in before if "type=lock" not in k} | {
        e["key"] for e in failed_lines(result.failed_keys_file)
    }
