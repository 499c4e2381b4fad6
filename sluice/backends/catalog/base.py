"""The catalog: tables and their registered partitions (SQLite embedded, Glue on AWS).

Queries read only registered partitions, as Athena does, so a file under an unregistered
partition is invisible until `add_partitions` (or catalog repair) registers it. Partitions are
added and dropped in batches within the backend's limits; adding a partition that exists, or
dropping one that does not, is not an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from sluice.errors import ConfigError


def check_segment(what: str, value: str) -> None:
    """Refuse a partition key or value that is not one safe path segment.

    Raises:
        ConfigError: empty, `.` or `..`, or holding `/`, `\\` or a control character.
    """
    bad = (
        not value
        or value in (".", "..")
        or any(c in "/\\" or ord(c) < 0x20 or c == "\x7f" for c in value)
    )
    if bad:
        raise ConfigError(
            f"{what} {value!r} is not a safe path segment",
            hint="partition values must be non-empty, not '.' or '..', and hold no '/', '\\' "
            "or control characters",
        )


def check_table_def(table: TableDef) -> None:
    """Partition keys that are safe path segments, distinct, without '=' and not data columns.

    Raises:
        ConfigError: the first rule broken.
    """
    for key in table.partition_keys:
        check_segment("partition key", key)
        if "=" in key:
            raise ConfigError(f"partition key {key!r} holds '='", table=table.name)
    clash = set(table.partition_keys) & set(table.schema.names)
    if clash or len(set(table.partition_keys)) != len(table.partition_keys):
        raise ConfigError(
            f"table {table.name!r}: partition keys {table.partition_keys} repeat or are "
            f"also data columns ({sorted(clash)})",
            table=table.name,
        )


@dataclass(frozen=True)
class TableDef:
    name: str
    location: str  # s3://bucket/prefix/ of the table's data
    schema: pa.Schema  # data columns (partition columns are not in the files)
    partition_keys: tuple[str, ...]


@dataclass(frozen=True, order=True)
class Partition:
    """Partition values in the order of the table's partition keys, e.g. ("2025-11-24", "21")."""

    values: tuple[str, ...]

    def location(self, table: TableDef) -> str:
        parts = "/".join(f"{k}={v}" for k, v in zip(table.partition_keys, self.values, strict=True))
        return f"{table.location.rstrip('/')}/{parts}/"


class Catalog(Protocol):
    def ensure_table(self, table: TableDef) -> None:
        """Create the table, or update its schema and location (idempotent)."""
        ...

    def get_table(self, name: str) -> TableDef | None: ...

    def list_tables(self) -> list[TableDef]: ...

    def drop_table(self, name: str) -> None: ...

    def add_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        """Register partitions; returns how many were new.

        Raises:
            ConfigError: no such table, or values that do not match its partition keys.
        """
        ...

    def drop_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        """Unregister partitions; returns how many existed."""
        ...

    def list_partitions(self, table: str) -> Iterator[Partition]:
        """Registered partitions, in order."""
        ...


def require_table(catalog: Catalog, name: str, where: str = "the catalog") -> TableDef:
    """The named table, or a ConfigError that lists the tables there are."""
    table = catalog.get_table(name)
    if table is None:
        known = ", ".join(t.name for t in catalog.list_tables()) or "none"
        raise ConfigError(
            f"no table {name!r} in {where}", hint=f"known tables: {known}", table=name
        )
    return table
