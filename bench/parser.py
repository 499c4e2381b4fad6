"""Parser benchmark (DESIGN §9): sluice's `process_object` against DuckDB, same input, one core.

Both sides turn the same gzip JSONL raw object into Parquet partitioned by type/day/hour, each in
its own subprocess pinned to one CPU, so that each one's peak RSS is its own. The figures are
events per second and peak memory; the ratios are sluice ÷ DuckDB, with the goals of the issue:
speed at least 1.0x, memory at most 0.5x. Both outputs are read back and must hold the same rows per
partition, or the comparison does not count.

    .venv/bin/python bench/parser.py                 # 1 GiB uncompressed, ~minutes
    .venv/bin/python bench/parser.py --size-mb 64    # quick run
    .venv/bin/python bench/parser.py --size-mb 64 --profile   # cProfile of sluice's side only

The raw object is generated once and cached in bench/work/ (gitignored); results go to
bench/results/parser.json. Exit status is 0 when the figures were measured, goals met or not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402  (bench/machine.py)

from sluice.process.schemas import ASSERTION_FIELDS, PAYLOAD_FIELDS, FieldKind  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results" / "parser.json"
MIB = 1024 * 1024
SPEED_GOAL = 1.0  # sluice events/s ÷ DuckDB events/s, at least
MEMORY_GOAL = 0.5  # sluice peak RSS ÷ DuckDB peak RSS, at most
# A fixed clock makes the cached input reproducible; the raw object "arrives" at this time, so
# every generated timestamp is inside the parser's window.
NOW = datetime(2025, 11, 25, tzinfo=UTC)
SAMPLE_EVENTS = 20_000

REFERENCE_NOTES = (
    "DuckDB does not validate: no required-field, type, range or timestamp-window checks, "
    "no quarantine (sluice checks every line)",
    "DuckDB adds no lineage columns (sluice adds received_at, source_ref, line, ordinal, "
    "parser_version)",
    "DuckDB drops fields its declared columns do not name (sluice keeps them as JSON in *__extra)",
    "DuckDB writes the union of all types' payload columns into every partition; sluice writes "
    "each type's own schema",
    "sluice also publishes through the object store (fsync), the ledger and the catalog",
)

_DUCKDB_TYPES = {
    FieldKind.STRING: "VARCHAR",
    FieldKind.INT32: "INTEGER",
    FieldKind.INT64: "BIGINT",
    FieldKind.DOUBLE: "DOUBLE",
    FieldKind.BOOL: "BOOLEAN",
}
# The envelope as sluice types it (schemas.ENVELOPE_COLUMNS, without the extras).
_ENVELOPE = {
    "event_id": "VARCHAR",
    "type": "VARCHAR",
    "event_kind": "VARCHAR",
    "device_id": "VARCHAR",
    "occurred_at": "TIMESTAMPTZ",
    "schema_version": "BIGINT",
    "batch_id": "VARCHAR",
}


# -- the input ----------------------------------------------------------------------------------


class _CountingWriter(io.RawIOBase):
    """Counts the uncompressed bytes the generator writes, passing them on to `sink`."""

    def __init__(self, sink: BinaryIO | None) -> None:
        super().__init__()
        self.sink = sink
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.sink is not None:
            self.sink.write(data)
        self.count += len(data)
        return len(data)


def _generator_fingerprint() -> str:
    """A changed generator makes a different input: the cache must not hand out the old one."""
    source = (ROOT / "sluice" / "generate.py").read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def build_input(
    size_mb: int, *, seed: int, bad_fraction: float, days: int, regenerate: bool
) -> tuple[Path, dict[str, Any]]:
    """The cached raw object of about `size_mb` MiB uncompressed, and what it holds."""
    from sluice.generate import generate
    from sluice.gzipio import gzip_writer

    WORK.mkdir(parents=True, exist_ok=True)
    stem = f"raw-{size_mb}mib-seed{seed}-bad{bad_fraction:g}-days{days}"
    path, meta_path = WORK / f"{stem}.jsonl.gz", WORK / f"{stem}.json"
    fingerprint = _generator_fingerprint()
    if not regenerate and path.is_file() and meta_path.is_file():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if meta.get("generator") == fingerprint:
            print(f"input: cached {path.relative_to(ROOT)}", file=sys.stderr)
            return path, meta

    options: dict[str, Any] = {
        "days": days,
        "bad_fraction": bad_fraction,
        "seed": seed,
        "now": NOW,
    }
    sample = _CountingWriter(None)
    generate(cast(BinaryIO, sample), events=SAMPLE_EVENTS, **options)
    events = max(1, round(size_mb * MIB * SAMPLE_EVENTS / sample.count))
    print(f"input: generating {events:,} events (~{size_mb} MiB) into {path}", file=sys.stderr)

    tenths = [0]

    def progress(done: int) -> None:
        if done * 10 // events > tenths[0]:
            tenths[0] = done * 10 // events
            print(f"  {done:,} / {events:,} events", file=sys.stderr)

    tmp = path.with_suffix(".tmp")
    started = time.perf_counter()
    with gzip_writer(tmp) as gz:
        counter = _CountingWriter(gz)
        truth = generate(cast(BinaryIO, counter), events=events, on_progress=progress, **options)
    os.replace(tmp, path)
    meta = {
        "generator": fingerprint,
        "size_mb_target": size_mb,
        "uncompressed_bytes": counter.count,
        "compressed_bytes": path.stat().st_size,
        "seed": seed,
        "bad_fraction": bad_fraction,
        "days": days,
        "now": NOW.isoformat(),
        "generate_seconds": round(time.perf_counter() - started, 1),
        **{k: v for k, v in asdict(truth).items() if k != "path"},
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return path, meta


# -- the two sides (each runs in a child process) -------------------------------------------------


def duckdb_sql(source: Path, out_dir: Path, *, ignore_errors: bool) -> str:
    """DuckDB's equivalent of the parser: read, flatten, fan out assertions, partition, write."""
    payload: dict[str, FieldKind] = {}
    for fields in PAYLOAD_FIELDS.values():
        for name, kind in fields.items():
            if payload.setdefault(name, kind) is not kind:
                raise ValueError(f"payload field {name} has two types; one column cannot hold it")
    assertion = ", ".join(f"{n} {_DUCKDB_TYPES[k]}" for n, k in ASSERTION_FIELDS.items())
    payload_struct = ", ".join(f"{n} {_DUCKDB_TYPES[k]}" for n, k in payload.items())
    columns = {
        "envelope": f"STRUCT({', '.join(f'{n} {t}' for n, t in _ENVELOPE.items())})",
        "payload": f"STRUCT({payload_struct}, assertions STRUCT({assertion})[])",
    }
    select = [f"envelope.{n} AS envelope__{n}" for n in _ENVELOPE]
    select += [f"payload.{n} AS payload__{n}" for n in payload]
    select += [f"a.{n} AS payload__assertion__{n}" for n in ASSERTION_FIELDS]
    select += [
        "envelope.type AS type",
        "strftime(envelope.occurred_at, '%Y-%m-%d') AS day",
        "strftime(envelope.occurred_at, '%H') AS hour",
    ]
    # A one-NULL list keeps one row for an event without assertions (LEFT JOIN semantics).
    fan_out = "CASE WHEN len(payload.assertions) > 0 THEN payload.assertions ELSE [NULL] END"
    read = (
        f"read_json('{source}', format = 'newline_delimited', compression = 'gzip', "
        f"columns = {columns!r}, ignore_errors = {str(ignore_errors).lower()})"
    )
    return (
        f"COPY (SELECT {', '.join(select)} "
        f"FROM (SELECT envelope, payload, unnest({fan_out}) AS a FROM {read})) "
        f"TO '{out_dir}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (type, day, hour))"
    )


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _run_duckdb(args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("SET TimeZone = 'UTC'")  # day/hour of occurred_at in UTC, as sluice
    con.execute(f"SET temp_directory = '{args.out_dir}.tmp'")
    sql = duckdb_sql(Path(args.input), Path(args.out_dir), ignore_errors=args.bad_fraction > 0)
    memory_limit = con.execute("SELECT current_setting('memory_limit')").fetchone()
    baseline = _rss_mib("VmRSS")
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    wall, cpu = time.perf_counter(), time.process_time()
    con.execute(sql)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "kernel_seconds": kernel,
        "baseline_rss_mib": baseline,
        "settings": {"threads": 1, "memory_limit": memory_limit[0] if memory_limit else None},
        "sql": sql,
    }


