"""Shared helpers of the end-to-end tests: run the pipeline on the embedded backends, and read
its state back *independently* of the code under test (Parquet through pyarrow, raw objects and
quarantine files through the standard library's gzip, keys hashed with hashlib).

A `LakeState` is what "nothing lost, nothing doubled" is checked against: every verified file
(key, row count, digest of its rows), the multiset of row identities
(`envelope__source_ref`, `envelope__line`, `envelope__ordinal`) and every quarantine file.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.generate import GenerateResult, generate
from sluice.ingest.buffer import IngestResult, ingest_files
from sluice.layout import parse_uri
from sluice.messages import process_raw_file
from sluice.process.worker import WorkerStats, run_worker

SLUICE = str(Path(sys.executable).parent / "sluice")
# A fixed `now` keeps the generator's output (and so every derived expectation) reproducible;
# it must lie shortly before the arrival time of the raw objects (see `generate`).
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SHORT_SECONDS = 3
IDENTITY = ("envelope__source_ref", "envelope__line", "envelope__ordinal")

Identity = tuple[str, int, int]


def short_config(data_dir: Path, seconds: int = SHORT_SECONDS) -> EnvConfig:
    """The local environment in `data_dir`, with a short visibility timeout and lease, so that
    messages and claims left behind by a dead worker come back within seconds."""
    return dataclasses.replace(
        EnvConfig(data_dir=data_dir),
        visibility_timeout_seconds=seconds,
        lease_seconds=seconds,
    )


@dataclass
class Run:
    config: EnvConfig
    env: Env
    input: Path
    generated: GenerateResult
    ingested: IngestResult
    started: datetime
    stats: WorkerStats | None = None

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir


def run_pipeline(
    tmp_path: Path,
    *,
    events: int = 3_000,
    days: int = 3,
    bad_fraction: float = 0.05,
    seed: int = 11,
    huge_lines: bool = False,
    max_object_bytes: int = 128 * 1024,
    process: bool = True,
    config: EnvConfig | None = None,
    now: datetime = NOW,
) -> Run:
    """generate → ingest (small raw objects) → one worker until idle (unless `process` is false)."""
    started = datetime.now(UTC)
    config = config or short_config(tmp_path / "data")
    source = tmp_path / "telemetry.ndjson"
    generated = generate(
        source,
        events=events,
        days=days,
        bad_fraction=bad_fraction,
        seed=seed,
        now=now,
        huge_lines=huge_lines,
    )
    env = open_env(config)
    ingested = ingest_files(env, [source], max_object_bytes=max_object_bytes)
    run = Run(config, env, source, generated, ingested, started)
    if process:
        run.stats = run_worker(env, until_idle=True)
    return run


def copy_run(run: Run, tmp_path: Path) -> Run:
    """A copy of a processed run in a fresh data directory under `tmp_path`: buckets and
    databases copied (no process writes to them meanwhile), opened anew."""
    data_dir = tmp_path / "data"
    shutil.copytree(run.data_dir, data_dir, ignore=shutil.ignore_patterns("*-shm", ".sluice-tmp-*"))
    config = dataclasses.replace(run.config, data_dir=data_dir)
    return dataclasses.replace(run, config=config, env=open_env(config))


# -- reading the lake back --------------------------------------------------------------------


def bucket_dir(config: EnvConfig, bucket: str) -> Path:
    return config.data_dir / "buckets" / bucket


def uri_path(config: EnvConfig, uri: str) -> Path:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[5:].partition("/")
    return bucket_dir(config, bucket) / key


def _files(root: Path, suffix: str) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob(f"*{suffix}"))
        if p.is_file() and not p.name.startswith(".")
    }


def verified_files(config: EnvConfig) -> dict[str, Path]:
    """Every verified Parquet file, by key (`telemetry_flat/type=…/day=…/hour=…/<hash>.parquet`)."""
    return _files(bucket_dir(config, config.buckets.verified), ".parquet")


def quarantine_files(config: EnvConfig) -> dict[str, Path]:
    return _files(bucket_dir(config, config.buckets.quarantine), ".jsonl.gz")


def raw_objects(config: EnvConfig) -> dict[str, Path]:
    """Every raw object, by URI."""
    raw = config.buckets.raw
    return {f"s3://{raw}/{k}": p for k, p in _files(bucket_dir(config, raw), ".gz").items()}


def temp_leftovers(config: EnvConfig) -> list[Path]:
    """Dot-files (temporary files of atomic writes) left anywhere under the buckets."""
    root = config.data_dir / "buckets"
    return sorted(p for p in root.rglob(".*") if p.is_file()) if root.is_dir() else []


def source_hash(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def raw_lines(path: Path) -> list[bytes]:
    """The lines of a gzip JSONL object as the design defines them: split on LF, one CR before
    the LF removed; a final line without LF counts."""
    data = gzip.decompress(path.read_bytes())
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def read_quarantine(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_verified(path: Path) -> pa.Table:
    return pq.ParquetFile(path).read(use_threads=False)


def _digest_rows(table: pa.Table) -> str:
    rows = table.sort_by([(c, "ascending") for c in IDENTITY]).to_pylist()
    return hashlib.sha256(json.dumps(rows, default=repr, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LakeState:
    """What the verified and quarantine buckets hold, read back from the files themselves."""

    files: dict[str, tuple[int, str]]  # verified key -> (rows, digest of its rows)
    identities: Counter[Identity]
    quarantine: dict[str, str]  # quarantine key -> digest of its decompressed bytes

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.files.values())

    @property
    def checksum(self) -> str:
        """One digest of every file's key and rows, in key order."""
        h = hashlib.sha256()
        for key, (rows, digest) in sorted(self.files.items()):
            h.update(f"{key}\0{rows}\0{digest}\n".encode())
        for key, digest in sorted(self.quarantine.items()):
            h.update(f"q:{key}\0{digest}\n".encode())
        return h.hexdigest()

    def duplicates(self) -> dict[Identity, int]:
        return {ident: n for ident, n in self.identities.items() if n > 1}


