"""The embedded catalog: tables and partitions in one SQLite database.

Partition values are stored joined by the ASCII unit separator (0x1F), which sorts below every
character a value may hold, so `ORDER BY vals` is exactly the order of the value tuples and
`list_partitions` can page through them by key instead of holding a cursor open between yields.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from sluice.backends.catalog.base import (
    Partition,
    TableDef,
    check_segment,
    check_table_def,
    require_table,
)
from sluice.backends.sqlite import SqliteDb
from sluice.errors import ConfigError

_SEP = "\x1f"
_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tables (
    name TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    arrow_schema BLOB NOT NULL,
    partition_keys TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    table_name TEXT NOT NULL,
    vals TEXT NOT NULL,
    PRIMARY KEY (table_name, vals)
) WITHOUT ROWID
"""


class SqliteCatalog:
    """A `Catalog` in a SQLite file; several processes may share it."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteDb(path, _SCHEMA)

    def ensure_table(self, table: TableDef) -> None:
        """Create or update a table.

        Raises:
            ConfigError: a partition key is not a safe name or is also a data column, or the
                table exists with different partition keys.
        """
        check_table_def(table)
        keys = json.dumps(list(table.partition_keys))
        blob = table.schema.serialize().to_pybytes()
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT partition_keys FROM tables WHERE name = ?", (table.name,)
            ).fetchone()
            if row is not None and row["partition_keys"] != keys:
                raise ConfigError(
                    f"table {table.name!r} exists with partition keys "
                    f"{tuple(json.loads(row['partition_keys']))}, not {table.partition_keys}",
                    hint="drop the table first (its partitions go with it), then create it again",
                    table=table.name,
                )
            conn.execute(
                "INSERT INTO tables (name, location, arrow_schema, partition_keys) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "location = excluded.location, arrow_schema = excluded.arrow_schema",
                (table.name, table.location, blob, keys),
            )

    def get_table(self, name: str) -> TableDef | None:
        row = self._db.read().execute("SELECT * FROM tables WHERE name = ?", (name,)).fetchone()
        return None if row is None else _table(row)

    def list_tables(self) -> list[TableDef]:
        rows = self._db.read().execute("SELECT * FROM tables ORDER BY name").fetchall()
        return [_table(row) for row in rows]

    def drop_table(self, name: str) -> None:
        """Drop a table and its partitions; dropping a missing table does nothing."""
        with self._db.write() as conn:
            conn.execute("DELETE FROM partitions WHERE table_name = ?", (name,))
            conn.execute("DELETE FROM tables WHERE name = ?", (name,))

    def add_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        rows = self._rows(self._require(table), partitions)
        with self._db.write() as conn:
            cur = conn.executemany(
                "INSERT OR IGNORE INTO partitions (table_name, vals) VALUES (?, ?)", rows
            )
            return max(cur.rowcount, 0)

    def drop_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        """Unregister partitions; returns how many existed.

        Raises:
            ConfigError: no such table, or values that do not match its partition keys.
        """
        rows = self._rows(self._require(table), partitions)
        with self._db.write() as conn:
            cur = conn.executemany("DELETE FROM partitions WHERE table_name = ? AND vals = ?", rows)
            return max(cur.rowcount, 0)

    def list_partitions(self, table: str) -> Iterator[Partition]:
        """Registered partitions, in order of their values.

        Raises:
            ConfigError: no such table (raised at the call, not at the first item).
        """
        self._require(table)
        return self._pages(table)

    def close(self) -> None:
        self._db.close()

    def _pages(self, table: str) -> Iterator[Partition]:
        after: str | None = None
        while True:
            rows = (
                self._db.read()
                .execute(
                    "SELECT vals FROM partitions WHERE table_name = ? AND (? IS NULL OR vals > ?) "
                    f"ORDER BY vals LIMIT {_PAGE}",
                    (table, after, after),
                )
                .fetchall()
            )
            for row in rows:
                yield Partition(tuple(row["vals"].split(_SEP)) if row["vals"] else ())
            if len(rows) < _PAGE:
                return
            after = rows[-1]["vals"]

    def _require(self, name: str) -> TableDef:
        return require_table(self, name)

    @staticmethod
    def _rows(table: TableDef, partitions: Sequence[Partition]) -> list[tuple[str, str]]:
        rows = []
        for part in partitions:
            if len(part.values) != len(table.partition_keys):
                raise ConfigError(
                    f"partition {part.values} of table {table.name!r} has "
                    f"{len(part.values)} values; the table's keys are {table.partition_keys}",
                    table=table.name,
                )
            for value in part.values:
                check_segment("partition value", value)
            rows.append((table.name, _SEP.join(part.values)))
        return rows


def _table(row: sqlite3.Row) -> TableDef:
    return TableDef(
        name=row["name"],
        location=row["location"],
        schema=pa.ipc.read_schema(pa.py_buffer(row["arrow_schema"])),
        partition_keys=tuple(json.loads(row["partition_keys"])),
    )
