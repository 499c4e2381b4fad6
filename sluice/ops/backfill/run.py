"""Running a backfill: execute a run's chunks on threads, write each one's outcome.

Which chunks run: by default every chunk without a succeeded result (a killed run resumes
where it stopped, the chunks it finished are not done again); `failed_only` only the chunks
whose last outcome failed (`sluice backfill rerun RUN_ID --failed`); `chunk_keys` exactly the
chunks named, whatever their last outcome (the operator asked for them).

A chunk is safe to run again, so "at least once" is all the result files need to promise:
- partitions: `Catalog.add_partitions` with the chunk's partitions (the implementations batch
  within the backend's limits; a partition already registered is no error);
- refine-15m: for each day and type, `build_rollup`, which skips a day already built from the
  day's current compaction unless `force`. A day never compacted is compacted first
  (`compact_day`): the rollup is built from the compacted table, and a backfill over history
  that compaction never reached would otherwise build nothing. A day with no verified rows
  builds nothing and is reported `empty`.

A chunk's failure (any `Exception`) is written to its result file and the run goes on.
`KeyboardInterrupt` and `SystemExit` are not failures of the chunk: no chunk is started after
one, the chunks running finish and write their results, and the interruption propagates, so
running the run again resumes it. Two processes running the same run at once would both do
the chunks pending at that moment (harmless, since chunks are idempotent, but wasted work).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sluice.backends.catalog.base import Partition
from sluice.compact import RollupStatus, build_rollup, compact_day
from sluice.compact.daily import compacted_schema
from sluice.compact.rollup import rollup_schema
from sluice.compact.state import compacted_table, rollup_table
from sluice.env import Env
from sluice.errors import ConfigError, SluiceError
from sluice.ops.backfill.limiter import Backoff, Limiter
from sluice.ops.backfill.runs import (
    ChunkResult,
    ChunkStatus,
    Kind,
    Manifest,
    RunStatus,
    RunStore,
    open_run,
    status_of,
)

DEFAULT_CONCURRENCY = 4

OnRunProgress = Callable[[int, int, ChunkResult], None]
"""Called after each chunk with the chunks finished so far, the chunks selected, the outcome."""


@dataclass
class RunResult:
    run_id: str
    kind: Kind
    selected: list[str]  # the chunks this call set out to run
    skipped: int  # chunks not selected because their last outcome succeeded
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # chunk → error message
    max_concurrency: int = DEFAULT_CONCURRENCY
    lowest_concurrency: int = DEFAULT_CONCURRENCY  # lowered while throttled
    throttles: int = 0  # throttled calls, each retried after a backoff
    # What the succeeded chunks did: partitions planned and newly added, or (type, day) units
    # by outcome (built, skipped, empty).
    tally: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    status: RunStatus | None = None  # the whole run's, after this call

    @property
    def ok(self) -> bool:
        return not self.failed


def run_backfill(
    env: Env,
    run_id: str,
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    force: bool = False,
    chunk_keys: Sequence[str] | None = None,
    failed_only: bool = False,
    backoff: Backoff | None = None,
    on_progress: OnRunProgress | None = None,
) -> RunResult:
    """Run the chosen chunks of a planned run, `max_concurrency` at a time at most.

    Raises:
        UnknownBackfillRun: no such run.
        ConfigError: a concurrency below 1, a chunk key the run does not have, or both
            `chunk_keys` and `failed_only`.
        KeyboardInterrupt, SystemExit: passed on once the chunks running have finished.
    """
    if max_concurrency < 1:
        raise ConfigError(
            f"--max-concurrency must be at least 1, not {max_concurrency}",
            hint="e.g. --max-concurrency 4",
        )
    if chunk_keys and failed_only:
        raise ConfigError("give either chunk keys or --failed, not both")
    store, manifest = open_run(env, run_id)
    selected, skipped = _select(store, manifest, chunk_keys, failed_only)
    limiter = Limiter(max_concurrency, backoff)
    result = RunResult(run_id, manifest.kind, selected, skipped, max_concurrency=max_concurrency)
    started = time.monotonic()
    if manifest.kind is Kind.REFINE_15M and selected:
        _prepare_lake(env, [str(t) for t in manifest.params["types"]])
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="backfill") as pool:
        futures: list[Future[ChunkResult | None]] = [
            pool.submit(_run_chunk, env, store, manifest.kind, key, force, limiter, stop)
            for key in selected
        ]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                if outcome is None:
                    continue
                if outcome.status is ChunkStatus.SUCCEEDED:
                    result.succeeded.append(outcome.chunk)
                    _add_tally(result.tally, outcome.detail)
                else:
                    result.failed[outcome.chunk] = str((outcome.error or {}).get("message"))
                if on_progress is not None:
                    on_progress(len(result.succeeded) + len(result.failed), len(selected), outcome)
        except BaseException:
            # Start nothing more; `with` then waits for the chunks running to write results.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    result.succeeded.sort()
    result.failed = dict(sorted(result.failed.items()))
    result.lowest_concurrency = limiter.lowest
    result.throttles = limiter.throttles
    result.seconds = round(time.monotonic() - started, 3)
    result.status = status_of(store, manifest)
    return result


def _add_tally(tally: dict[str, int], detail: dict[str, Any]) -> None:
    counts = detail.get("counts") or {k: detail[k] for k in ("partitions", "added") if k in detail}
    for name, value in counts.items():
        tally[name] = tally.get(name, 0) + int(value)


def _prepare_lake(env: Env, types: list[str]) -> None:
    """Create the lake tables the chunks write, once, before the threads start: the first
    creation of the embedded lake's namespace is not safe against a concurrent one (two
    threads both insert it: an IntegrityError), and later calls find everything there."""
    for type_ in types:
        env.lake.ensure_table(compacted_table(type_), compacted_schema(type_))
        env.lake.ensure_table(rollup_table(type_), rollup_schema(type_))


def _select(
    store: RunStore, manifest: Manifest, chunk_keys: Sequence[str] | None, failed_only: bool
) -> tuple[list[str], int]:
    planned = manifest.chunk_keys()
    last = {r.chunk: r.status for r in store.results()}
    succeeded = sum(1 for k in planned if last.get(k) is ChunkStatus.SUCCEEDED)
    if chunk_keys:
        known = set(planned)
        unknown = [k for k in chunk_keys if k not in known]
        if unknown:
            raise ConfigError(
                f"run {manifest.run_id} has no chunk {', '.join(map(repr, unknown))}",
                hint=f"its chunks are chunk-00000 … {planned[-1] if planned else 'none'}; "
                f"sluice backfill status {manifest.run_id}",
                run_id=manifest.run_id,
            )
        return list(dict.fromkeys(chunk_keys)), 0
    if failed_only:
        failed = [k for k in planned if last.get(k) is ChunkStatus.FAILED]
        return failed, succeeded
    return [k for k in planned if last.get(k) is not ChunkStatus.SUCCEEDED], succeeded


def _run_chunk(
    env: Env,
    store: RunStore,
    kind: Kind,
    key: str,
    force: bool,
    limiter: Limiter,
    stop: threading.Event,
) -> ChunkResult | None:
    if stop.is_set():
        return None
    started_at = datetime.now(UTC).isoformat()
    started = time.monotonic()
    attempts = 0

    def count() -> None:
        nonlocal attempts
        attempts += 1

    try:
        chunk = store.get_chunk(key)
        if kind is Kind.PARTITIONS:
            detail = _partitions(env, chunk, limiter, count)
        else:
            detail = _refine(env, chunk, force, limiter, count)
        status, error = ChunkStatus.SUCCEEDED, None
    except Exception as exc:  # any failure of the chunk is its outcome, the run goes on
        status, detail = ChunkStatus.FAILED, {}
        error = (
            exc.to_dict()
            if isinstance(exc, SluiceError)
            else {"error": type(exc).__name__, "message": str(exc)}
        )
    seconds = round(time.monotonic() - started, 3)
    outcome = ChunkResult(key, status, started_at, seconds, attempts, error, detail)
    store.put_result(outcome)
    return outcome


def _partitions(
    env: Env, chunk: dict[str, Any], limiter: Limiter, count: Callable[[], None]
) -> dict[str, Any]:
    table = str(chunk["table"])
    partitions = [Partition(tuple(str(v) for v in values)) for values in chunk["partitions"]]
    added = limiter.call(lambda: env.catalog.add_partitions(table, partitions), count)
    return {"table": table, "partitions": len(partitions), "added": added}


def _refine(
    env: Env, chunk: dict[str, Any], force: bool, limiter: Limiter, count: Callable[[], None]
) -> dict[str, Any]:
    units = []
    for day in chunk["days"]:
        for type_ in chunk["types"]:
            units.append(_refine_day(env, str(type_), str(day), force, limiter, count))
    tally: dict[str, int] = {}
    for unit in units:
        tally[unit["status"]] = tally.get(unit["status"], 0) + 1
    return {"counts": tally, "units": units}


def _refine_day(
    env: Env, type_: str, day: str, force: bool, limiter: Limiter, count: Callable[[], None]
) -> dict[str, Any]:
    rollup = limiter.call(lambda: build_rollup(env, type_, day, force=force), count)
    compacted = False
    if rollup.status is RollupStatus.NOT_COMPACTED:
        built = limiter.call(lambda: compact_day(env, type_, day), count)
        if built.build is None:
            return {"type": type_, "day": day, "status": "empty", "rows": 0, "compacted": False}
        compacted = True
        rollup = limiter.call(lambda: build_rollup(env, type_, day, force=force), count)
    return {
        "type": type_,
        "day": day,
        "status": rollup.status.value,
        "rows": rollup.rows,
        "compacted": compacted,
    }
