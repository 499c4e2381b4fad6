"""The day under verification: its tables, the ledger's outputs on it and the engine's answers,
shared by the checks so that each is read once per run."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sluice.backends.catalog.base import TableDef
from sluice.backends.ledger.base import FileRecord, Output
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import (
    ALL_TYPES,
    check_day,
    table_name,
)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def resolve_tables(env: Env, types: list[str] | None) -> list[TableDef]:
    """The verified tables of `types` (all of them when None), as the catalog defines them.

    Raises:
        ConfigError: a type that is not a verified table of this environment.
    """
    known = {t: d for t in ALL_TYPES if (d := env.catalog.get_table(table_name(t))) is not None}
    if types is None:
        return list(known.values())
    unknown = [t for t in types if t not in known]
    if unknown:
        raise ConfigError(
            f"unknown type(s) {', '.join(map(repr, unknown))}",
            hint=f"types with a verified table here: {', '.join(known) or 'none'}",
        )
    return [known[t] for t in dict.fromkeys(types)]


def num(value: Any) -> int:
    """An engine's integer (DuckDB sums are HUGEINT, i.e. Decimal in Arrow; NULL when empty)."""
    return 0 if value is None else int(value)


def quote(text: str) -> str:
    """A SQL string literal (DuckDB and Athena both double the quote)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class ObjectOutputs:
    """A raw object and its outputs in one table on the day."""

    record: FileRecord
    outputs: tuple[Output, ...]


class Day:
    """One day of the lake as the checks see it."""

    def __init__(self, env: Env, day: str, samples: int) -> None:
        self.env = env
        self.day = check_day(day)
        self.samples = max(0, samples)
        self.cache: dict[tuple[str, str], Any] = {}

    @property
    def where(self) -> str:
        """The filter that makes every engine read only the day's partitions."""
        return f"day = '{self.day}'"

    def rows(self, sql: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.env.query_engine.query(sql).to_pylist()
        return rows

    def objects(self, table: str) -> list[ObjectOutputs]:
        return self._ledger.get(table, [])

    @cached_property
    def _ledger(self) -> dict[str, list[ObjectOutputs]]:
        # The ledger has no index by output day: one pass over every record, once per run
        # (a Scan on DynamoDB). Fine for a daily check; the doctor looks at recent hours instead.
        by_table: dict[str, list[ObjectOutputs]] = defaultdict(list)
        for record in self.env.ledger.list():
            outputs: dict[str, list[Output]] = defaultdict(list)
            for output in record.outputs:
                if output.day == self.day and output.hour:
                    outputs[output.table].append(output)
            for table, outs in outputs.items():
                by_table[table].append(ObjectOutputs(record, tuple(outs)))
        return dict(by_table)


@dataclass(frozen=True)
class FileFacts:
    """What a verified file's Parquet footer says, read without reading its rows."""

    uri: str
    rows: int
    source_ref: str | None
    min_line: int | None
    max_line: int | None
    error: str | None = None  # why the footer could not be read (rows is then 0)


def read_footer(env: Env, bucket: str, key: str) -> FileFacts | None:
    """The footer of one verified file, or None when there is no such object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not env.store.exists(bucket, key):
        return None
    fs, root = env.store.arrow_filesystem()
    try:
        meta = pq.read_metadata(f"{root}{bucket}/{key}", filesystem=fs)
    except (OSError, pa.ArrowException) as exc:
        return FileFacts(f"s3://{bucket}/{key}", 0, None, None, None, error=str(exc))
    names = meta.schema.to_arrow_schema().names
    source = (meta.metadata or {}).get(b"sluice.source_ref")
    source_ref = source.decode() if source else _stat(meta, names, "envelope__source_ref", min)
    low, high = _stat(meta, names, "envelope__line", min), _stat(meta, names, "envelope__line", max)
    return FileFacts(
        f"s3://{bucket}/{key}",
        meta.num_rows,
        None if source_ref is None else str(source_ref),
        None if low is None else int(low),
        None if high is None else int(high),
    )


def _stat(meta: Any, names: list[str], column: str, pick: Any) -> Any:
    """The min (or max) of a column over the row groups' statistics; None if any lacks them.
    A file written by sluice holds one source, so min = max of its source_ref names it even
    when the key-value metadata is gone (a file rewritten by another tool)."""
    if column not in names:
        return None
    index = names.index(column)
    values = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        values.append(stats.min if pick is min else stats.max)
    return pick(values) if values else None
