"""The reconciler: the scheduled safety net between the store, the ledger and the catalog.

Every run looks at the raw objects that arrived in the last few hours (its window) and
- enqueues a `process_raw_file` for each one the ledger has not completed at its current ETag
  and that nobody holds a live lease on (a lost S3 notification, a message that expired); an
  object that failed terminally at its current ETag is reported instead: its message is in the
  DLQ already, and the same bytes would fail the same way;
- compares the file registry (the outputs the ledger lists for those objects) with the store,
  listing once each partition the outputs fall in and each verified partition of the window's
  event hours:
  - an output listed but missing from the store (deleted by hand) sends its source a
    `redrive_raw_file`, so the worker rebuilds it;
  - a verified file written within the window that no record lists, as output or as pending
    output, is an orphan (a copy, a file from another tool): reported, never deleted here (the
    redrive tool removes orphans). Each candidate names its source in its Parquet metadata, so
    it is settled with one footer read and one ledger lookup, never a scan of the ledger;
- registers the partitions of the outputs present in the store that the catalog lacks (a
  partition dropped by hand, a crash between upload and registration).

It is idempotent: a second run right after the first changes nothing, except that an output
still missing (the worker has not rebuilt it yet) is asked for again. That message carries the
same redrive id as the first, derived from the source's completion, so the worker rebuilds the
source once however many reconciler runs asked.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import FileRecord, FileStatus, Output
from sluice.backends.queue.base import MAX_BATCH, OutgoingMessage
from sluice.backends.store.base import ObjectInfo
from sluice.catalog.repair import OnProgress
from sluice.env import Env
from sluice.errors import ConfigError, InvalidKey, TransientError
from sluice.layout import (
    RAW_TELEMETRY_PREFIX,
    TYPES,
    ObjectUri,
    parse_uri,
    parse_verified_key,
    partition_prefix,
)
from sluice.messages import process_raw_file, redrive_raw_file

DEFAULT_LOOKBACK_HOURS = 3
MAX_LOOKBACK_HOURS = 14 * 24  # one LIST per hour of the window; older drift is `repair`'s
# An object younger than this is left to its own notification, so that a healthy pipeline is
# not sent every object twice.
DEFAULT_MIN_AGE = timedelta(minutes=10)
SOURCE_REF_METADATA = b"sluice.source_ref"  # written into every verified file's schema
PROGRESS_EVERY = 1000


@dataclass
class ReconcileResult:
    raw_objects_seen: int = 0
    enqueued: list[str] = field(default_factory=list)  # sources sent a process_raw_file
    failed_terminal: list[str] = field(default_factory=list)  # sources left to the DLQ
    partitions_added: dict[str, int] = field(default_factory=dict)
    outputs_checked: int = 0
    files_listed: int = 0
    missing_outputs: list[str] = field(default_factory=list)  # listed, not in the store
    redriven: list[str] = field(default_factory=list)  # sources sent a redrive_raw_file
    orphan_files: list[str] = field(default_factory=list)  # in the store, listed by none
    dry_run: bool = False


@dataclass
class _Window:
    """What the window's records say the store holds, grouped by the prefix to list."""

    # (bucket, prefix) -> key -> output that must exist (of a record completed at its ETag)
    expected: dict[tuple[str, str], dict[str, Output]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # URIs some record lists as output or pending output, whatever its status: not orphans.
    known: set[str] = field(default_factory=set)
    # The source URI of each expected output, and each completed record, for the redrive.
    source_of: dict[str, str] = field(default_factory=dict)
    completed: dict[str, FileRecord] = field(default_factory=dict)

    def watch(self, bucket: str, prefix: str) -> None:
        self.expected.setdefault((bucket, prefix), {})

    def add(self, record: FileRecord, *, check: bool) -> None:
        for uri in record.pending_outputs:
            self.known.add(uri)
        for output in record.outputs:
            self.known.add(output.uri)
            if check:
                prefix = output.key.rsplit("/", 1)[0] + "/" if "/" in output.key else ""
                self.expected[(output.bucket, prefix)][output.key] = output
                self.source_of[output.uri] = record.uri
        if check:
            self.completed[record.uri] = record


def arrival_prefixes(now: datetime, hours: int) -> Iterator[str]:
    """Raw prefixes of the arrival hours from `now - hours` to `now`, oldest first."""
    for t in _hours(now, hours):
        yield f"{RAW_TELEMETRY_PREFIX}year={t:%Y}/month={t:%m}/day={t:%d}/hour={t:%H}/"


def _hours(now: datetime, hours: int) -> Iterator[datetime]:
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for back in range(hours, -1, -1):
        yield start - timedelta(hours=back)


def reconcile(
    env: Env,
    *,
    lookback_hours: int = DEFAULT_LOOKBACK_HOURS,
    min_age: timedelta = DEFAULT_MIN_AGE,
    now: datetime | None = None,
    dry_run: bool = False,
    on_progress: OnProgress | None = None,
) -> ReconcileResult:
    """Find and repair drift between the raw store, the ledger, the verified store and the
    catalog for the raw objects that arrived in the last `lookback_hours` (see the module
    docstring). `dry_run` reports and changes nothing.

    Raises:
        ConfigError: `lookback_hours` outside 0..MAX_LOOKBACK_HOURS.
        TransientError: a message could not be enqueued, or a backend is busy (run again).
    """
    if not 0 <= lookback_hours <= MAX_LOOKBACK_HOURS:
        raise ConfigError(
            f"lookback must be 0 to {MAX_LOOKBACK_HOURS} hours, not {lookback_hours}",
            hint="for older drift run `sluice catalog repair` (partitions) or a redrive",
        )
    now = now or datetime.now(UTC)
    result = ReconcileResult(dry_run=dry_run)
    outbox: list[OutgoingMessage] = []
    window = _Window()
    verified = env.config.buckets.verified
    for t in _hours(now, lookback_hours):
        for type_ in TYPES:
            window.watch(verified, partition_prefix(type_, f"{t:%Y-%m-%d}", f"{t:%H}"))
    _scan_raw(env, now, lookback_hours, min_age, result, window, outbox, on_progress)
    window_start = next(_hours(now, lookback_hours))
    present = _scan_outputs(env, window_start, result, window, on_progress)
    outbox += _redrives(env, result, window)
    for table, wanted in sorted(present.items()):
        registered = set(env.catalog.list_partitions(table))
        new = sorted(wanted - registered)
        if new:
            result.partitions_added[table] = len(new)
            if not dry_run:
                env.catalog.add_partitions(table, new)
    if not dry_run:
        for start in range(0, len(outbox), MAX_BATCH):
            sent = env.processing_queue.send_batch(outbox[start : start + MAX_BATCH])
            if sent.failed:
                raise TransientError(f"reconcile could not enqueue: {sent.failed}")
    return result


def _scan_raw(
    env: Env,
    now: datetime,
    lookback_hours: int,
    min_age: timedelta,
    result: ReconcileResult,
    window: _Window,
    outbox: list[OutgoingMessage],
    on_progress: OnProgress | None,
) -> None:
    raw = env.config.buckets.raw
    for prefix in arrival_prefixes(now, lookback_hours):
        for info in env.store.list(raw, prefix):
            result.raw_objects_seen += 1
            if on_progress is not None and result.raw_objects_seen % PROGRESS_EVERY == 0:
                on_progress("raw objects", result.raw_objects_seen)
            record = env.ledger.get(raw, info.key)
            if record is None:
                pending = True
            else:
                current = record.etag == info.etag
                done = record.status is FileStatus.COMPLETED and current
                window.add(record, check=done)
                if done:
                    continue
                if record.status is FileStatus.FAILED and record.terminal and current:
                    result.failed_terminal.append(info.uri)
                    continue
                pending = not (record.status is FileStatus.PROCESSING and not record.is_stuck(now))
            if pending and info.last_modified <= now - min_age:
                result.enqueued.append(info.uri)
                outbox.append(process_raw_file(ObjectUri(raw, info.key)))
    if on_progress is not None:
        on_progress("raw objects", result.raw_objects_seen)


def _scan_outputs(
    env: Env,
    cutoff: datetime,
    result: ReconcileResult,
    window: _Window,
    on_progress: OnProgress | None,
) -> dict[str, set[Partition]]:
    """List each watched prefix once; returns the partitions of the outputs present."""
    verified = env.config.buckets.verified
    present: dict[str, set[Partition]] = defaultdict(set)
    footers = _Footers(env)
    result.outputs_checked = sum(len(keys) for keys in window.expected.values())
    for (bucket, prefix), expected in sorted(window.expected.items()):
        for info in env.store.list(bucket, prefix):
            result.files_listed += 1
            if on_progress is not None and result.files_listed % PROGRESS_EVERY == 0:
                on_progress("files", result.files_listed)
            output = expected.pop(info.key, None)
            if output is not None:
                if output.hour:
                    present[output.table].add(Partition((output.day, output.hour)))
                continue
            # Files older than the window were looked at when they were new: an orphan is
            # found in the window it was made in, so a run costs what the window wrote.
            if (
                bucket == verified
                and info.uri not in window.known
                and info.last_modified >= cutoff
                and parse_verified_key(info.key) is not None
                and not footers.listed_by_its_source(info)
            ):
                result.orphan_files.append(info.uri)
        result.missing_outputs += [f"s3://{bucket}/{key}" for key in sorted(expected)]
    if on_progress is not None:
        on_progress("files", result.files_listed)
    return present


def _redrives(env: Env, result: ReconcileResult, window: _Window) -> list[OutgoingMessage]:
    """A `redrive_raw_file` for each source with a missing output and unchanged since read."""
    sources = sorted({window.source_of[uri] for uri in result.missing_outputs})
    outbox = []
    for uri in sources:
        seen = window.completed[uri]
        ref = parse_uri(uri)
        latest = env.ledger.get(ref.bucket, ref.key)
        # A source reprocessed while we listed removes outputs it no longer makes: its new
        # outputs are that run's business, not drift.
        if latest is None or latest.updated_at != seen.updated_at:
            continue
        result.redriven.append(uri)
        outbox.append(redrive_raw_file(ref, redrive_id(seen)))
    return outbox


def redrive_id(record: FileRecord) -> str:
    """The same id for every request to rebuild one completion of a source: the worker skips
    the repeats. A later completion (after the rebuild) gets a new id, so the output can be
    rebuilt again if it goes missing again."""
    done = record.completed_at.isoformat() if record.completed_at else ""
    digest = hashlib.sha256(f"{record.uri}\n{record.etag}\n{done}".encode()).hexdigest()
    return f"reconcile-{digest[:16]}"


class _Footers:
    """Settles whether a verified file is an output of the source its metadata names."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._fs: tuple[pafs.FileSystem, str] | None = None

    def listed_by_its_source(self, info: ObjectInfo) -> bool:
        """True when the record of the source named in the file lists it (or it is gone)."""
        try:
            source = self._source_ref(info)
        except (OSError, pa.ArrowException):
            # Not Parquet, or removed since it was listed (a reprocess removing a stale output).
            return not self.env.store.exists(info.bucket, info.key)
        if source is None:
            return False  # Parquet that sluice did not write
        try:
            ref = parse_uri(source)
        except InvalidKey:
            return False
        record = self.env.ledger.get(ref.bucket, ref.key)
        return record is not None and (
            info.uri in record.pending_outputs or any(o.uri == info.uri for o in record.outputs)
        )

    def _source_ref(self, info: ObjectInfo) -> str | None:
        if self._fs is None:
            self._fs = self.env.store.arrow_filesystem()
        fs, root = self._fs
        schema = pq.read_schema(f"{root}{info.bucket}/{info.key}", filesystem=fs)
        value = (schema.metadata or {}).get(SOURCE_REF_METADATA)
        return value.decode("utf-8", "replace") if value else None
