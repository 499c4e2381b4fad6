"""Planning a backfill: cut the work into chunk files, then write the manifest.

`plan_partitions` lists a table's objects once, in key order, a page at a time, and writes a
chunk file each time `chunk_size` partitions have accumulated, so memory holds one chunk
whatever the size of the table. Every file of a partition shares the partition's key prefix,
so a listing in key order meets each partition in one run of keys: remembering the last
partition is enough to count each once, and a chunk boundary never splits or repeats one.

`--source verified` (the default) plans a verified table's `day=/hour=` partitions from its
Parquet files, exactly as `sluice catalog repair` finds them (stray keys are counted, never
registered). `--source raw` plans the arrival partitions of a *raw* table: a catalog table
whose location is in the environment's raw bucket (e.g. one an analyst defined over
`raw/json_telemetry/` partitioned by year, month, day, hour). sluice creates no such table
itself; planning one that is not in the catalog, or one whose data is not raw, is refused:
partitions of raw objects registered on a verified table would point readers at gzip JSONL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sluice.backends.catalog.base import Partition, TableDef, require_table
from sluice.catalog.repair import partition_of, table_root, verified_tables
from sluice.compact.state import known_types
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import arrival_time_from_key, check_day, check_type, parse_uri
from sluice.ops.backfill.runs import Kind, Manifest, RunStore, chunk_key, new_run_id

SOURCES = ("verified", "raw")
DEFAULT_PARTITIONS_PER_CHUNK = 500
DEFAULT_DAYS_PER_CHUNK = 7
PROGRESS_EVERY = 1000

OnPlanProgress = Callable[[int, int], None]
"""Called with the keys scanned so far and the partitions found so far."""


@dataclass(frozen=True)
class PlanResult:
    run_id: str
    kind: Kind
    location: str  # where the run's files are
    total_chunks: int
    items: int  # partitions, or (type, day) units
    keys_scanned: int = 0
    stray_keys: int = 0  # keys under the table that are not files of a partition

    def as_json(self) -> dict[str, Any]:
        """Named as `sluice backfill status --json` names its counts."""
        return {
            "runId": self.run_id,
            "kind": self.kind.value,
            "location": self.location,
            "totalChunks": self.total_chunks,
            "items": self.items,
            "keysScanned": self.keys_scanned,
            "strayKeys": self.stray_keys,
        }


def check_chunk_size(chunk_size: int) -> int:
    if chunk_size < 1:
        raise ConfigError(
            f"--chunk-size must be at least 1, not {chunk_size}", hint="e.g. --chunk-size 100"
        )
    return chunk_size


def plan_partitions(
    env: Env,
    table: str,
    *,
    source: str = "verified",
    prefix: str = "",
    chunk_size: int = DEFAULT_PARTITIONS_PER_CHUNK,
    on_progress: OnPlanProgress | None = None,
) -> PlanResult:
    """Plan registering every partition of `table` that holds a file (under `prefix`, relative
    to the table's location or an s3:// URI inside it), `chunk_size` partitions per chunk.

    Raises:
        ConfigError: a chunk size below 1, an unknown source or table, a raw source for a table
            that is not a raw table (or the reverse), a prefix outside the table's location, or
            no partition found (nothing is written then).
    """
    check_chunk_size(chunk_size)
    if source not in SOURCES:
        raise ConfigError(f"unknown --source {source!r}", hint=f"use one of: {', '.join(SOURCES)}")
    tdef = _table(env, table, source)
    root = table_root(tdef)
    scan = _scan_prefix(tdef, prefix)

    def extract(key: str) -> Partition | None:
        return partition_of(tdef, key) if source == "verified" else _raw_partition(tdef, key)

    run_id = new_run_id()
    store = RunStore(env, Kind.PARTITIONS, run_id)
    chunks = scanned = stray = found = 0
    current: list[Partition] = []
    in_chunk: set[Partition] = set()  # a guard in case a store ever lists out of key order
    last: Partition | None = None

    def flush() -> None:
        nonlocal chunks, current, in_chunk
        values = [list(p.values) for p in current]
        store.put_chunk(chunk_key(chunks), {"table": tdef.name, "partitions": values})
        chunks += 1
        current, in_chunk = [], set()

    for info in env.store.list(root.bucket, scan):
        scanned += 1
        if on_progress is not None and scanned % PROGRESS_EVERY == 0:
            on_progress(scanned, found)
        partition = extract(info.key)
        if partition is None:
            stray += 1
            continue
        if partition == last or partition in in_chunk:
            continue
        last = partition
        found += 1
        current.append(partition)
        in_chunk.add(partition)
        if len(current) == chunk_size:
            flush()
    if current:
        flush()
    if on_progress is not None:
        on_progress(scanned, found)
    if not found:
        raise ConfigError(
            f"no partition of {tdef.name} holds a file under s3://{root.bucket}/{scan}",
            hint="check --table, --source and --prefix; nothing was planned",
            table=tdef.name,
            keys_scanned=scanned,
        )
    params = {"table": tdef.name, "source": source, "prefix": scan, "chunkSize": chunk_size}
    planned = {"partitions": found, "keysScanned": scanned, "strayKeys": stray}
    _finish(store, Kind.PARTITIONS, chunks, params, planned)
    return PlanResult(run_id, Kind.PARTITIONS, store.location, chunks, found, scanned, stray)


def plan_refine(
    env: Env,
    start: str,
    end: str,
    *,
    chunk_size: int = DEFAULT_DAYS_PER_CHUNK,
    types: Sequence[str] | None = None,
) -> PlanResult:
    """Plan building the 15-minute rollups of every day from `start` to `end` (inclusive) for
    `types` (default: all), `chunk_size` consecutive days per chunk.

    Raises:
        ConfigError: not a day, `end` before `start`, a chunk size below 1, an unknown type.
    """
    check_chunk_size(chunk_size)
    first = date.fromisoformat(check_day(start))
    last = date.fromisoformat(check_day(end))
    if last < first:
        raise ConfigError(
            f"--end {end} is before --start {start}",
            hint=f"sluice backfill plan refine-15m --start {end} --end {start}",
        )
    chosen = list(dict.fromkeys(types)) if types else known_types()
    for type_ in chosen:
        check_type(type_)
    days = [(first + timedelta(d)).isoformat() for d in range((last - first).days + 1)]
    run_id = new_run_id()
    store = RunStore(env, Kind.REFINE_15M, run_id)
    chunks = 0
    for begin in range(0, len(days), chunk_size):
        store.put_chunk(
            chunk_key(chunks), {"types": chosen, "days": days[begin : begin + chunk_size]}
        )
        chunks += 1
    params = {
        "start": first.isoformat(),
        "end": last.isoformat(),
        "types": chosen,
        "chunkSize": chunk_size,
    }
    planned = {"days": len(days), "units": len(days) * len(chosen)}
    _finish(store, Kind.REFINE_15M, chunks, params, planned)
    return PlanResult(run_id, Kind.REFINE_15M, store.location, chunks, len(days) * len(chosen))


def _finish(
    store: RunStore, kind: Kind, chunks: int, params: dict[str, Any], planned: dict[str, Any]
) -> None:
    # Last: a run exists once its manifest does (see runs.py).
    manifest = Manifest(store.run_id, kind, datetime.now(UTC).isoformat(), chunks, params, planned)
    store.put("manifest.json", manifest.encode())


def _table(env: Env, table: str, source: str) -> TableDef:
    raw_bucket = env.config.buckets.raw
    if source == "verified":
        return verified_tables(env, table)[0]
    tdef = require_table(env.catalog, table)
    bucket = parse_uri(tdef.location).bucket
    if bucket != raw_bucket:
        raise ConfigError(
            f"table {table} is not a raw table: its location {tdef.location} is not in the raw "
            f"bucket {raw_bucket}",
            hint=f"sluice backfill plan partitions --table {table} --source verified",
            table=table,
        )
    if not tdef.partition_keys:
        raise ConfigError(f"raw table {table} has no partition keys", table=table)
    return tdef


def _scan_prefix(table: TableDef, prefix: str) -> str:
    """The key prefix to list: the table's root, narrowed by `prefix`."""
    root = table_root(table)
    if not prefix.startswith("s3://"):
        return root.key + prefix.lstrip("/")
    uri = parse_uri(prefix)
    if uri.bucket != root.bucket or not uri.key.startswith(root.key):
        raise ConfigError(
            f"--prefix {prefix} is not inside the location of {table.name} ({table.location})",
            hint="give the prefix relative to the table's location, e.g. day=2025-11-24/",
            table=table.name,
        )
    return uri.key


def _raw_partition(table: TableDef, key: str) -> Partition | None:
    """The Hive partition of a raw object under a raw table (`year=2025/…/hour=21/x.gz`), or
    None for a key that is not a raw object of that layout."""
    rel = key[len(table_root(table).key) :].split("/")
    if len(rel) != len(table.partition_keys) + 1 or arrival_time_from_key(rel[-1]) is None:
        return None
    values = []
    for name, segment in zip(table.partition_keys, rel, strict=False):
        k, sep, v = segment.partition("=")
        if not sep or k != name or not v:
            return None
        values.append(v)
    return Partition(tuple(values))
