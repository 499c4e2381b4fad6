"""The embedded query engine: DuckDB over the catalog's tables, read through the object store.

Each query re-reads the catalog. Every table the statement names becomes a view over a pyarrow
dataset of the `*.parquet` objects under the table's registered partitions, read through
`store.arrow_filesystem()`, so the same engine serves a local directory and S3. As on Athena,
files under unregistered partitions are invisible, columns a file lacks read as NULL, and a
file whose column types cannot be cast to the table's fails the query (`QueryFailed` naming the
file). The connection cannot touch files, attach databases or read Python variables: the
catalog's tables are all a statement can see, as on Athena.
"""

from __future__ import annotations

import operator
import re
import threading
from dataclasses import dataclass
from functools import reduce

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sluice.backends.catalog.base import Catalog, Partition, TableDef
from sluice.backends.store.base import ObjectStore
from sluice.errors import ConfigError, QueryFailed
from sluice.layout import parse_uri

# Up to this many registered partitions, list each one's prefix (one request each on S3);
# past it, one listing of the whole table is cheaper.
_LIST_EACH_MAX = 32
_SCAN_FAILED = re.compile(r"reading the stream registered as '([^']+)' failed")
# DuckDB suggests its own system views for a misspelt table; the hint lists the real ones.
_INTERNAL_SUGGESTION = re.compile(
    r'\nDid you mean "(pg_|duckdb_|sqlite_|information_schema)[^"]*"\?'
)


@dataclass(frozen=True)
class _File:
    uri: str
    path: str  # in the store's arrow filesystem
    values: tuple[str, ...]


class DuckDBQueryEngine:
    """A `QueryEngine` on one in-memory DuckDB connection; safe to share between threads."""

    def __init__(self, catalog: Catalog, store: ObjectStore, *, threads: int | None = None) -> None:
        self._catalog = catalog
        self._store = store
        self._fs, self._root = store.arrow_filesystem()
        config: dict[str, str | bool | int | float | list[str]] = {
            "enable_external_access": False,
            "python_enable_replacements": False,
        }
        if threads is not None:
            config["threads"] = threads
        self._con = duckdb.connect(":memory:", config=config)
        self._con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()

    def query(self, sql: str) -> pa.Table:
        with self._lock:
            tables = {t.name.lower(): t for t in self._catalog.list_tables()}
            registered: dict[str, tuple[TableDef, list[_File]]] = {}
            try:
                for table in self._referenced(sql, tables):
                    files = self._files(table)
                    self._con.register(table.name, self._dataset(table, files))
                    registered[table.name] = (table, files)
                rel = self._con.sql(sql)
                return rel.to_arrow_table() if rel is not None else pa.table({})
            except duckdb.Error as exc:
                raise self._failed(sql, exc, tables, registered) from exc
            finally:
                for name in registered:
                    self._con.unregister(name)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _referenced(self, sql: str, tables: dict[str, TableDef]) -> list[TableDef]:
        """The catalog tables the statement names (all of them if DuckDB cannot tell)."""
        try:
            names = {n.lower() for n in self._con.get_table_names(sql)}
        except duckdb.ParserException:
            raise
        except duckdb.Error:
            return list(tables.values())
        return [table for name, table in tables.items() if name in names]

    def _files(self, table: TableDef) -> list[_File]:
        """The Parquet objects under the table's registered partitions, with their values."""
        loc = parse_uri(table.location)
        base = loc.key.rstrip("/") + "/" if loc.key.strip("/") else ""
        keys = table.partition_keys
        listings: list[tuple[str, tuple[str, ...] | None]]
        registered: set[tuple[str, ...]] = set()
        if not keys:
            listings = [(base, ())]
        else:
            try:
                registered = {p.values for p in self._catalog.list_partitions(table.name)}
            except ConfigError:
                registered = set()  # dropped since we listed the tables: it has no rows now
            if len(registered) <= _LIST_EACH_MAX:
                listings = [
                    (parse_uri(Partition(v).location(table)).key, v) for v in sorted(registered)
                ]
            else:
                listings = [(base, None)]
        files = []
        for prefix, known in listings:
            for obj in self._store.list(loc.bucket, prefix):
                if not obj.key.endswith(".parquet"):
                    continue
                values = known if known is not None else _values(obj.key[len(base) :], keys)
                if values is None or (keys and values not in registered):
                    continue
                files.append(_File(obj.uri, f"{self._root}{obj.bucket}/{obj.key}", values))
        return files

    def _dataset(self, table: TableDef, files: list[_File]) -> ds.Dataset:
        fmt = ds.ParquetFileFormat()
        keys = table.partition_keys
        schema = pa.schema([*table.schema, *(pa.field(k, pa.string()) for k in keys)])
        fragments = [
            fmt.make_fragment(
                f.path, filesystem=self._fs, partition_expression=_expression(keys, f.values)
            )
            for f in files
        ]
        return ds.FileSystemDataset(fragments, schema=schema, format=fmt, filesystem=self._fs)

    def _failed(
        self,
        sql: str,
        exc: duckdb.Error,
        tables: dict[str, TableDef],
        registered: dict[str, tuple[TableDef, list[_File]]],
    ) -> QueryFailed:
        message = str(exc).strip()
        scan = _SCAN_FAILED.search(message)
        if scan is None:
            message = _INTERNAL_SUGGESTION.sub("", message)
            known = ", ".join(sorted(t.name for t in tables.values())) or "none"
            return QueryFailed(message, hint=f"tables: {known}", sql=sql)
        name = scan.group(1)
        table, files = registered.get(name, (None, []))
        # A file the error names (Arrow names those it cannot open) is the likeliest culprit.
        files = sorted(files, key=lambda f: f.path not in message)
        culprit = self._mismatch(table, files) if table is not None else None
        if culprit is not None:
            message = f"{culprit} (DuckDB: {message})"
        return QueryFailed(
            message,
            hint="`sluice doctor` compares table and file schemas; "
            "`sluice redrive --parquet-uri URI` rebuilds a file from its source",
            sql=sql,
            table=name,
        )

    def _mismatch(self, table: TableDef, files: list[_File]) -> str | None:
        """Why the first file that does not fit the table's schema does not fit it."""
        for f in files:
            try:
                file_schema = pq.read_schema(f.path, filesystem=self._fs)
            except (OSError, pa.ArrowException) as exc:
                return f"table {table.name}: {f.uri} is not readable Parquet: {exc}"
            diffs = [
                f"{field.name} is {file_schema.field(field.name).type} in the file, "
                f"{field.type} in the table"
                for field in table.schema
                if field.name in file_schema.names
                and not file_schema.field(field.name).type.equals(field.type)
            ]
            if diffs:
                return f"table {table.name}: {f.uri} does not match its schema: " + "; ".join(diffs)
        return None


def _expression(keys: tuple[str, ...], values: tuple[str, ...]) -> ds.Expression | None:
    """What every row of a file in this partition satisfies; the scan fills the keys from it."""
    terms = [ds.field(k) == pa.scalar(v, pa.string()) for k, v in zip(keys, values, strict=True)]
    return reduce(operator.and_, terms) if terms else None


def _values(rel: str, keys: tuple[str, ...]) -> tuple[str, ...] | None:
    """Partition values from a key relative to the table's location (`day=…/hour=…/f`)."""
    segments = rel.split("/")
    if len(segments) <= len(keys):
        return None
    values = []
    for key, segment in zip(keys, segments, strict=False):
        name, eq, value = segment.partition("=")
        if name != key or not eq:
            return None
        values.append(value)
    return tuple(values)
