"""A small lake built with the real pipeline, and the ways the tests break it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sluice.backends.catalog.base import Partition
from sluice.env import Env
from sluice.layout import ObjectUri, raw_key, table_prefix
from sluice.process.processor import process_object
from tests.conftest import ARRIVED, line, make_event, put_raw

# The reconciler's clock in these tests: just after the test raw objects arrived.
NOW = ARRIVED + timedelta(minutes=30)
LOCK = "telemetry_lock_flat"
BRIDGE = "telemetry_bridge_flat"


@dataclass(frozen=True)
class Lake:
    sources: tuple[ObjectUri, ...]
    lock_21: str  # key of the first source's lock file of 2025-11-24 hour 21
    lock_23: str  # key of the second source's only file (lock, 2025-11-24 hour 23)


def build_lake(env: Env, *, now_arrival: bool = False) -> Lake:
    """Two raw objects → lock 21 (two sources), lock 23, bridge 22, and one quarantined line."""

    def key() -> str | None:
        # Keyed at the real arrival time for commands that use the real clock (the CLI).
        return raw_key(datetime.now(UTC)) if now_arrival else None

    a = put_raw(
        env,
        [
            line(make_event("a1", occurred_at="2025-11-24T21:09:35Z")),
            line(make_event("a2", "bridge", "2025-11-24T22:00:00Z", assertions=0, cpu_pct=1.5)),
            b"not json",
        ],
        key=key(),
    )
    b = put_raw(
        env,
        [
            line(make_event("b1", occurred_at="2025-11-24T21:30:00Z")),
            line(make_event("b2", occurred_at="2025-11-24T23:30:00Z", assertions=0)),
        ],
        key=key(),
    )
    results = [process_object(env, uri) for uri in (a, b)]
    lock_21 = next(o.key for o in results[0].outputs if "hour=21" in o.key)
    lock_23 = next(o.key for o in results[1].outputs if "hour=23" in o.key)
    return Lake((a, b), lock_21, lock_23)


def partitions(env: Env, table: str) -> list[str]:
    return [f"day={p.values[0]}/hour={p.values[1]}" for p in env.catalog.list_partitions(table)]


def part(spec: str) -> Partition:
    day, hour = (x.split("=", 1)[1] for x in spec.split("/"))
    return Partition((day, hour))


def verified_keys(env: Env, type_: str = "lock") -> list[str]:
    return [i.key for i in env.store.list(env.config.buckets.verified, table_prefix(type_))]
