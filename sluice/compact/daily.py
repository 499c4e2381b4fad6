"""`int_<type>_compacted_daily`: one day of a verified table, deduplicated, as an Iceberg day.

What is read: the verified table as its readers see it, i.e. the Parquet files under the
partitions of the day that the catalog registers (the files the DuckDB engine and Athena read),
read here directly with a DuckDB of our own. Not through `env.query_engine`, because an engine
answers with a whole Arrow table (on Athena, in text pages of 1,000 rows), and a day of one type
can be millions of rows; a local DuckDB streams the files, sorts with spilling, and hands the
rows over in batches. Not from the ledger's outputs either: `sluice ledger cleanup` forgets old
records whose files stay, so the registry is not an inventory of a day, and a day rebuilt from it
would lose those objects' rows. The registry decides *which* days to rebuild (`state.py`); the
catalog's partitions decide *what* a day holds, exactly as for every other reader, so
`sluice verify --check-counts` compares like with like.

Deduplication keeps one row per (event_id, ordinal): the newest parser version (compared as
numbers, so 1.10 is newer than 1.9), then the latest `envelope__received_at`, then the lowest
(`envelope__source_ref`, `envelope__line`), so every rebuild keeps the same row. Rows are
written sorted by device, time, event and ordinal: the same input always makes the same files.

The table is partitioned by identity on a `day` string column (the verified tables' `day`, UTC
event day), not by a day transform of `envelope__occurred_at`: a day is then one value that
readers and the overwrite filter name the same way, and joins with the verified tables' `day`
need no conversion.

Rebuilding a day is one Iceberg commit (`Lake.replace_day`): a reader sees the old day or the new
one. `compact_day` always rebuilds when asked (a second run commits a new snapshot with the same
rows); `sluice compact --changed` skips the days whose inputs did not change.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from sluice.backends.lake.base import DAY
from sluice.compact.state import (
    DayDigest,
    DayState,
    compacted_table,
    day_states,
    registry_digests,
    state_property,
)
from sluice.env import Env
from sluice.errors import ConfigError, TransientError
from sluice.layout import check_day, check_type, parse_uri, table_name
from sluice.process.schemas import SPECS

BATCH_ROWS = 64 * 1024
# A reprocess may remove a file between our listing and our read; list again this many times.
READ_ATTEMPTS = 3

_VERSION = (
    "list_transform(string_split(envelope__parser_version, '.'), "
    "lambda p: TRY_CAST(regexp_extract(p, '^[0-9]+') AS BIGINT))"
)
DEDUP_SQL = f"""
SELECT * EXCLUDE (_version)
FROM (SELECT *, {_VERSION} AS _version FROM verified)
QUALIFY row_number() OVER (
    PARTITION BY envelope__event_id, envelope__ordinal
    ORDER BY _version DESC NULLS LAST, envelope__parser_version DESC,
             envelope__received_at DESC, envelope__source_ref, envelope__line
) = 1
ORDER BY envelope__device_id, envelope__occurred_at, envelope__event_id, envelope__ordinal
"""


class CompactStatus(StrEnum):
    COMPACTED = "compacted"
    EMPTY = "empty"  # no verified rows on the day (any compacted rows of it were removed)


@dataclass(frozen=True)
class CompactResult:
    type: str
    day: str
    table: str
    status: CompactStatus
    files_read: int
    sources: int  # raw objects the registry lists with outputs on the day
    input_rows: int
    rows: int
    duplicates_removed: int
    snapshot_id: int | None
    files_added: int
    files_removed: int
    build: str | None
    seconds: float


def compacted_schema(type_: str) -> pa.Schema:
    """The verified table's columns, then `day`."""
    spec = SPECS[check_type(type_)]
    return pa.schema(
        [*spec.schema, pa.field(DAY, pa.string(), nullable=False)],
        metadata={"sluice.type": type_},
    )


