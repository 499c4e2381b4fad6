"""process_object: one raw object → verified Parquet + quarantine, all or nothing (promise 6).

    head → claim (lease) → stream lines → validate → scratch files
         → record pending outputs → publish new files → register partitions
         → remove stale outputs → complete

A failure anywhere before `complete` leaves the previous outputs in place and the claim failed
with its reason. The ledger never lists an output that was not written, and a key written but
not yet completed is remembered as pending, so the next run removes it if no longer produced.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import pyarrow.compute as pc

from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import Claim, ClaimOutcome, Counts, Output, SourceRef
from sluice.env import Env
from sluice.errors import LeaseLost, ObjectNotFound, SluiceError, TerminalError, TransientError
from sluice.layout import ObjectUri, arrival_time_from_key, parse_uri
from sluice.process.columnar import (
    FastBatch,
    forget_constants,
    occurred_micros,
    partitions,
    positions,
)
from sluice.process.linecheck import check_lines
from sluice.process.lines import LineBlock, RawLine, iter_line_blocks
from sluice.process.outputs import PartitionWriter, stale_uris
from sluice.process.parse import MAX_LINE_BYTES, LineRejected, parse_line
from sluice.process.quarantine import QuarantineWriter

MISSING_ETAG = ""
FAST_BATCH_LINES = 65_536  # per DuckDB read, and per partition slice of every column
SMALLEST_BATCH = 64  # a refused batch is halved down to this, then taken line by line
PUBLISH_THREADS = 8


class ProcessOutcome(StrEnum):
    COMPLETED = "completed"
    ALREADY_COMPLETED = "already_completed"
    BUSY = "busy"
    REDRIVE_DONE = "redrive_done"


@dataclass(frozen=True)
class ProcessResult:
    source: str
    outcome: ProcessOutcome
    etag: str = ""
    counts: Counts | None = None
    outputs: tuple[Output, ...] = ()
    removed: tuple[str, ...] = ()
    busy_until: float | None = None  # epoch seconds when a BUSY claim's lease ends
    seconds: float = 0.0
    attempt: int = 0


class _Lease:
    """Keeps the claim (and, through `on_extend`, the queue message) alive while work goes on."""

    def __init__(self, env: Env, claim: Claim, on_extend: Callable[[], None] | None) -> None:
        self.env = env
        self.claim = claim
        self.seconds = env.config.lease_seconds
        self.on_extend = on_extend
        self._last = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self._last < self.seconds / 3:
            return
        self.claim = self.env.ledger.extend(self.claim, self.seconds)
        if self.on_extend is not None:
            self.on_extend()
        self._last = time.monotonic()


def _uri(output: Output) -> str:
    return f"s3://{output.bucket}/{output.key}"


def process_object(
    env: Env,
    uri: ObjectUri | str,
    *,
    force: bool = False,
    redrive_id: str | None = None,
    owner: str | None = None,
    correlation_id: str | None = None,
    on_lease_extended: Callable[[], None] | None = None,
) -> ProcessResult:
    """Process one raw object into verified rows and quarantine, replacing its previous outputs.

    `force` reprocesses an object already completed at the same ETag (a redrive); a
    `redrive_id` already completed is not processed twice.

    Raises:
        TerminalError: the object is missing, not gzip, corrupt or truncated (recorded in the
            ledger as a terminal failure: send the message to the DLQ).
        TransientError: anything that may succeed on retry (recorded as a failure too, unless
            the lease was lost to another worker).
    """
    started = time.monotonic()
    ref = parse_uri(uri) if isinstance(uri, str) else uri
    owner = owner or f"{os.uname().nodename}:{os.getpid()}"
    try:
        info = env.store.head(ref.bucket, ref.key)
        source = SourceRef(ref.bucket, ref.key, info.etag)
    except ObjectNotFound as exc:
        # Claim under an empty ETag so the failure (and its reason) lands in the ledger.
        source = SourceRef(ref.bucket, ref.key, MISSING_ETAG)
        result = env.ledger.claim(source, owner, env.config.lease_seconds, force=True)
        if result.claim is not None:
            env.ledger.fail(
                result.claim,
                exc.message,
                exc.error_class,
                terminal=True,
                correlation_id=correlation_id,
            )
        raise
    result = env.ledger.claim(
        source, owner, env.config.lease_seconds, force=force, redrive_id=redrive_id
    )
    if result.outcome is not ClaimOutcome.CLAIMED or result.claim is None:
        busy_until = None
        if result.record is not None and result.record.lease_expires_at is not None:
            busy_until = result.record.lease_expires_at.timestamp()
        return ProcessResult(
            str(ref), ProcessOutcome(result.outcome.value), info.etag, busy_until=busy_until
        )
    lease = _Lease(env, result.claim, on_lease_extended)
    try:
        arrived_at = arrival_time_from_key(ref.key) or info.last_modified
        counts, outputs, removed = _process_claimed(env, ref, lease, arrived_at)
        env.ledger.complete(lease.claim, outputs, counts, redrive_id=redrive_id)
    except BaseException as exc:
        _record_failure(env, lease.claim, exc, correlation_id)
        raise
    return ProcessResult(
        str(ref),
        ProcessOutcome.COMPLETED,
        info.etag,
        counts=counts,
        outputs=tuple(outputs),
        removed=tuple(removed),
        seconds=time.monotonic() - started,
        attempt=lease.claim.attempt,
    )


def _record_failure(env: Env, claim: Claim, exc: BaseException, correlation_id: str | None) -> None:
    if isinstance(exc, LeaseLost):
        return  # another worker owns the object now; its outcome is the one that counts
    if isinstance(exc, SluiceError):
        message, error_class = exc.message, exc.error_class
    else:
        message, error_class = f"{type(exc).__name__}: {exc}", type(exc).__name__
    with contextlib.suppress(LeaseLost):  # lost meanwhile: the new owner's outcome counts
        env.ledger.fail(
            claim,
            message,
            error_class,
            terminal=isinstance(exc, TerminalError),
            correlation_id=correlation_id,
        )


class _Lines:
    """Where each line of one object goes: the columnar batch, the row path or quarantine."""

    def __init__(self, scratch: Path, source_ref: str, env: Env, arrived_at: datetime) -> None:
        buckets = env.config.buckets
        self.scratch = scratch
        self.source_ref = source_ref
        self.arrived_at = arrived_at
        self.writer = PartitionWriter(scratch, source_ref, buckets.verified)
        self.quarantine = QuarantineWriter(
            scratch / "quarantine.jsonl.gz",
            source_ref,
            buckets.quarantine,
            arrived_at.date().isoformat(),
        )
        self.batch = FastBatch()
        self.lines = self.blank = self.good = self.rows = 0

    def take(self, block: LineBlock) -> None:
        """Every line of the block: blank ones counted, the rest sent on their way."""
        self.lines += len(block.lines)
        checked = check_lines(block.lines)  # the common case, with no Python loop
        for index in positions(checked, None):
            data = block.lines[index]
            if index not in block.sizes and (not data or data.isspace()):
                self.blank += 1
            else:
                self.decide(block.raw(index))
        self.batch.extend(block.first, block.lines, checked)
        if len(self.batch) >= FAST_BATCH_LINES:
            self.flush()

    def decide(self, line: RawLine) -> None:
        """One line by the per-line rule: a row or a quarantined line."""
        try:
            event = parse_line(line.data, self.arrived_at)
        except LineRejected as rejected:
            reason = rejected.reason
            if line.truncated:  # parse_line saw only the kept prefix
                reason = f"line is {line.size} bytes, over {MAX_LINE_BYTES}"
            self.quarantine.add(line, rejected.code, reason)
            return
        self.good += 1
        self.rows += self.writer.add(event, line.number, self.arrived_at)

    def flush(self) -> None:
        """The batched lines through the columnar path (any it cannot take, one by one)."""
        batch, self.batch = self.batch, FastBatch()
        if batch:
            self._columnar(batch)

    def _columnar(self, batch: FastBatch) -> None:
        table = batch.read(self.scratch)
        if table is None:
            # The reader refused a line the check passed (a duplicate key, say): halve the
            # batch until the lines it refuses are few, and take those one by one.
            if len(batch) > SMALLEST_BATCH:
                half = len(batch) // 2
                self._columnar(batch.slice(0, half))
                self._columnar(batch.slice(half))
                return
            for number, data in zip(batch.numbers, batch.lines, strict=True):
                self.decide(RawLine(number, data, len(data)))
            return
        texts = pc.struct_field(table.column("envelope").combine_chunks(), "occurred_at")
        occurred_us = occurred_micros(texts, self.arrived_at)
        if occurred_us.null_count:  # the per-line rule decides these (and explains a rejection)
            valid = occurred_us.is_valid()
            for index in positions(valid.to_pylist(), False):
                data = batch.lines[index]
                self.decide(RawLine(batch.numbers[index], data, len(data)))
            batch = batch.subset(pc.indices_nonzero(valid).to_pylist())
            table, occurred_us = table.filter(valid), occurred_us.drop_null()
            if not batch:
                return
        self.good += len(batch)
        parts = partitions(batch, table, occurred_us, self.source_ref, self.arrived_at)
        for type_, day, hour, part in parts:
            self.writer.add_table(type_, day, hour, part)
            self.rows += part.num_rows

    def counts(self) -> Counts:
        return Counts(
            lines=self.lines,
            blank_lines=self.blank,
            good_lines=self.good,
            quarantined_lines=self.quarantine.count,
            rows=self.rows,
            quarantine_reasons=dict(self.quarantine.reasons),
        )


def _process_claimed(
    env: Env, ref: ObjectUri, lease: _Lease, arrived_at: datetime
) -> tuple[Counts, list[Output], list[str]]:
    with tempfile.TemporaryDirectory(prefix="sluice-") as scratch_dir:
        lines = _Lines(Path(scratch_dir), str(ref), env, arrived_at)
        try:
            with env.store.open(ref.bucket, ref.key) as stream:
                for block in iter_line_blocks(stream, str(ref)):
                    lease.tick()
                    lines.take(block)
            lines.flush()
            files = lines.writer.close() + lines.quarantine.close()
        except BaseException:
            lines.writer.abort()
            lines.quarantine.abort()
            raise
        finally:
            forget_constants()
        outputs = [out for out, _ in files]
        removed = _publish(env, lease, files)
    return lines.counts(), outputs, removed


def _publish(env: Env, lease: _Lease, files: list[tuple[Output, Path]]) -> list[str]:
    """Write new files, register their partitions, then remove what the source no longer makes."""
    record = env.ledger.get(lease.claim.source.bucket, lease.claim.source.key)
    pending = record.pending_outputs if record else ()
    previous = [*(o.uri for o in record.outputs), *pending] if record else []
    new = [_uri(out) for out, _ in files]
    # Pending URIs are those written but not yet completed: a run that dies after this point
    # leaves them for the next run to remove if it no longer produces them.
    env.ledger.record_pending_outputs(lease.claim, sorted({*pending, *new}))
    # Several puts at once: on S3 each is a round trip, locally each waits for its fsync.
    with ThreadPoolExecutor(PUBLISH_THREADS, thread_name_prefix="publish") as pool:
        puts = [pool.submit(env.store.put_file, out.bucket, out.key, path) for out, path in files]
        for put in as_completed(puts):
            put.result()
            lease.tick()
    partitions: dict[str, set[Partition]] = defaultdict(set)
    for output, _ in files:
        if output.hour:
            partitions[output.table].add(Partition((output.day, output.hour)))
    for table, parts in partitions.items():
        env.catalog.add_partitions(table, sorted(parts))
    stale = stale_uris(previous, new)
    by_bucket: dict[str, list[str]] = defaultdict(list)
    for uri in stale:
        target = parse_uri(uri)
        by_bucket[target.bucket].append(target.key)
    for bucket, keys in by_bucket.items():
        for start in range(0, len(keys), 1000):
            deleted = env.store.delete_batch(bucket, keys[start : start + 1000])
            if deleted.errors:
                raise TransientError(
                    f"could not remove {len(deleted.errors)} stale output(s): "
                    f"{sorted(deleted.errors.items())[:3]}",
                    source_ref=str(lease.claim.source.uri),
                )
    return stale
