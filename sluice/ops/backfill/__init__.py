"""`sluice backfill`: historical work (registering partitions, building 15-minute rollups) cut
into chunks that run in parallel, fail and are rerun on their own, and resume after a kill.

- `plan.py`: `plan_partitions`, `plan_refine` write a run's chunk files and its manifest;
- `run.py`: `run_backfill` executes the chunks, writing each one's outcome;
- `runs.py`: the run's files in the lake bucket (DESIGN §3) and `run_status`;
- `limiter.py`: retries with backoff and lower concurrency while a backend throttles.
"""

from sluice.ops.backfill.limiter import Backoff, Limiter
from sluice.ops.backfill.plan import PlanResult, plan_partitions, plan_refine
from sluice.ops.backfill.run import RunResult, run_backfill
from sluice.ops.backfill.runs import (
    ChunkResult,
    ChunkStatus,
    Kind,
    RunStatus,
    UnknownBackfillRun,
    run_status,
)

__all__ = [
    "Backoff",
    "ChunkResult",
    "ChunkStatus",
    "Kind",
    "Limiter",
    "PlanResult",
    "RunResult",
    "RunStatus",
    "UnknownBackfillRun",
    "plan_partitions",
    "plan_refine",
    "run_backfill",
    "run_status",
]