def _run_sluice(args: argparse.Namespace) -> dict[str, Any]:
    from sluice.config import EnvConfig
    from sluice.env import open_env
    from sluice.process.processor import process_object

    env = open_env(EnvConfig(data_dir=Path(args.data_dir)))
    baseline = _rss_mib("VmRSS")
    run: Callable[[], Any] = lambda: process_object(env, args.source, force=True)  # noqa: E731
    profiler = None
    if args.profile_to:
        import cProfile

        profiler = cProfile.Profile()
        run = lambda: profiler.runcall(process_object, env, args.source, force=True)  # noqa: E731
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
    if profiler is not None:
        import pstats

        profiler.dump_stats(args.profile_to)
        stats = pstats.Stats(profiler, stream=sys.stderr).strip_dirs()
        for order in ("cumulative", "tottime"):
            print(f"\n== sluice process_object, top 30 by {order} ==", file=sys.stderr)
            stats.sort_stats(order).print_stats(30)
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "kernel_seconds": kernel,
        "baseline_rss_mib": baseline,
        "counts": asdict(result.counts),
        "outputs": len(result.outputs),
        "profiled": profiler is not None,
    }


def child_main(args: argparse.Namespace) -> None:
    """Pinned before the engines load, so neither sizes a thread pool for more than one core."""
    os.sched_setaffinity(0, {args.cpu})
    run = _run_duckdb if args.child == "duckdb" else _run_sluice
    figures = run(args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["peak_rss_mib"] = usage.ru_maxrss / 1024
    # Preemptions on the pinned CPU: many mean another process took turns on it.
    figures["involuntary_switches"] = usage.ru_nivcsw
    figures["cpus"] = sorted(os.sched_getaffinity(0))
    print(json.dumps(figures))


# -- the parent: run, verify, report --------------------------------------------------------------


def _spawn(side: str, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--cpu"]
    command += [str(args.cpu), "--bad-fraction", str(args.bad_fraction), *extra]
    load_before = os.getloadavg()[0]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {side} run failed (exit {done.returncode}); see its output above")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return figures


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def run_duckdb(args: argparse.Namespace, source: Path) -> tuple[dict[str, Any], Path]:
    out = _fresh(WORK / "out-duckdb")
    _fresh(Path(f"{out}.tmp"))
    figures = _spawn("duckdb", ["--input", str(source), "--out-dir", str(out)], args)
    shutil.rmtree(f"{out}.tmp", ignore_errors=True)
    return figures, out


def run_sluice(
    args: argparse.Namespace, source: Path, profile: Path | None = None
) -> tuple[dict[str, Any], Path]:
    from sluice.config import EnvConfig
    from sluice.env import open_env
    from sluice.layout import raw_key

    data_dir = _fresh(WORK / "out-sluice")
    env = open_env(EnvConfig(data_dir=data_dir))
    key = raw_key(NOW)  # the parser reads the arrival time from the key
    env.store.put_file(env.config.buckets.raw, key, source)
    extra = ["--data-dir", str(data_dir), "--source", f"s3://{env.config.buckets.raw}/{key}"]
    if profile is not None:
        extra += ["--profile-to", str(profile)]
    figures = _spawn("sluice", extra, args)
    # The embedded store keeps bucket b under <data_dir>/buckets/b (env.open_env).
    verified = data_dir / "buckets" / env.config.buckets.verified
    if not verified.is_dir():
        raise SystemExit(f"sluice wrote no verified files under {verified}")
    return figures, verified


def read_back(out_dir: Path) -> dict[str, Any]:
    """Rows per type/day/hour, rows with an assertion, distinct event ids, files and bytes."""
    import duckdb

    files = list(out_dir.rglob("*.parquet"))
    if not files:
        return {"rows": 0, "files": 0, "bytes": 0, "partitions": {}}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = (
        f"read_parquet('{out_dir}/**/*.parquet', hive_partitioning = true, "
        "hive_types_autocast = false, union_by_name = true)"
    )
    per_partition = con.execute(
        f"SELECT type, day, hour, count(*) FROM {source} GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    with_assertion, distinct_events = con.execute(
        f"SELECT count(payload__assertion__component_name), count(DISTINCT envelope__event_id) "
        f"FROM {source}"
    ).fetchall()[0]
    partitions = {f"type={t}/day={d}/hour={h}": n for t, d, h, n in per_partition}
    return {
        "rows": sum(partitions.values()),
        "rows_with_assertion": with_assertion,
        "distinct_event_ids": distinct_events,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "partitions": partitions,
    }


def _summary(runs: list[dict[str, Any]], events: int, written: dict[str, Any]) -> dict[str, Any]:
    """The run with the median wall time; peak RSS is the highest of all runs."""
    ordered = sorted(runs, key=lambda r: float(r["wall_seconds"]))
    median = ordered[(len(ordered) - 1) // 2]
    wall = float(median["wall_seconds"])
    return {
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(float(median["cpu_seconds"]), 3),
        "events_per_s": round(events / wall),
        "events_per_cpu_s": round(events / float(median["cpu_seconds"])),
        "rows_per_s": round(written["rows"] / wall),
        "peak_rss_mib": round(max(float(r["peak_rss_mib"]) for r in runs), 1),
        "baseline_rss_mib": round(float(median["baseline_rss_mib"]), 1),
        "rows_written": written["rows"],
        "rows_with_assertion": written["rows_with_assertion"],
        "distinct_event_ids": written["distinct_event_ids"],
        "files_written": written["files"],
        "output_bytes": written["bytes"],
        "all_wall_seconds": [round(float(r["wall_seconds"]), 3) for r in runs],
        # CPU seconds and the kernel's share of them, per run: a slow run with the same CPU
        # time waited; one with more kernel time paid for memory or files.
        "all_cpu_kernel_seconds": [
            [round(float(r["cpu_seconds"]), 3), round(float(r["kernel_seconds"]), 3)] for r in runs
        ],
        "cpus": median["cpus"],
        "involuntary_switches": median["involuntary_switches"],
        "load_avg_1m": median["load_avg_1m"],
    }


def _check_rows(meta: dict[str, Any], sluice: dict[str, Any], duck: dict[str, Any]) -> list[str]:
    """What is wrong with the comparison; empty when both wrote the same rows."""
    problems = []
    truth = {
        f"type={p.split('/')[0][len('telemetry_') : -len('_flat')]}/{p.split('/', 1)[1]}": n
        for p, n in meta["rows_by_partition"].items()
    }
    if sluice["partitions"] != truth:
        problems.append(
            f"sluice wrote {sluice['rows']:,} rows, the generator made {sum(truth.values()):,} "
            "(or the same total in other partitions): a sluice bug"
        )
    if meta["bad_fraction"] == 0:
        if sluice["partitions"] != duck["partitions"]:
            problems.append(
                f"rows per partition differ: sluice {sluice['rows']:,} rows in "
                f"{len(sluice['partitions'])} partitions, duckdb {duck['rows']:,} in "
                f"{len(duck['partitions'])}"
            )
        for name in ("rows_with_assertion", "distinct_event_ids"):
            if sluice[name] != duck[name]:
                problems.append(f"{name} differ: sluice {sluice[name]:,}, duckdb {duck[name]:,}")
    return problems


def _verdict(met: bool) -> str:
    return "PASS" if met else "MISS"


def report(meta: dict[str, Any], sides: dict[str, dict[str, Any]], valid: bool) -> dict[str, Any]:
    duck, sl = sides["duckdb"], sides["sluice"]
    speed = sl["events_per_s"] / duck["events_per_s"]
    speed_cpu = sl["events_per_cpu_s"] / duck["events_per_cpu_s"]
    memory = sl["peak_rss_mib"] / duck["peak_rss_mib"]
    print(
        f"\nparser: {meta['uncompressed_bytes'] / MIB:,.0f} MiB uncompressed "
        f"({meta['compressed_bytes'] / MIB:,.0f} MiB gz), {meta['good_lines']:,} events, "
        f"{sl['rows_written']:,} rows, {len(meta['rows_by_partition'])} partitions, "
        f"bad_fraction {meta['bad_fraction']:g}, one core each"
    )
    print(f"{'':8} {'wall s':>9} {'cpu s':>9} {'events/s':>11} {'rows/s':>11} {'peak RSS MiB':>13}")
    for name, side in sides.items():
        print(
            f"{name:8} {side['wall_seconds']:9.2f} {side['cpu_seconds']:9.2f} "
            f"{side['events_per_s']:11,} {side['rows_per_s']:11,} {side['peak_rss_mib']:13,.0f}"
        )
    print(
        f"speed   sluice/duckdb = {speed:.2f}x  (goal >= {SPEED_GOAL}x)  "
        f"{_verdict(speed >= SPEED_GOAL)}"
    )
    print(
        f"memory  sluice/duckdb = {memory:.2f}x  (goal <= {MEMORY_GOAL}x)  "
        f"{_verdict(memory <= MEMORY_GOAL)}"
    )
    print(f"        (per CPU second: {speed_cpu:.2f}x)")
    busy = max(max(side["load_avg_1m"]) for side in sides.values())
    if busy > (os.cpu_count() or 1) - 0.5:
        print(
            f"NOTE: load average reached {busy:.1f} on {os.cpu_count()} CPUs: other processes "
            "shared the machine, so wall times are noisy (the CPU-second ratio less so); "
            "rerun on a quiet machine or with --repeat 3"
        )
    print("reference: DuckDB with threads=1; the work is not identical:")
    for note in REFERENCE_NOTES:
        print(f"  - {note}")
    if not valid:
        print("WARNING: the outputs differ, so the ratios compare different work")
    return {
        "speed_ratio": round(speed, 3),
        "speed_ratio_per_cpu_second": round(speed_cpu, 3),
        "memory_ratio": round(memory, 3),
        "goals": {
            "speed": {"target": f">= {SPEED_GOAL}", "met": speed >= SPEED_GOAL},
            "memory": {"target": f"<= {MEMORY_GOAL}", "met": memory <= MEMORY_GOAL},
        },
    }


def main(args: argparse.Namespace) -> int:
    if args.cpu not in os.sched_getaffinity(0):
        raise SystemExit(f"CPU {args.cpu} is not available to this process")
    source, meta = build_input(
        args.size_mb,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
        days=args.days,
        regenerate=args.regenerate,
    )
    if args.profile:
        profile = WORK / f"parser-{args.size_mb}mib.prof"
        figures, _ = run_sluice(args, source, profile)
        print(f"\nprofile in {profile}; {figures['wall_seconds']:.1f} s under cProfile")
        return 0

    runs: dict[str, list[dict[str, Any]]] = {"duckdb": [], "sluice": []}
    outputs: dict[str, Path] = {}
    for i in range(args.repeat):
        # Sides alternate which goes first, so that neither always finds the input in the
        # page cache the other left.
        order = ("duckdb", "sluice") if i % 2 == 0 else ("sluice", "duckdb")
        print(f"run {i + 1}/{args.repeat}: {order[0]}, then {order[1]}", file=sys.stderr)
        for side in order:
            run = run_duckdb if side == "duckdb" else run_sluice
            figures, outputs[side] = run(args, source)
            runs[side].append(figures)
    written = {name: read_back(path) for name, path in outputs.items()}
    problems = _check_rows(meta, written["sluice"], written["duckdb"])
    for problem in problems:
        print(f"WARNING: {problem}", file=sys.stderr)
    sides = {n: _summary(runs[n], meta["good_lines"], written[n]) for n in ("duckdb", "sluice")}
    ratios = report(meta, sides, valid=not problems)
    # Each run's two sides ran back to back: their ratio cancels the machine's drift between
    # runs, which the ratio of the two medians does not.
    per_run = [
        float(duck["wall_seconds"]) / float(sl["wall_seconds"])
        for duck, sl in zip(runs["duckdb"], runs["sluice"], strict=True)
    ]
    paired = sorted(per_run)[(len(per_run) - 1) // 2]
    ratios["speed_ratio_paired_median"] = round(paired, 3)
    ratios["speed_ratio_per_run"] = [round(r, 3) for r in per_run]
    if len(per_run) > 1:
        print(f"        (median of the runs' own ratios: {paired:.2f}x)")

    result = {
        "benchmark": "parser",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "input": {k: v for k, v in meta.items() if k not in ("rows_by_partition",)}
        | {"partitions": len(meta["rows_by_partition"])},
        "reference": {
            "engine": "duckdb",
            "sql": runs["duckdb"][-1]["sql"],
            "settings": runs["duckdb"][-1]["settings"],
            "validates": False,
            "lineage": False,
            "notes": list(REFERENCE_NOTES),
        },
        "sluice": sides["sluice"] | {"counts": runs["sluice"][-1]["counts"]},
        "duckdb": sides["duckdb"],
        **ratios,
        "outputs_match": not problems,
        "problems": problems,
        "repeat": args.repeat,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {out}")
    if not args.keep_outputs:
        for path in (WORK / "out-duckdb", WORK / "out-sluice"):
            shutil.rmtree(path, ignore_errors=True)
    # Outputs that differ on clean input mean the figures compare different work: an error.
    return 1 if problems and meta["bad_fraction"] == 0 else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB of uncompressed JSONL")
    parser.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="share of bad lines (default 0: every line valid, so both sides must write the "
        "same rows; above 0 DuckDB runs with ignore_errors and the rows may differ)",
    )
    parser.add_argument("--days", type=int, default=3, help="hours of occurred_at, in days")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the median counts")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU both sides run on")
    parser.add_argument("--out", default=str(RESULTS), help="where the JSON result goes")
    parser.add_argument("--regenerate", action="store_true", help="ignore the cached input")
    parser.add_argument("--keep-outputs", action="store_true", help="keep bench/work/out-*")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run sluice only, under cProfile; print the top functions, write no results",
    )
    hidden = argparse.SUPPRESS
    parser.add_argument("--child", choices=("duckdb", "sluice"), help=hidden)
    for name in ("--input", "--out-dir", "--data-dir", "--source", "--profile-to"):
        parser.add_argument(name, help=hidden)
    args = parser.parse_args(argv)
    if args.size_mb < 1 or args.repeat < 1:
        parser.error("--size-mb and --repeat must be at least 1")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        child_main(arguments)
        sys.exit(0)
    sys.exit(main(arguments))
