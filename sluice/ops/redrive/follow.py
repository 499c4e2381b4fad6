"""Following a run to its end, then the rest of the runbook: orphans, repair, verify.

A source is done when its ledger record completed after the run started (by this run's
message, or any later one: either rebuilt its outputs). It failed when its record failed
terminally since then (its message went to the DLQ), or when the processing queue has held
nothing for the settle period while the source is still not done (its message was
dead-lettered after its retries, or lost). A failure that the queue will retry is shown as it
happens and followed on.

The tracker reads the chunk files again on every sweep rather than holding the source list: it
keeps one byte of state per source of the chunks not yet finished.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sluice.backends.ledger.base import FileRecord, FileStatus
from sluice.catalog.repair import repair
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import parse_uri, parse_verified_key, table_name
from sluice.ops.redrive.model import (
    SAMPLES,
    FinishResult,
    FollowResult,
    FollowSettings,
    KeptFile,
    OnEvent,
    RedriveEvent,
)
from sluice.ops.redrive.runfiles import RunFiles
from sluice.ops.redrive.sources import HEAD_THREADS
from sluice.serialize import to_jsonable

PENDING, RETRYING, DONE, FAILED = 0, 1, 2, 3


class Tracker:
    """Where each source of a run stands, one sweep of the ledger at a time."""

    def __init__(
        self, env: Env, files: RunFiles, manifest: dict[str, Any], on_event: OnEvent | None
    ) -> None:
        self.env = env
        self.files = files
        self.started = datetime.fromisoformat(manifest["created_at"])
        self.on_event = on_event
        self.result = FollowResult(total=int(manifest["sources"]))
        self.open_chunks = list(range(int(manifest["chunks"])))
        self.states: dict[int, bytearray] = {}
        self.touched: dict[str, set[str]] = defaultdict(set)
        for day, types in manifest.get("touched", {}).items():
            self.touched[day].update(types)

    def _emit(self, kind: str, source: str = "", detail: str = "") -> None:
        if self.on_event is not None:
            r = self.result
            self.on_event(RedriveEvent(kind, r.done + r.failed_count, r.total, source, detail))

    def _fail(self, uri: str, reason: str) -> None:
        self.result.failed_count += 1
        if len(self.result.failed) < SAMPLES:
            self.result.failed.append(f"{uri}: {reason}")
        self._emit("failed", uri, reason)

    def sweep(self) -> bool:
        """Read the ledger for every source not settled yet; True once all are settled."""
        still_open = []
        pending: list[str] = []
        with ThreadPoolExecutor(HEAD_THREADS) as pool:
            for number in self.open_chunks:
                chunk = self.files.get_chunk("chunks", number)
                assert chunk is not None, f"chunk {number} of run {self.files.run_id} is missing"
                uris = [item[0] for item in chunk["items"]]
                states = self.states.setdefault(number, bytearray(len(uris)))
                todo = [i for i, s in enumerate(states) if s in (PENDING, RETRYING)]
                records = pool.map(self._record, [uris[i] for i in todo])
                for i, record in zip(todo, records, strict=True):
                    states[i] = self._judge(uris[i], states[i], record)
                    if states[i] in (PENDING, RETRYING) and len(pending) < SAMPLES:
                        pending.append(uris[i])
                if any(s in (PENDING, RETRYING) for s in states):
                    still_open.append(number)
                else:
                    del self.states[number]
        self.open_chunks = still_open
        self.result.pending = self.result.total - self.result.done - self.result.failed_count
        self.result.pending_samples = pending
        self._emit("progress")
        return not still_open

    def _record(self, uri: str) -> FileRecord | None:
        ref = parse_uri(uri)
        return self.env.ledger.get(ref.bucket, ref.key)

    def _judge(self, uri: str, state: int, record: FileRecord | None) -> int:
        if record is None:
            return state
        completed_at = record.completed_at
        if record.status is FileStatus.COMPLETED and completed_at and completed_at > self.started:
            self.result.done += 1
            for output in record.outputs:
                parsed = parse_verified_key(output.key) if output.hour else None
                if parsed is not None:
                    self.touched[parsed.day].add(parsed.type)
            return DONE
        if record.status is FileStatus.FAILED and record.updated_at > self.started:
            reason = f"{record.error_class}: {record.last_error}"
            if record.terminal:
                self._fail(uri, reason)
                return FAILED
            if state != RETRYING:
                self._emit("retrying", uri, reason)
            return RETRYING
        return state

    def give_up(self, why: str) -> None:
        """Count every source still open as failed, with `why`."""
        for number in self.open_chunks:
            chunk = self.files.get_chunk("chunks", number)
            assert chunk is not None
            states = self.states.get(number, bytearray(len(chunk["items"])))
            for i, item in enumerate(chunk["items"]):
                if states[i] in (PENDING, RETRYING):
                    self._fail(item[0], why)
        self.open_chunks = []
        self.result.pending = 0

    def touched_days(self) -> dict[str, list[str]]:
        return {day: sorted(types) for day, types in sorted(self.touched.items())}


def follow(tracker: Tracker, env: Env, settings: FollowSettings) -> FollowResult:
    """Sweep until every source is settled, the queue runs dry or the timeout passes."""
    began = time.monotonic()
    idle_since: float | None = None
    while not tracker.sweep():
        now = time.monotonic()
        counts = env.processing_queue.counts()
        idle = counts.visible + counts.in_flight + counts.delayed == 0
        idle_since = (idle_since or now) if idle else None
        if idle_since is not None and now - idle_since >= settings.settle_seconds:
            tracker.give_up(
                "not reprocessed, and the processing queue is empty: its message went to the"
                " DLQ or was lost (sluice dlq list; sluice ledger list --status failed)"
            )
            break
        if now - began >= settings.timeout_seconds:
            tracker.result.timed_out = True
            break
        time.sleep(settings.poll_seconds)
    tracker.result.seconds = round(time.monotonic() - began, 3)
    tracker.result.touched = tracker.touched_days()
    return tracker.result


def finish(
    env: Env,
    files: RunFiles,
    manifest: dict[str, Any],
    touched: dict[str, list[str]],
    *,
    yes: bool,
    on_event: OnEvent | None = None,
) -> FinishResult:
    """Remove the orphans whose sources are all done, repair the touched tables' partitions,
    verify the touched days (duplicates and counts), and record what was done."""
    # Imported here: verify reads the compacted tables (pyiceberg), which only --wait and
    # --finish need, not every redrive.
    from sluice.ops.verify import Check, Verdict, verify

    result = FinishResult()
    started = datetime.fromisoformat(manifest["created_at"])
    done: dict[str, bool] = {}

    def reprocessed(uri: str) -> bool:
        if uri not in done:
            ref = parse_uri(uri)
            record = env.ledger.get(ref.bucket, ref.key)
            done[uri] = (
                record is not None
                and record.status is FileStatus.COMPLETED
                and record.completed_at is not None
                and record.completed_at > started
            )
        return done[uri]

    bucket = env.config.buckets.verified
    for number in range(int(manifest.get("orphan_chunks", 0))):
        chunk = files.get_chunk("orphans", number)
        assert chunk is not None, f"orphan chunk {number} of run {files.run_id} is missing"
        keys = []
        for orphan in chunk["items"]:
            waiting = [s for s in orphan["sources"] if not reprocessed(s)]
            if waiting:
                reason = f"its rows' source {waiting[0]} was not reprocessed by this run"
                result.orphans_kept.append(KeptFile(orphan["uri"], reason))
            else:
                keys.append(parse_uri(orphan["uri"]).key)
        if keys:
            deleted = env.store.delete_batch(bucket, keys)
            result.orphans_removed += len(deleted.deleted)
            result.orphan_errors.update(deleted.errors)
        if on_event is not None:
            total = int(manifest["orphans"])
            detail = f"{result.orphans_removed} of {total} removed"
            on_event(RedriveEvent("orphans", result.orphans_removed, total, detail=detail))
    types = sorted({t for ts in touched.values() for t in ts})
    for type_ in types:
        if on_event is not None:
            on_event(RedriveEvent("repair", detail=table_name(type_)))
        try:
            repaired = repair(env, table=table_name(type_), yes=yes)
        except ConfigError:
            continue  # a table this environment does not have (not set up): nothing to repair
        result.partitions_added += sum(t.added for t in repaired.tables)
        result.partitions_dropped += sum(t.dropped for t in repaired.tables)
    for day, day_types in sorted(touched.items()):
        if on_event is not None:
            on_event(RedriveEvent("verify", detail=f"{day}: {', '.join(day_types)}"))
        # Only the verdicts are used: no sample queries (on Athena each one costs a scan).
        report = verify(env, day, day_types, [Check.DUPLICATES, Check.COUNTS], samples=0)
        failures = [
            f"{r.table} {r.check.value}: {f.name}: {f.message}"
            for r in report.results
            for f in r.findings
            if f.verdict is Verdict.FAIL
        ]
        result.verify_failed |= report.failed
        result.verify.append(
            {"day": day, "types": day_types, "verdict": report.verdict.value, "failures": failures}
        )
    finished = {"finished_at": datetime.now(started.tzinfo).isoformat()}
    files.put("finish.json", finished | {"result": to_jsonable(result)})
    return result
