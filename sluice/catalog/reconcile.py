"""The reconciler: the scheduled safety net between the store, the ledger and the catalog.

Every run looks at the raw objects that arrived in the last few hours and
- enqueues a `process_raw_file` for each one the ledger has not completed at its current ETag
  and that nobody holds a live lease on (a lost S3 notification, a message that expired);
- registers the partitions of every output the ledger lists for those objects that the catalog
  lacks (a partition dropped by hand, a crash between upload and registration).
It is idempotent: a second run right after the first changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import FileStatus
from sluice.backends.queue.base import MAX_BATCH, OutgoingMessage
from sluice.env import Env
from sluice.errors import TransientError
from sluice.layout import RAW_TELEMETRY_PREFIX, ObjectUri
from sluice.messages import process_raw_file

DEFAULT_LOOKBACK_HOURS = 3
# An object younger than this is left to its own notification, so that a healthy pipeline is
# not sent every object twice.
DEFAULT_MIN_AGE = timedelta(minutes=10)


@dataclass
class ReconcileResult:
    raw_objects_seen: int = 0
    enqueued: list[str] = field(default_factory=list)
    partitions_added: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def arrival_prefixes(now: datetime, hours: int) -> Iterator[str]:
    """Raw prefixes of the arrival hours from `now - hours` to `now`, oldest first."""
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for back in range(hours, -1, -1):
        t = start - timedelta(hours=back)
        yield f"{RAW_TELEMETRY_PREFIX}year={t:%Y}/month={t:%m}/day={t:%d}/hour={t:%H}/"


def reconcile(
    env: Env,
    *,
    lookback_hours: int = DEFAULT_LOOKBACK_HOURS,
    min_age: timedelta = DEFAULT_MIN_AGE,
    now: datetime | None = None,
    dry_run: bool = False,
) -> ReconcileResult:
    now = now or datetime.now(UTC)
    result = ReconcileResult(dry_run=dry_run)
    outbox: list[OutgoingMessage] = []
    missing: dict[str, set[Partition]] = defaultdict(set)
    raw = env.config.buckets.raw
    for prefix in arrival_prefixes(now, lookback_hours):
        for info in env.store.list(raw, prefix):
            result.raw_objects_seen += 1
            record = env.ledger.get(raw, info.key)
            done = record is not None and record.status is FileStatus.COMPLETED
            if done and record is not None and record.etag == info.etag:
                for output in record.outputs:
                    if output.hour:
                        missing[output.table].add(Partition((output.day, output.hour)))
                continue
            leased = (
                record is not None
                and record.status is FileStatus.PROCESSING
                and not record.is_stuck(now)
            )
            if not leased and info.last_modified <= now - min_age:
                result.enqueued.append(info.uri)
                outbox.append(process_raw_file(ObjectUri(raw, info.key)))
    for table, wanted in missing.items():
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
