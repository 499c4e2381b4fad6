"""`telemetry_<type>_refined_15m`: per device, event kind and 15-minute bucket of a day, the
row and event counts and the type's numeric aggregates.

Built from the compacted table, not the verified one: rollups must count each event once, and
the compacted day is where device resends are already gone. A fanned-out event repeats its
payload on every assertion row, so payload fields are aggregated over one row per event (the
row of ordinal 0; every event has one) while assertion fields (pass/fail, measured value) are
aggregated over every row. Buckets are aligned to the UTC quarter hour of
`envelope__occurred_at`; a bucket belongs to the day of its start.

A day's rollup remembers the compaction build it was made from (`DayState.from_build`):
`build_rollup` skips a day already built from the day's current compaction, and rebuilds it
after the day was compacted again (or with `force`). Rebuilding is one commit, like compaction.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import pyarrow as pa

from sluice.backends.lake.base import DAY
from sluice.compact.daily import BATCH_ROWS, compaction_states, local_duckdb
from sluice.compact.state import (
    DayState,
    compacted_table,
    day_states,
    rollup_table,
    state_property,
)
from sluice.env import Env
from sluice.layout import check_day, check_type
from sluice.process.schemas import (
    ARROW_TYPES,
    ASSERTION_FIELDS,
    PAYLOAD_FIELDS,
    TIMESTAMP,
    FieldKind,
)

BUCKET = "15 minutes"
NUMERIC = (FieldKind.INT32, FieldKind.INT64, FieldKind.DOUBLE)


class RollupStatus(StrEnum):
    BUILT = "built"
    SKIPPED = "skipped"  # already built from the day's current compaction
    NOT_COMPACTED = "not_compacted"  # the day has no compaction to build from


@dataclass(frozen=True)
class RollupResult:
    type: str
    day: str
    table: str
    status: RollupStatus
    input_rows: int
    rows: int
    snapshot_id: int | None
    from_build: str | None
    seconds: float


def _numeric(type_: str) -> list[tuple[str, str, FieldKind]]:
    """(output prefix, source column, kind) of every numeric field, payload fields first."""
    payload = [
        (name, f"payload__{name}", kind)
        for name, kind in PAYLOAD_FIELDS[type_].items()
        if kind in NUMERIC
    ]
    assertion = [
        (name, f"payload__assertion__{name}", kind)
        for name, kind in ASSERTION_FIELDS.items()
        if kind in NUMERIC
    ]
    return payload + assertion


def rollup_schema(type_: str) -> pa.Schema:
    fields = [
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("event_kind", pa.string(), nullable=False),
        pa.field("bucket_start", TIMESTAMP, nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("assertions_passed", pa.int64(), nullable=False),
        pa.field("assertions_failed", pa.int64(), nullable=False),
    ]
    for name, _, kind in _numeric(check_type(type_)):
        fields += [
            pa.field(f"{name}_min", ARROW_TYPES[kind]),
            pa.field(f"{name}_max", ARROW_TYPES[kind]),
            pa.field(f"{name}_avg", pa.float64()),
        ]
    fields.append(pa.field(DAY, pa.string(), nullable=False))
    return pa.schema(fields, metadata={"sluice.type": type_})


def rollup_sql(type_: str) -> str:
    """The aggregation over a view `compacted` of one compacted day."""
    payload_fields = set(PAYLOAD_FIELDS[type_])
    aggregates = []
    for name, column, _ in _numeric(type_):
        # Payload values repeat on each row of a fanned-out event: average them per event.
        scope = " FILTER (WHERE envelope__ordinal = 0)" if name in payload_fields else ""
        aggregates += [
            f"min({column}) AS {name}_min",
            f"max({column}) AS {name}_max",
            f"avg({column}){scope} AS {name}_avg",
        ]
    return f"""
SELECT envelope__device_id AS device_id,
       envelope__event_kind AS event_kind,
       time_bucket(INTERVAL '{BUCKET}', envelope__occurred_at) AS bucket_start,
       count(*) AS rows,
       count(*) FILTER (WHERE envelope__ordinal = 0) AS events,
       count(*) FILTER (WHERE payload__assertion__passed) AS assertions_passed,
       count(*) FILTER (WHERE NOT payload__assertion__passed) AS assertions_failed,
       {", ".join(aggregates)}
FROM compacted
GROUP BY ALL
ORDER BY device_id, event_kind, bucket_start
"""


def _source_columns(type_: str) -> list[str]:
    base = [
        "envelope__device_id",
        "envelope__event_kind",
        "envelope__occurred_at",
        "envelope__ordinal",
        "payload__assertion__passed",
    ]
    return base + [column for _, column, _ in _numeric(type_)]


def build_rollup(env: Env, type_: str, day: str, force: bool = False) -> RollupResult:
    """Build `day` of `telemetry_<type>_refined_15m` from the day's compaction (skipped when
    already built from it, unless `force`).

    A day that was never compacted is not an error: the result says NOT_COMPACTED (compact it
    first: `sluice compact --date DAY --type TYPE`).

    Raises:
        ConfigError: unknown type or not a day.
        TransientError: a concurrent build of the same day committed first; run it again.
    """
    check_type(type_)
    check_day(day)
    started = time.monotonic()
    table = rollup_table(type_)
    source = compaction_states(env, type_).get(day)
    if source is None:
        return RollupResult(
            type_, day, table, RollupStatus.NOT_COMPACTED, 0, 0, None, None, _elapsed(started)
        )
    env.lake.ensure_table(table, rollup_schema(type_))
    built = day_states(env.lake.properties(table)).get(day)
    if built is not None and built.from_build == source.build and not force:
        return RollupResult(
            type_, day, table, RollupStatus.SKIPPED, built.input_rows, 0, None, source.build,
            _elapsed(started),
        )  # fmt: skip
    compacted = compacted_table(type_)
    input_rows = sum(f.rows for f in env.lake.files(compacted, day=day))
    state = DayState(
        build=uuid.uuid4().hex[:16],
        built_at=datetime.now(UTC),
        input_rows=input_rows,
        from_build=source.build,
    )
    with local_duckdb() as con:
        con.register("compacted", env.lake.scan(compacted, day=day, columns=_source_columns(type_)))
        reader = con.sql(rollup_sql(type_)).to_arrow_reader(BATCH_ROWS)
        replaced = env.lake.replace_day(
            table,
            day,
            reader,
            properties={state_property(day): state.encode()},
            summary={"sluice.build": state.build, "sluice.from-build": source.build},
        )
    return RollupResult(
        type=type_,
        day=day,
        table=table,
        status=RollupStatus.BUILT,
        input_rows=input_rows,
        rows=replaced.rows,
        snapshot_id=replaced.snapshot_id,
        from_build=source.build,
        seconds=_elapsed(started),
    )


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)
