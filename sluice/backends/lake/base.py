"""Lake tables: Iceberg tables partitioned by day (DESIGN §3, §6).

Every lake table has a `day` column (`YYYY-MM-DD`, a string like the verified tables' `day`
partition) with an identity partition on it, so one day is a set of whole data files and
replacing a day never rewrites another day's files. The embedded lake keeps its catalog in
SQLite and its warehouse under the lake bucket's directory; the AWS lake keeps its catalog in
Glue and its warehouse in the lake bucket. Both keep each table at `lake/<table>/` of the lake
bucket.

Every method may raise `BackendBusy` (a `TransientError`: a concurrent commit to the same day,
a locked catalog, a throttled or unreachable service; run it again) and `ConfigError` (the
catalog or warehouse is missing or not allowed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pyarrow as pa

DAY = "day"
# Properties and snapshot summaries that sluice writes start with this, so they never collide
# with Iceberg's own (`write.*`, `commit.*`, ...).
PROPERTY_PREFIX = "sluice."


@dataclass(frozen=True)
class LakeFile:
    """One data file of a table: `uri` is `file:///…` embedded, `s3://…` on AWS."""

    uri: str
    day: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class LakeSnapshot:
    snapshot_id: int
    parent_id: int | None
    committed_at: datetime
    operation: str  # append | overwrite | delete | replace
    summary: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DayReplaced:
    """What `replace_day` committed: `snapshot_id` is None when nothing changed but properties
    (no files to remove, none to add)."""

    table: str
    day: str
    snapshot_id: int | None
    rows: int
    files_added: int
    files_removed: int


class Lake(Protocol):
    def ensure_table(self, name: str, schema: pa.Schema) -> None:
        """Create the table with `schema` (which must hold a `day` string column) and an
        identity partition on `day`, or add the columns of `schema` it lacks (idempotent;
        concurrent creators are fine)."""
        ...

    def exists(self, name: str) -> bool: ...

    def list_tables(self) -> list[str]:
        """The lake's tables, in name order."""
        ...

    def replace_day(
        self,
        name: str,
        day: str,
        batches: Iterable[pa.RecordBatch],
        *,
        properties: Mapping[str, str] | None = None,
        summary: Mapping[str, str] | None = None,
    ) -> DayReplaced:
        """Replace every row of `day` with `batches`, and set `properties` on the table, in ONE
        commit: a reader sees the old day or the new one, never a mix, and never the new
        properties without the new rows.

        `batches` hold the table's columns except `day` (filled in here, so a row cannot land
        in another day); extra columns are refused, missing nullable ones are null. They are
        consumed once and written in bounded chunks, so memory does not grow with the day.
        The commit is one `overwrite` snapshot (an `append` on an empty table) whose summary
        carries `summary` and `sluice.day`. A concurrent commit to another day is retried;
        one to the same day fails the call (`BackendBusy`) and this call's files are removed.

        Raises:
            ConfigError: no such table, or batches whose columns do not fit it.
            BackendBusy: a concurrent commit replaced the same day first.
        """
        ...

    def scan(
        self, name: str, *, day: str | None = None, columns: Sequence[str] | None = None
    ) -> pa.RecordBatchReader:
        """Rows of the table (of one day) at its current snapshot, streamed, with plain Arrow
        types (`string`, not `large_string`). Raises: ConfigError (no such table)."""
        ...

    def files(self, name: str, *, day: str | None = None) -> list[LakeFile]:
        """Data files of the current snapshot (of one day), for readers that bypass the
        catalog (DuckDB, pyarrow). Raises: ConfigError (no such table)."""
        ...

    def snapshots(self, name: str) -> list[LakeSnapshot]:
        """The table's snapshots, oldest first. Raises: ConfigError (no such table)."""
        ...

    def properties(self, name: str) -> dict[str, str]:
        """The table's properties. Raises: ConfigError (no such table)."""
        ...
