"""The run's inputs: checking what the operator named, and the reads that find sources.

- `raw_uri`, `raw_prefix`, `verified_file`: the URIs of the modes, refused early and with the
  right hint when they name the wrong kind of object.
- `day_sources`: the distinct source_refs of one table's day, through the query engine.
- `file_sources`: the distinct source_refs a verified file holds, read from the file itself.
- `exist_flags`: which raw objects exist, many at a time (one HEAD each on S3).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sluice.backends.store.base import bad_key_reason, validate_bucket
from sluice.env import Env
from sluice.errors import ConfigError, InvalidKey, ObjectNotFound
from sluice.layout import ObjectUri, VerifiedKey, parse_uri, parse_verified_key, table_name

SOURCE_COLUMN = "envelope__source_ref"
# Raw objects looked up at once: HEADs are latency-bound on S3, and this many in flight keep a
# single client busy without running into its connection pool (10 by default, it queues).
HEAD_THREADS = 16
HEAD_BATCH = 256


def _parse(uri: str, flag: str) -> ObjectUri:
    try:
        ref = parse_uri(uri)
        validate_bucket(ref.bucket)
    except InvalidKey as exc:
        raise ConfigError(
            f"{flag}: {exc.message}", hint="write objects as s3://bucket/key"
        ) from exc
    return ref


def _not_here(env: Env, ref: ObjectUri, flag: str) -> None:
    """Refuse a raw-object URI that points into a bucket of sluice's own outputs."""
    buckets = env.config.buckets
    if ref.bucket == buckets.verified:
        raise ConfigError(
            f"{flag} takes raw objects; {ref} is in the verified bucket",
            hint="redrive a verified file's sources with --parquet-uri, a day with"
            " --source-ref-day DAY --type T",
        )
    if ref.bucket in (buckets.quarantine, buckets.lake):
        raise ConfigError(f"{flag} takes raw objects; {ref} is in sluice's {ref.bucket!r} bucket")


def raw_uri(env: Env, uri: str) -> ObjectUri:
    """The one raw object of `--s3-uri`.

    Raises:
        ConfigError: not s3://bucket/key, a prefix rather than an object, a malformed key, or
            an object of the verified, quarantine or lake bucket.
    """
    ref = _parse(uri, "--s3-uri")
    if not ref.key or ref.key.endswith("/"):
        raise ConfigError(
            f"--s3-uri names one object, and {uri!r} is a prefix",
            hint=f"sluice redrive --s3-prefix {uri}",
        )
    if (reason := bad_key_reason(ref.key)) is not None:
        raise ConfigError(f"--s3-uri {uri!r}: {reason}")
    _not_here(env, ref, "--s3-uri")
    return ref


def raw_prefix(env: Env, uri: str) -> ObjectUri:
    """The prefix of `--s3-prefix` (the key part may be empty: the whole bucket).

    Raises:
        ConfigError: not s3://bucket/prefix, or a prefix of sluice's own buckets.
    """
    ref = _parse(uri, "--s3-prefix")
    if "\x00" in ref.key or ref.key.startswith("/") or ".." in ref.key.split("/"):
        raise ConfigError(f"--s3-prefix {uri!r} is not a prefix any key can have")
    _not_here(env, ref, "--s3-prefix")
    return ref


def verified_file(env: Env, uri: str) -> tuple[ObjectUri, VerifiedKey]:
    """The verified file of `--parquet-uri`.

    Raises:
        ConfigError: not an s3:// URI, or not a key of a verified file
            (`telemetry_flat/type=T/day=D/hour=H/<name>.parquet` in the verified bucket).
        ObjectNotFound: no such file.
    """
    ref = _parse(uri, "--parquet-uri")
    parsed = parse_verified_key(ref.key)
    if ref.bucket != env.config.buckets.verified or parsed is None:
        raise ConfigError(
            f"--parquet-uri takes a verified file, and {uri!r} is not one",
            hint=f"verified files are s3://{env.config.buckets.verified}/telemetry_flat/"
            "type=T/day=YYYY-MM-DD/hour=HH/NAME.parquet; a raw object goes with --s3-uri",
        )
    if not env.store.exists(ref.bucket, ref.key):
        raise ObjectNotFound(
            f"no verified file {uri}",
            hint=f'list the partition: sluice query "SELECT DISTINCT {SOURCE_COLUMN} FROM'
            f" {table_name(parsed.type)} WHERE day = '{parsed.day}'\"",
            bucket=ref.bucket,
            key=ref.key,
        )
    return ref, parsed


def day_sources(env: Env, type_: str, day: str) -> list[str]:
    """The distinct source_refs of a table's day as the query engine sees it (registered
    partitions only, as on Athena; the listing of the partitions finds the rest)."""
    table = table_name(type_)
    sql = (
        f"SELECT DISTINCT {SOURCE_COLUMN} AS source_ref FROM {table}"
        f" WHERE day = '{day}' AND {SOURCE_COLUMN} IS NOT NULL"
    )
    column = env.query_engine.query(sql).column("source_ref")
    return sorted(str(v) for v in column.to_pylist())


@dataclass(frozen=True)
class FileSources:
    """What a verified file says of its rows' sources."""

    sources: tuple[str, ...]  # distinct, sorted
    unattributed_rows: int  # rows without a source_ref (the column missing or null)
    rows: int


def file_sources(env: Env, ref: ObjectUri) -> FileSources:
    """The distinct source_refs of a verified file, from its own rows (one column read).

    Raises:
        ConfigError: the object is not a Parquet file.
        ObjectNotFound: it is gone.
    """
    fs, root = env.store.arrow_filesystem()
    try:
        with fs.open_input_file(f"{root}{ref.bucket}/{ref.key}") as stream:
            parquet = pq.ParquetFile(stream)
            rows = parquet.metadata.num_rows
            if SOURCE_COLUMN not in parquet.schema_arrow.names:
                return FileSources((), rows, rows)
            column = parquet.read(columns=[SOURCE_COLUMN]).column(SOURCE_COLUMN)
    except FileNotFoundError as exc:
        raise ObjectNotFound(f"{ref} is gone", bucket=ref.bucket, key=ref.key) from exc
    except (OSError, pa.ArrowException) as exc:
        if not env.store.exists(ref.bucket, ref.key):
            raise ObjectNotFound(f"{ref} is gone", bucket=ref.bucket, key=ref.key) from exc
        raise ConfigError(f"{ref} is not a readable Parquet file: {exc}") from exc
    values = pc.unique(column.drop_null()).to_pylist()
    return FileSources(tuple(sorted(map(str, values))), column.null_count, rows)


def source_ref(text: str) -> ObjectUri | None:
    """A source_ref as an object, or None when no object can have that name."""
    try:
        ref = parse_uri(text)
        validate_bucket(ref.bucket)
    except InvalidKey:
        return None
    return ref if bad_key_reason(ref.key) is None else None


def exist_flags(env: Env, pool: ThreadPoolExecutor, refs: list[str]) -> list[bool]:
    """Whether each source's raw object exists, looked up in parallel on `pool`. A source_ref
    that names no possible object does not exist."""

    def exists(text: str) -> bool:
        ref = source_ref(text)
        if ref is None:
            return False
        try:
            return env.store.exists(ref.bucket, ref.key)
        except (InvalidKey, ObjectNotFound):
            return False

    # One task per slice, not per object: a local lookup costs less than a future does.
    size = max(1, -(-len(refs) // HEAD_THREADS))
    slices = [refs[i : i + size] for i in range(0, len(refs), size)]
    return [flag for flags in pool.map(lambda s: [exists(r) for r in s], slices) for flag in flags]