def compact_day(
    env: Env, type_: str, day: str, *, digest: DayDigest | None = None
) -> CompactResult:
    """Rebuild `day` of `int_<type>_compacted_daily` from the verified table, in one commit.

    `digest` is the registry's digest of the day taken *before* this call reads anything (one
    ledger pass serves many days, see `sluice.compact.run`); without it, one is taken here.

    Raises:
        ConfigError: unknown type, not a day, or the verified table is not set up.
        TransientError: the day's files kept changing while being read, or a concurrent
            compaction of the same day committed first (`BackendBusy`); run it again.
    """
    check_type(type_)
    check_day(day)
    started = time.monotonic()
    if digest is None:
        digest = registry_digests(env.ledger, [type_], [day]).get((type_, day), DayDigest())
    table = compacted_table(type_)
    env.lake.ensure_table(table, compacted_schema(type_))
    for attempt in range(1, READ_ATTEMPTS + 1):
        files = verified_day_files(env, type_, day)
        try:
            return _rebuild(env, type_, day, files, digest, started)
        except (duckdb.Error, FileNotFoundError) as exc:
            if attempt < READ_ATTEMPTS and verified_day_files(env, type_, day) != files:
                continue
            raise TransientError(
                f"reading the verified files of {table_name(type_)} on {day} failed: {exc}",
                hint=f"sluice compact --date {day} --type {type_}",
                table=table,
                day=day,
            ) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _rebuild(
    env: Env, type_: str, day: str, files: list[VerifiedFile], digest: DayDigest, started: float
) -> CompactResult:
    table = compacted_table(type_)
    dataset = _dataset(env, type_, files)
    input_rows = dataset.count_rows() if files else 0
    if not files and not _has_day(env, table, day):
        # Nothing to remove and nothing to add: a mistyped date writes nothing to the lake.
        return CompactResult(
            type_, day, table, CompactStatus.EMPTY, 0, digest.sources, 0, 0, 0,
            None, 0, 0, None, _elapsed(started),
        )  # fmt: skip
    build = uuid.uuid4().hex[:16]
    state = DayState(
        build=build,
        built_at=datetime.now(UTC),
        input_rows=input_rows,
        digest=digest.digest,
        sources=digest.sources,
    )
    summary = {
        "sluice.build": build,
        "sluice.input-rows": str(input_rows),
        "sluice.sources": str(digest.sources),
        "sluice.registry-digest": digest.digest,
    }
    with local_duckdb() as con:
        con.register("verified", dataset)
        reader = con.sql(DEDUP_SQL).to_arrow_reader(BATCH_ROWS)
        replaced = env.lake.replace_day(
            table, day, reader, properties={state_property(day): state.encode()}, summary=summary
        )
    return CompactResult(
        type=type_,
        day=day,
        table=table,
        status=CompactStatus.COMPACTED if replaced.rows else CompactStatus.EMPTY,
        files_read=len(files),
        sources=digest.sources,
        input_rows=input_rows,
        rows=replaced.rows,
        duplicates_removed=input_rows - replaced.rows,
        snapshot_id=replaced.snapshot_id,
        files_added=replaced.files_added,
        files_removed=replaced.files_removed,
        build=build,
        seconds=_elapsed(started),
    )


@dataclass(frozen=True)
class VerifiedFile:
    path: str  # in the store's arrow filesystem
    size: int


def verified_day_files(env: Env, type_: str, day: str) -> list[VerifiedFile]:
    """The Parquet files under the day's registered partitions of `telemetry_<type>_flat`, in
    key order: one listing of the day's prefix, kept to the hours the catalog registers.

    Raises:
        ConfigError: the verified table is not in the catalog.
    """
    name = table_name(type_)
    table = env.catalog.get_table(name)
    if table is None:
        raise ConfigError(f"no verified table {name!r} in the catalog", hint="sluice setup")
    keys = table.partition_keys
    if keys[:1] != (DAY,):
        raise ConfigError(f"verified table {name} is not partitioned by day first: {keys}")
    registered = {p.values for p in env.catalog.list_partitions(name) if p.values[0] == day}
    if not registered:
        return []
    _, root = env.store.arrow_filesystem()
    location = parse_uri(f"{table.location.rstrip('/')}/{keys[0]}={day}/")
    files = []
    for obj in env.store.list(location.bucket, location.key):
        rest = obj.key[len(location.key) :].split("/")
        values = (day, *(part.partition("=")[2] for part in rest[:-1]))
        if obj.key.endswith(".parquet") and len(rest) == len(keys) and values in registered:
            files.append(VerifiedFile(f"{root}{obj.bucket}/{obj.key}", obj.size))
    return files


def _dataset(env: Env, type_: str, files: list[VerifiedFile]) -> ds.Dataset:
    """The files as one dataset of the table's schema; sizes from the listing spare a HEAD
    request per file on S3."""
    fs, _ = env.store.arrow_filesystem()
    fmt = ds.ParquetFileFormat()
    fragments = [fmt.make_fragment(f.path, filesystem=fs, file_size=f.size) for f in files]
    return ds.FileSystemDataset(fragments, SPECS[type_].schema, fmt, filesystem=fs)


def compacted_rows(env: Env, type_: str, day: str) -> int | None:
    """Rows of `day` in `int_<type>_compacted_daily`, or None when the day was never compacted.

    Counted from the data files of the table's current snapshot (their footers' row counts, as
    Iceberg's manifests record them), not from what the compaction said it wrote.
    """
    table = compacted_table(check_type(type_))
    if not env.lake.exists(table) or day not in day_states(env.lake.properties(table)):
        return None
    return sum(f.rows for f in env.lake.files(table, day=day))


def compaction_states(env: Env, type_: str) -> dict[str, DayState]:
    """Every compacted day of a type and what its last compaction recorded ({} if none)."""
    table = compacted_table(check_type(type_))
    if not env.lake.exists(table):
        return {}
    return day_states(env.lake.properties(table))


def _has_day(env: Env, table: str, day: str) -> bool:
    """Whether the table holds rows or a state for `day` (an empty day needs no commit else)."""
    return day in day_states(env.lake.properties(table)) or bool(env.lake.files(table, day=day))


@contextmanager
def local_duckdb() -> Iterator[duckdb.DuckDBPyConnection]:
    """A private DuckDB that sorts in UTC and spills to a temporary directory of its own."""
    with tempfile.TemporaryDirectory(prefix="sluice-compact-") as spill:
        con = duckdb.connect(
            ":memory:",
            config={"temp_directory": spill, "preserve_insertion_order": False},
        )
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield con
        finally:
            con.close()


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)
