"""`sluice compact`: which (type, day) units to rebuild, then compaction and rollups for each.

`--date D` rebuilds that day of every type asked for; `--changed` rebuilds every day whose
registry digest differs from the one its last compaction stored (`state.py`), found with one
pass over the ledger and one read of each compacted table's properties: the verified store is
not listed. Either way the ledger is read once, before any data, so a file that completes while
a day is being rebuilt changes the day's digest again and the next `--changed` takes it up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sluice.compact.daily import CompactResult, compact_day, compaction_states
from sluice.compact.rollup import RollupResult, build_rollup
from sluice.compact.state import (
    DayDigest,
    known_types,
    registry_digests,
)
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import check_day, check_type


class Reason(StrEnum):
    REQUESTED = "requested"  # --date
    NEVER_COMPACTED = "never_compacted"
    FILES_CHANGED = "files_changed"
    FILES_GONE = "files_gone"  # the registry lists no output on the day any more


@dataclass(frozen=True)
class PlannedDay:
    type: str
    day: str
    reason: Reason
    sources: int  # raw objects the registry lists with outputs on the day
    digest: str  # the registry digest the rebuild will record


@dataclass(frozen=True)
class CompactRun:
    mode: str  # "date" | "changed"
    types: list[str]
    planned: list[PlannedDay]
    compacted: list[CompactResult] = field(default_factory=list)
    rollups: list[RollupResult] = field(default_factory=list)
    dry_run: bool = False


Progress = Callable[[int, int, str], None]  # (units done, units planned, what finished)


def plan_changed(env: Env, types: Sequence[str] | None = None) -> list[PlannedDay]:
    """The (type, day) units whose verified files changed since they were last compacted,
    including days never compacted and days the registry no longer lists outputs on. Reads
    only the ledger and the compacted tables' properties (this is what `sluice doctor` can
    show as compaction freshness)."""
    chosen = _types(types)
    return [unit for unit, _ in _changed(chosen, registry_digests(env.ledger, chosen), env)]


def compact(
    env: Env,
    *,
    day: str | None = None,
    types: Sequence[str] | None = None,
    changed: bool = False,
    rollups: bool = True,
    dry_run: bool = False,
    on_progress: Progress | None = None,
) -> CompactRun:
    """Rebuild the compacted days asked for (one `day`, or every `changed` one) of `types`
    (default: all), and then each one's 15-minute rollup (unless `rollups` is false).
    `dry_run` only plans.

    Raises:
        ConfigError: neither or both of `day` and `changed`, an unknown type, or not a day.
        TransientError: see `compact_day`; units finished before it stay finished.
    """
    if (day is None) == (not changed):
        raise ConfigError(
            "give exactly one of a day or changed",
            hint="sluice compact --date YYYY-MM-DD, or sluice compact --changed",
        )
    chosen = _types(types)
    if day is not None:
        day = check_day(day)
        digests = registry_digests(env.ledger, chosen, [day])
        units = [_unit(t, day, Reason.REQUESTED, digests.get((t, day))) for t in chosen]
    else:
        units = _changed(chosen, registry_digests(env.ledger, chosen), env)
    planned = [unit for unit, _ in units]
    run = CompactRun("date" if day else "changed", chosen, planned, dry_run=dry_run)
    if dry_run:
        return run
    for done, (unit, digest) in enumerate(units, 1):
        result = compact_day(env, unit.type, unit.day, digest=digest)
        run.compacted.append(result)
        # A day with nothing to compact and nothing compacted before has nothing to roll up.
        if rollups and result.build is not None:
            run.rollups.append(build_rollup(env, unit.type, unit.day))
        if on_progress is not None:
            on_progress(done, len(planned), f"{unit.type} {unit.day}")
    return run


def _types(types: Sequence[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(types)) if types else known_types()
    for type_ in chosen:
        check_type(type_)
    return chosen


def _unit(
    type_: str, day: str, reason: Reason, digest: DayDigest | None
) -> tuple[PlannedDay, DayDigest]:
    digest = digest or DayDigest()
    return PlannedDay(type_, day, reason, digest.sources, digest.digest), digest


def _changed(
    types: list[str], digests: dict[tuple[str, str], DayDigest], env: Env
) -> list[tuple[PlannedDay, DayDigest]]:
    planned = []
    for type_ in types:
        states = compaction_states(env, type_)
        days = {d for (t, d) in digests if t == type_} | set(states)
        for day in sorted(days):
            current = digests.get((type_, day), DayDigest())
            state = states.get(day)
            if state is None:
                if current.sources:
                    planned.append(_unit(type_, day, Reason.NEVER_COMPACTED, current))
            elif state.digest != current.digest:
                reason = Reason.FILES_CHANGED if current.sources else Reason.FILES_GONE
                planned.append(_unit(type_, day, reason, current))
    return planned
