"""What the lake remembers about each day it built, and the file registry summarised per day, so
`sluice compact --changed` can tell which days changed without reading the verified store.

Each lake table keeps one property per day, `sluice.day.<YYYY-MM-DD>`, holding a `DayState`
as JSON. It is set in the same commit as the day's rows (`Lake.replace_day`), so the state and
the data can never disagree, and per-day keys let concurrent builds of other days commit
without overwriting each other's state.

A day's *registry digest* summarises the raw objects whose current outputs (in the ledger) fall
on that day: for each object its URI and the time its outputs were last committed
(`completed_at`). The sum of one hash per object does not depend on the order the ledger lists
them in, so it is computed in one streaming pass with memory per day, not per object. A day
changed since it was compacted exactly when its digest differs from the one stored with it:
an object completed (a new file, a late event, a redrive, a changed object) or an object no
longer writes to that day (a reprocess that moved its rows). No clock is compared, so the
skew between the machines that process and the one that compacts does not matter.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

import msgspec

from sluice.backends.lake.base import PROPERTY_PREFIX
from sluice.backends.ledger.base import Ledger
from sluice.layout import table_name
from sluice.process.schemas import SPECS

STATE_PREFIX = f"{PROPERTY_PREFIX}day."
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MASK = (1 << 128) - 1


def compacted_table(type_: str) -> str:
    return f"int_{type_}_compacted_daily"


def rollup_table(type_: str) -> str:
    return f"telemetry_{type_}_refined_15m"


def known_types() -> list[str]:
    return list(SPECS)


class DayState(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a lake table remembers about one of its days.

    `build` names the build that wrote it; a compaction adds the registry digest and the
    objects and rows it read; a rollup adds the compaction build it was made from.
    """

    build: str
    built_at: datetime
    input_rows: int
    digest: str | None = None
    sources: int | None = None
    from_build: str | None = None

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()


def state_property(day: str) -> str:
    return f"{STATE_PREFIX}{day}"


def day_states(properties: Mapping[str, str]) -> dict[str, DayState]:
    """The day states among a table's properties (unreadable values are skipped: a day whose
    state cannot be read counts as never built, which rebuilds it)."""
    states = {}
    for key, value in properties.items():
        if key.startswith(STATE_PREFIX):
            try:
                states[key[len(STATE_PREFIX) :]] = msgspec.json.decode(value, type=DayState)
            except msgspec.DecodeError:
                continue
    return states


@dataclass
class DayDigest:
    """The registry's raw objects with outputs on one day of one table (see module doc)."""

    sources: int = 0
    _sum: int = 0

    def add(self, source_uri: str, completed_at: datetime) -> None:
        marker = f"{source_uri}\n{completed_at.isoformat()}".encode()
        self._sum = (self._sum + int.from_bytes(hashlib.sha256(marker).digest()[:16])) & _MASK
        self.sources += 1

    @property
    def digest(self) -> str:
        return f"{self.sources}:{self._sum:032x}"


def registry_digests(
    ledger: Ledger, types: Collection[str], days: Collection[str] | None = None
) -> dict[tuple[str, str], DayDigest]:
    """Digest per (type, day) of the registry's current outputs (of `days` only, if given):
    one pass over the ledger, memory per day."""
    tables = {table_name(t): t for t in types}
    wanted = None if days is None else set(days)
    digests: dict[tuple[str, str], DayDigest] = {}
    for record in ledger.list():
        units = {
            (tables[o.table], o.day)
            for o in record.outputs
            if o.table in tables and (wanted is None or o.day in wanted)
        }
        # Outputs change only when an object completes, so completed_at marks their version.
        stamp = record.completed_at or record.updated_at
        for unit in units:
            digests.setdefault(unit, DayDigest()).add(record.uri, stamp)
    return digests
