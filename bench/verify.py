"""Verify benchmark (DESIGN §9): sluice's duplicate check vs plain DuckDB, same files, one core.

The input is one day of `telemetry_lock_flat`, ~10 million rows written straight into the
verified layout with pyarrow (generating them through the parser would take far longer and
measure the parser), with its partitions registered in the catalog. It holds what a real day
holds: fan-out (two assertion rows per event), 1% of events resent to another raw object
(upstream duplicates), and one verified file copied under another name (pipeline duplicates),
so that both sides have something to find and must find the same thing.

- sluice: `verify(env, day, ["lock"], [Check.DUPLICATES])`, the library function behind
  `sluice verify --check-duplicates`, on the embedded engine (DuckDB over a pyarrow dataset of
  the catalog's registered partitions): pipeline and upstream duplicates in one scan, then the
  samples of each (the files of the pipeline ones found by their footers).
- reference: DuckDB's `read_parquet` over the day's files and
  `GROUP BY source_ref, line, ordinal HAVING count(*) > 1`: pipeline duplicates only.

Each runs in its own subprocess pinned to one CPU, DuckDB with `threads = 1` on both sides.

    .venv/bin/python bench/verify.py                    # 10M rows (~1 min to build, cached)
    .venv/bin/python bench/verify.py --rows 1000000     # quick run
    .venv/bin/python bench/verify.py --repeat 3         # median of three runs per side

The input is cached in bench/work/verify-<rows>/; results go to bench/results/verify.json. Exit
status is 0 when the figures were measured and both sides found the same pipeline duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results" / "verify.json"
DAY = "2025-11-24"
TYPE = "lock"
FAN_OUT = 2  # assertion rows per event
INPUT_VERSION = 1  # bump when the generated input changes


# -- the input ----------------------------------------------------------------------------------


def _file_table(source: int, sources: int, hour: int, events: int, resend: float) -> Any:
    """The rows one raw object contributes to one hour, in the table's schema."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc

    from sluice.process.schemas import PARSER_VERSION, SPECS

    schema = SPECS[TYPE].schema
    rng = random.Random(source * 100 + hour)
    rows = events * FAN_OUT
    event = pa.array([i // FAN_OUT for i in range(rows)], pa.int64())
    # A resent event carries the id of the same line in the previous raw object.
    ids = [
        f"{(source - 1) % sources if rng.random() < resend else source:04d}-{hour:02d}-{i:07d}"
        for i in range(events)
    ]
    start = datetime.fromisoformat(f"{DAY}T{hour:02d}:00:00+00:00")
    occurred = [start + timedelta(seconds=3600 * i / events) for i in range(events)]
    timestamp = schema.field("envelope__occurred_at").type
    columns: dict[str, Any] = {
        "envelope__event_id": pa.array(ids).take(event),
        "envelope__type": pa.array([TYPE] * rows),
        "envelope__event_kind": pa.array(["assertion"] * rows),
        "envelope__device_id": pa.array([f"dev-{(i // FAN_OUT) % 997}" for i in range(rows)]),
        "envelope__occurred_at": pa.array(occurred, timestamp).take(event),
        "envelope__schema_version": pa.array([1] * rows, pa.int64()),
        "payload__battery_pct": pa.array([(i * 37) % 101 for i in range(rows)], pa.int32()),
        "payload__assertion__component_name": pa.array(["motor", "battery"] * events),
        "payload__assertion__passed": pa.array([i % 20 != 0 for i in range(rows)]),
        "envelope__received_at": pa.array([start + timedelta(hours=1)] * rows, timestamp),
        "envelope__source_ref": pa.array([_source_ref(source)] * rows),
        # One raw object spans the day, so its line numbers never repeat across hours.
        "envelope__line": pc.add(event, hour * events + 1),
        "envelope__ordinal": pa.array([i % FAN_OUT for i in range(rows)], pa.int32()),
        "envelope__parser_version": pa.array([PARSER_VERSION] * rows),
    }
    arrays = [
        columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in schema
    ]
    metadata = {**(schema.metadata or {}), b"sluice.source_ref": _source_ref(source).encode()}
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(metadata))


def _source_ref(source: int) -> str:
    return f"s3://raw/raw/json_telemetry/year=2025/month=11/day=25/hour=00/bench-{source:04d}.gz"


def build_input(
    rows: int, sources: int, resend: float, regenerate: bool
) -> tuple[Path, dict[str, Any]]:
    """An embedded environment holding the day, cached; and what it holds."""
    import pyarrow.parquet as pq

    from sluice.backends.catalog.base import Partition
    from sluice.config import EnvConfig
    from sluice.env import open_env
    from sluice.layout import table_name, verified_key
    from sluice.process.outputs import PARQUET_OPTIONS

    data_dir = WORK / f"verify-{rows}"
    meta_path = data_dir / "input.json"
    wanted = {"version": INPUT_VERSION, "rows": rows, "sources": sources, "resend": resend}
    if not regenerate and meta_path.is_file():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in wanted} == wanted:
            print(f"input: cached {data_dir.relative_to(ROOT)}", file=sys.stderr)
            return data_dir, meta
    shutil.rmtree(data_dir, ignore_errors=True)
    env = open_env(EnvConfig(data_dir=data_dir))
    fs, root = env.store.arrow_filesystem()
    bucket = env.config.buckets.verified
    events = max(1, rows // (sources * 24 * FAN_OUT))
    started = time.perf_counter()
    print(f"input: writing {sources * 24} files of {events * FAN_OUT:,} rows", file=sys.stderr)
    written = 0
    for source in range(sources):
        for hour in range(24):
            table = _file_table(source, sources, hour, events, resend)
            key = verified_key(_source_ref(source), TYPE, DAY, f"{hour:02d}")
            fs.create_dir(f"{root}{bucket}/{key.rsplit('/', 1)[0]}")
            pq.write_table(table, f"{root}{bucket}/{key}", filesystem=fs, **PARQUET_OPTIONS)
            written += table.num_rows
    # The planted pipeline duplicates: a file copied under another name in its partition.
    original = verified_key(_source_ref(0), TYPE, DAY, "12")
    copy = original.replace(".parquet", "-copy.parquet")
    env.store.copy(bucket, original, bucket, copy)
    env.catalog.add_partitions(table_name(TYPE), [Partition((DAY, f"{h:02d}")) for h in range(24)])
    meta = wanted | {
        "day": DAY,
        "table": table_name(TYPE),
        "files": sources * 24 + 1,
        "rows_total": written + events * FAN_OUT,
        "events_per_file": events,
        "planted_pipeline_duplicates": events * FAN_OUT,
        "copied_file": f"s3://{bucket}/{copy}",
        "bytes": sum(p.stat().st_size for p in (data_dir / "buckets").rglob("*.parquet")),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return data_dir, meta


# -- the two sides (each runs in a child process) -------------------------------------------------


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reference_sql(data_dir: Path) -> str:
    files = data_dir / "buckets" / "verified" / "telemetry_flat" / f"type={TYPE}" / f"day={DAY}"
    return (
        "SELECT envelope__source_ref, envelope__line, envelope__ordinal, count(*) AS copies "
        f"FROM read_parquet('{files}/hour=*/*.parquet') "
        "GROUP BY envelope__source_ref, envelope__line, envelope__ordinal HAVING count(*) > 1"
    )


def _run_duckdb(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    sql = _reference_sql(Path(args.data_dir))
    baseline = _rss_mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    groups = con.execute(sql).fetchall()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "baseline_rss_mib": baseline,
        "pipeline_groups": len(groups),
        "sql": sql,
    }


def _sluice_env(args: argparse.Namespace) -> Any:
    """The embedded environment, its engine on one DuckDB thread as on the reference side."""
    import pyarrow as pa

    pa.set_cpu_count(1)  # the dataset scan's own pool: one core, like everything else here
    pa.set_io_thread_count(1)
    from sluice.backends.query.duckdb import DuckDBQueryEngine
    from sluice.config import EnvConfig
    from sluice.env import open_env

    env = open_env(EnvConfig(data_dir=Path(args.data_dir)), setup=False)
    env.__dict__["query_engine"] = DuckDBQueryEngine(env.catalog, env.store, threads=1)
    return env


def _run_engine(args: argparse.Namespace) -> dict[str, Any]:
    """The reference's SQL through sluice's engine: what reading via the catalog costs."""
    env = _sluice_env(args)
    sql = (
        "SELECT envelope__source_ref, envelope__line, envelope__ordinal, count(*) AS copies "
        f"FROM telemetry_{TYPE}_flat WHERE day = '{DAY}' "
        "GROUP BY envelope__source_ref, envelope__line, envelope__ordinal HAVING count(*) > 1"
    )
    baseline = _rss_mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    groups = env.query_engine.query(sql).num_rows
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "baseline_rss_mib": baseline,
        "pipeline_groups": groups,
        "sql": sql,
    }


def _run_sluice(args: argparse.Namespace) -> dict[str, Any]:
    from sluice.ops.verify import Check, verify

    env = _sluice_env(args)
    baseline = _rss_mib("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    report = verify(env, DAY, [TYPE], [Check.DUPLICATES], samples=args.samples)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    found = {f.name: f for r in report.results for f in r.findings}
    pipeline, upstream = found["pipeline_duplicates"], found["upstream_duplicates"]
    files = {f["uri"] for s in pipeline.samples for f in s.get("files", [])}
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "baseline_rss_mib": baseline,
        "samples": args.samples,
        "verdict": report.verdict.value,
        "rows": pipeline.numbers["rows"],
        "pipeline_groups": pipeline.numbers["groups"],
        "upstream_groups": upstream.numbers["groups"],
        "unique_keys": upstream.numbers["unique_keys"],
        "files_named_in_samples": sorted(files),
    }


def child_main(args: argparse.Namespace) -> None:
    """Pinned before the engines load, so neither sizes a thread pool for more than one core."""
    os.sched_setaffinity(0, {args.cpu})
    run = {"duckdb": _run_duckdb, "engine": _run_engine, "sluice": _run_sluice}[args.child]
    figures = run(args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["peak_rss_mib"] = usage.ru_maxrss / 1024
    figures["involuntary_switches"] = usage.ru_nivcsw
    print(json.dumps(figures))


# -- the parent: run, check, report ---------------------------------------------------------------


def _spawn(side: str, args: argparse.Namespace, data_dir: Path, samples: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side]
    command += ["--cpu", str(args.cpu), "--data-dir", str(data_dir), "--samples", str(samples)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {side} run failed (exit {done.returncode}); see its output above")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return figures


def _median(runs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["wall_seconds"]))
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["rows_per_s"] = round(rows / median["wall_seconds"])
    median["all_wall_seconds"] = [round(r["wall_seconds"], 3) for r in runs]
    median["peak_rss_mib"] = round(max(r["peak_rss_mib"] for r in runs), 1)
    for key in ("wall_seconds", "cpu_seconds", "baseline_rss_mib"):
        median[key] = round(median[key], 3)
    return median


# Each run: the child side and the samples it keeps. "sluice" is `sluice verify
# --check-duplicates` (no samples, so no query beyond the check); "sluice_v" adds `-v`.
RUNS = {
    "duckdb": ("duckdb", 0),
    "engine": ("engine", 0),
    "sluice": ("sluice", 0),
    "sluice_v": ("sluice", -1),  # -1: --samples
}
LABELS = {
    "duckdb": "DuckDB read_parquet, GROUP BY identity HAVING count(*) > 1 (the reference)",
    "engine": "the same SQL through sluice's embedded engine (catalog + pyarrow dataset)",
    "sluice": "verify(checks=[duplicates], samples=0): pipeline + upstream, one scan",
    "sluice_v": "verify(checks=[duplicates], samples=N): as `-v`, samples and their files",
}


def main(args: argparse.Namespace) -> int:
    if args.cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"CPU {args.cpu} is not available to this process")
    data_dir, meta = build_input(args.rows, args.sources, args.resend, args.regenerate)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat}: {', '.join(RUNS)}", file=sys.stderr)
        for name, (child, samples) in RUNS.items():
            samples = args.samples if samples < 0 else samples
            runs[name].append(_spawn(child, args, data_dir, samples))
    rows = meta["rows_total"]
    sides = {name: _median(r, rows) for name, r in runs.items()}
    duck, sl = sides["duckdb"], sides["sluice"]
    problems = [
        f"{name} found {side['pipeline_groups']:,} pipeline duplicates, "
        f"{meta['planted_pipeline_duplicates']:,} were planted"
        for name, side in sides.items()
        if side["pipeline_groups"] != meta["planted_pipeline_duplicates"]
    ]
    problems += [
        f"{name} saw {side['rows']:,} rows of {rows:,}"
        for name, side in sides.items()
        if "rows" in side and side["rows"] != rows
    ]
    ratios = {
        name: {
            "speed": round(duck["wall_seconds"] / side["wall_seconds"], 3),
            "speed_per_cpu_second": round(duck["cpu_seconds"] / side["cpu_seconds"], 3),
            "memory": round(side["peak_rss_mib"] / duck["peak_rss_mib"], 3),
        }
        for name, side in sides.items()
        if name != "duckdb"
    }
    print(
        f"\nverify duplicates: {rows:,} rows in {meta['files']:,} files, one day of "
        f"{meta['table']}, {meta['planted_pipeline_duplicates']:,} planted pipeline duplicates, "
        "one core each"
    )
    print(
        f"{'':9} {'wall s':>7} {'cpu s':>7} {'rows/s':>11} {'peak MiB':>9} {'found':>6} "
        f"{'speed':>6} {'memory':>6}"
    )
    for name, side in sides.items():
        ratio = ratios.get(name, {"speed": 1.0, "memory": 1.0})
        print(
            f"{name:9} {side['wall_seconds']:7.2f} {side['cpu_seconds']:7.2f} "
            f"{side['rows_per_s']:11,} {side['peak_rss_mib']:9,.0f} {side['pipeline_groups']:6,} "
            f"{ratio['speed']:5.2f}x {ratio['memory']:5.2f}x"
        )
    for name, label in LABELS.items():
        print(f"  {name:9} {label}")
    print(
        f"speed = DuckDB wall / wall (higher is faster); memory = peak RSS / DuckDB's. "
        f"sluice also counted {sl['upstream_groups']:,} upstream duplicate keys and "
        f"{sl['unique_keys']:,} unique (event_id, ordinal); with -v it named "
        f"{', '.join(Path(u).name for u in sides['sluice_v']['files_named_in_samples'])}"
    )
    busy = max(max(side["load_avg_1m"]) for side in sides.values())
    if busy > (os.cpu_count() or 1) - 0.5:
        print(
            f"NOTE: load average reached {busy:.1f} on {os.cpu_count()} CPUs: other processes "
            "shared the machine; wall times are noisy (CPU seconds less so)"
        )
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    result = {
        "benchmark": "verify",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "input": meta,
        "reference": {"engine": "duckdb", "threads": 1, "sql": duck.pop("sql")},
        "engine_sql": sides["engine"].pop("sql"),
        "runs": LABELS,
        **sides,
        "speed_ratio": ratios["sluice"]["speed"],
        "speed_ratio_per_cpu_second": ratios["sluice"]["speed_per_cpu_second"],
        "memory_ratio": ratios["sluice"]["memory"],
        "ratios": ratios,
        "same_findings": not problems,
        "problems": problems,
        "repeat": args.repeat,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {out}")
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="verified rows in the day")
    parser.add_argument("--sources", type=int, default=100, help="raw objects (files per hour)")
    parser.add_argument("--resend", type=float, default=0.01, help="share of resent events")
    parser.add_argument(
        "--samples", type=int, default=10, help="samples per finding in the -v run of sluice"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median counts")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU both sides run on")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON result goes")
    parser.add_argument("--regenerate", action="store_true", help="ignore the cached input")
    hidden = argparse.SUPPRESS
    parser.add_argument("--child", choices=("duckdb", "engine", "sluice"), help=hidden)
    parser.add_argument("--data-dir", help=hidden)
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.repeat < 1 or args.sources < 2:
        parser.error("--rows must be at least 1000, --repeat 1, --sources 2")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        child_main(arguments)
        sys.exit(0)
    sys.exit(main(arguments))