def snapshot(config: EnvConfig) -> LakeState:
    files: dict[str, tuple[int, str]] = {}
    identities: Counter[Identity] = Counter()
    for key, path in verified_files(config).items():
        table = read_verified(path)
        files[key] = (table.num_rows, _digest_rows(table))
        cols = [table.column(c).to_pylist() for c in IDENTITY]
        identities.update(zip(*cols, strict=True))
    quarantine = {
        key: hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        for key, path in quarantine_files(config).items()
    }
    return LakeState(files, identities, quarantine)


def describe_diff(expected: LakeState, actual: LakeState, limit: int = 5) -> str:
    """A readable account of how two lake states differ (empty when they are equal)."""
    out = []
    missing = sorted(expected.files.keys() - actual.files.keys())
    extra = sorted(actual.files.keys() - expected.files.keys())
    changed = sorted(
        k
        for k in expected.files.keys() & actual.files.keys()
        if expected.files[k] != actual.files[k]
    )
    if missing:
        out.append(f"{len(missing)} verified file(s) missing, e.g. {missing[:limit]}")
    if extra:
        out.append(f"{len(extra)} verified file(s) extra, e.g. {extra[:limit]}")
    if changed:
        detail = [(k, expected.files[k][0], actual.files[k][0]) for k in changed[:limit]]
        out.append(f"{len(changed)} verified file(s) changed (key, rows before, after): {detail}")
    if expected.identities != actual.identities:
        lost = expected.identities - actual.identities
        doubled = actual.identities - expected.identities
        out.append(f"row identities lost: {sum(lost.values())}, gained: {sum(doubled.values())}")
    q_missing = sorted(expected.quarantine.keys() - actual.quarantine.keys())
    q_extra = sorted(actual.quarantine.keys() - expected.quarantine.keys())
    q_changed = sorted(
        k
        for k in expected.quarantine.keys() & actual.quarantine.keys()
        if expected.quarantine[k] != actual.quarantine[k]
    )
    for what, keys in (("missing", q_missing), ("extra", q_extra), ("changed", q_changed)):
        if keys:
            out.append(f"{len(keys)} quarantine file(s) {what}, e.g. {keys[:limit]}")
    return "; ".join(out)


def assert_same_state(expected: LakeState, actual: LakeState) -> None:
    diff = describe_diff(expected, actual)
    assert not diff, diff
    assert actual.checksum == expected.checksum
    assert not actual.duplicates()


def enqueue_objects(env: Env, uris: Iterable[str]) -> int:
    """Send one process_raw_file message per object (as the ingest flush does)."""
    messages = [process_raw_file(parse_uri(uri)) for uri in uris]
    for start in range(0, len(messages), 10):
        result = env.processing_queue.send_batch(messages[start : start + 10])
        assert not result.failed, result.failed
    return len(messages)


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a CLI subprocess: no SLUICE_* leaking in, temp files under tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    env["COLUMNS"] = "200"
    return env
