"""The ledger and file registry: which raw objects are processed, by whom, into what.

One record per raw object (bucket, key). The record remembers the ETag it was processed at: an
object whose ETag changed is a new input, whose outputs replace the old one's. Statuses change
only through the verbs below; "stuck" (a claim whose lease ran out) is computed from the lease
time, never stored.

Lease timeline of a claim::

    claim(lease=30s) ── extend(30s) ── extend(30s) ── complete()      normal
    claim(lease=30s) ── (worker dies) ── lease expires ── claim() by another worker wins

`complete`, `fail`, `extend` and `record_pending_outputs` succeed only while the caller still
holds the claim (same token, still processing); otherwise they raise `LeaseLost` and change
nothing. An expired lease that nobody took over is still held: the token decides, not the clock.

Every verb may also raise `BackendBusy` (a `TransientError`: the backend is locked, throttling or
unreachable; retry) and `ConfigError` (the ledger's store is missing or not allowed).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class FileStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class SourceRef:
    """A raw object as the ledger identifies it: bucket, key and ETag."""

    bucket: str
    key: str
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Output:
    """One file written from a source object."""

    bucket: str
    key: str
    table: str
    day: str
    hour: str
    rows: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Counts:
    """What processing one raw object found: lines = blank + good + quarantined."""

    lines: int = 0
    blank_lines: int = 0
    good_lines: int = 0
    quarantined_lines: int = 0
    rows: int = 0
    quarantine_reasons: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    source: SourceRef
    owner: str
    token: str
    attempt: int
    lease_expires_at: datetime


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    ALREADY_COMPLETED = "already_completed"  # same ETag, completed, not forced
    BUSY = "busy"  # another owner holds an unexpired lease
    REDRIVE_DONE = "redrive_done"  # this redrive id was already processed


@dataclass(frozen=True)
class FileRecord:
    bucket: str
    key: str
    etag: str
    status: FileStatus
    attempts: int
    owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    error_class: str | None
    terminal: bool
    outputs: tuple[Output, ...]
    pending_outputs: tuple[str, ...]
    counts: Counts | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def is_stuck(self, now: datetime) -> bool:
        return (
            self.status is FileStatus.PROCESSING
            and self.lease_expires_at is not None
            and self.lease_expires_at <= now
        )


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    claim: Claim | None = None
    record: FileRecord | None = None


@dataclass(frozen=True)
class FailureEvent:
    """One failed attempt, kept for `dlq inspect` and `ledger list`."""

    bucket: str
    key: str
    etag: str
    attempt: int
    error_class: str
    error: str
    terminal: bool
    correlation_id: str | None
    at: datetime


@dataclass(frozen=True)
class Receipt:
    """What ingest wrote into one raw object: the lines it holds."""

    bucket: str
    key: str
    lines: int
    bytes: int
    received_at: datetime


class Ledger(Protocol):
    def claim(
        self,
        source: SourceRef,
        owner: str,
        lease_seconds: float,
        *,
        force: bool = False,
        redrive_id: str | None = None,
    ) -> ClaimResult:
        """Take the object for processing, conditionally: one winner among concurrent claimers.

        Outcomes, in the order they are checked:
        REDRIVE_DONE when `redrive_id` was already completed for this object (done redrives are
        kept per bucket, key and id: one redrive run sends its id with many objects);
        BUSY when the record is processing under an unexpired lease, whoever asks (the same
        owner included: a claim carries no token, so asking again is a second claim);
        ALREADY_COMPLETED when the record is completed at the same ETag and `force` is false;
        otherwise CLAIMED (from pending, failed, completed-and-forced, a changed ETag, or an
        expired lease), with a fresh token, the caller as owner and attempts incremented, or
        restarted at 1 when the ETag changed (a new input; its old outputs stay on the record
        until `complete` replaces them).

        CLAIMED carries the record as claimed; the others the record as read (None if the
        object is unknown). A claimer that loses a race to a concurrent write decides again on
        the winner's write (so it is BUSY); one that cannot settle raises `BackendBusy`.
        """
        ...

    def extend(self, claim: Claim, lease_seconds: float) -> Claim:
        """Push the lease forward. Raises: LeaseLost."""
        ...

    def record_pending_outputs(self, claim: Claim, keys: Sequence[str]) -> None:
        """Remember keys about to be written, so a later run removes them if it no longer
        produces them, even when this run dies before `complete`. Adds to the keys already
        pending (a union, in order of first appearance): keys of runs that died stay remembered
        until a `complete` clears them. Raises: LeaseLost."""
        ...

    def complete(
        self,
        claim: Claim,
        outputs: Sequence[Output],
        counts: Counts,
        *,
        redrive_id: str | None = None,
    ) -> FileRecord:
        """Mark completed with its outputs (replacing the previous ones) and counts; clears
        pending outputs, the last error and the lease, keeps the owner (who completed it);
        records `redrive_id` as done for this object, atomically with the completion.
        Raises: LeaseLost."""
        ...

    def fail(
        self,
        claim: Claim,
        error: str,
        error_class: str,
        *,
        terminal: bool,
        correlation_id: str | None = None,
    ) -> FileRecord:
        """Mark failed with the reason; keeps the previous outputs (they stay valid), the pending
        outputs and the owner, clears the lease, and appends to the failure history (atomically
        with the status change). A failed record is claimable again without `force`.
        Raises: LeaseLost."""
        ...

    def reset(self, bucket: str, key: str) -> FileRecord | None:
        """Release a record to PENDING whatever its status (meant for stuck or failed ones):
        clears owner and lease, keeps outputs and attempts; the holder of a claim it released
        gets `LeaseLost` on its next verb. None if unknown."""
        ...

    def forget(self, bucket: str, key: str, *, updated_before: datetime | None = None) -> bool:
        """Delete a completed object's record with its failure history and done redrive ids,
        only while it is completed and (given `updated_before`) was last updated strictly
        before that time: the check and the delete of the record are one conditional write, so
        a record claimed again meanwhile stays. Its receipt stays (what ingest wrote is still
        true, and count checks read it). True if the record was deleted; False if unknown,
        not completed, or updated since.

        A forgotten object is unknown to the ledger: a message about it processes it as a new
        input. Forget only records older than any message about them can be (`sluice ledger
        cleanup` holds that rule)."""
        ...

    def get(self, bucket: str, key: str) -> FileRecord | None: ...

    def list(
        self,
        *,
        status: FileStatus | None = None,
        updated_before: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[FileRecord]:
        """Records, oldest update first, optionally by status and age (`updated_at` strictly
        before `updated_before`), at most `limit`; yielded lazily, a page at a time."""
        ...

    def failures(self, bucket: str, key: str) -> builtins.list[FailureEvent]:
        """The failure history of one object, oldest first."""
        ...

    def record_receipt(self, receipt: Receipt) -> None:
        """Record what ingest wrote into a raw object. Idempotent per bucket and key: the first
        receipt wins, a later one (replayed or different) changes nothing."""
        ...

    def get_receipt(self, bucket: str, key: str) -> Receipt | None: ...

    def receipts(self) -> Iterator[Receipt]: ...
