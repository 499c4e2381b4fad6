"""Compaction (DESIGN §2): verified rows → deduplicated daily Iceberg tables → 15-minute rollups.

- `daily.compact_day(env, type, day)`: `int_<type>_compacted_daily`, one atomic commit per day;
- `rollup.build_rollup(env, type, day, force=False)`: `telemetry_<type>_refined_15m`;
- `run.compact(env, day=… | changed=True)`: what `sluice compact` runs (plan, then both);
- `state`: the per-day state each lake table keeps, and the registry digests `--changed` reads.
"""

from sluice.compact.daily import CompactResult, CompactStatus, compact_day, compacted_rows
from sluice.compact.rollup import RollupResult, RollupStatus, build_rollup
from sluice.compact.run import CompactRun, PlannedDay, compact, plan_changed

__all__ = [
    "CompactResult",
    "CompactRun",
    "CompactStatus",
    "PlannedDay",
    "RollupResult",
    "RollupStatus",
    "build_rollup",
    "compact",
    "compact_day",
    "compacted_rows",
    "plan_changed",
]
