"""`sluice redrive`: reprocess raw objects in bulk, safely (DESIGN §1 promises 1, 2 and 5).

One call is the whole bulk-redrive runbook: find the sources (one object, a prefix, a verified
file's sources, or a table's day), check that each raw object exists, optionally delete the old
files first, send `redrive_raw_file` messages in batches of ten with a rate limit and
backpressure, then (`wait`) follow the sources through the queue and the ledger, remove the
orphans, repair the catalog and verify the days touched. A run keeps its progress in the store
and resumes without sending twice what it sent.

- `model.py`: the request, the result, the errors;
- `plan.py`: sources, files to delete, orphans; `sources.py`: the reads behind them;
- `send.py`: batches, pacing, backpressure; `follow.py`: following and finishing;
- `runfiles.py`: the run's files in the lake bucket; `run.py`: the entry function.
"""

from sluice.ops.redrive.model import (
    FinishResult,
    FollowResult,
    FollowSettings,
    KeptFile,
    MissingSources,
    Mode,
    Orphan,
    Pacing,
    RedriveEvent,
    RedriveInterrupted,
    RedriveRequest,
    RedriveResult,
    SendStats,
    SourcesPending,
    Target,
    UnknownRun,
)
from sluice.ops.redrive.plan import describe_plan
from sluice.ops.redrive.run import redrive
from sluice.ops.redrive.runfiles import RUNS_PREFIX, recent_runs

__all__ = [
    "RUNS_PREFIX",
    "FinishResult",
    "FollowResult",
    "FollowSettings",
    "KeptFile",
    "MissingSources",
    "Mode",
    "Orphan",
    "Pacing",
    "RedriveEvent",
    "RedriveInterrupted",
    "RedriveRequest",
    "RedriveResult",
    "SendStats",
    "SourcesPending",
    "Target",
    "UnknownRun",
    "describe_plan",
    "recent_runs",
    "redrive",
]
