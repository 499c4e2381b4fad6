"""The `Lake` over any pyiceberg catalog: the embedded and AWS lakes differ only in the catalog
they build (`local.py`, `glue.py`); tables, commits and scans are written once, here.

Replacing a day is one snapshot built by hand instead of pyiceberg's `Table.overwrite`, which
commits a delete snapshot and then an append snapshot, and which takes a partitioned table's
rows only as one in-memory `pa.Table`. Here the new rows are written in bounded chunks first
(`_dataframe_to_data_files`, pyiceberg's own writer: field ids, metrics, partition values), and
then one `overwrite` snapshot removes the day's current files and adds the new ones, with the
table properties set in the same commit.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NoSuchNamespaceError,
    NoSuchTableError,
    ValidationException,
)
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from sluice.backends.lake.base import DAY, PROPERTY_PREFIX, DayReplaced, LakeFile, LakeSnapshot
from sluice.errors import BackendBusy, ConfigError, SluiceError

# Rows per data file written: bounds the memory of a replace (one chunk of Arrow at a time,
# a few hundred MB for the widest table) and keeps files in the range query engines like.
CHUNK_ROWS = 500_000
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Every commit writes a metadata file; keep the last hundred, not every one ever written.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
}

Translate = Callable[[BaseException], SluiceError | None]


class IcebergLake:
    """A `Lake` over one pyiceberg catalog and namespace, tables at `<warehouse>/<table>`.

    `translate` turns a backend's own exceptions (botocore's, SQLAlchemy's) into sluice errors;
    it returns None for those it does not know, which propagate unchanged.
    """

    def __init__(
        self,
        catalog: Catalog,
        namespace: str,
        warehouse: str,
        *,
        translate: Translate | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.warehouse = warehouse.rstrip("/")
        self._translate = translate or (lambda exc: None)
        self._chunk_rows = chunk_rows
        self._namespace_ready = False

    # -- tables --------------------------------------------------------------------------

    def ensure_table(self, name: str, schema: pa.Schema) -> None:
        if DAY not in schema.names or not schema.field(DAY).type.equals(pa.string()):
            raise ConfigError(f"lake table {name} needs a string {DAY!r} column", table=name)
        with self._errors(name):
            self._ensure_namespace()
            try:
                table = self.catalog.load_table(self._identifier(name))
            except NoSuchTableError:
                self._create(name, schema)
                return
            missing = [f for f in schema if f.name not in table.schema().column_names]
            if missing:
                with table.update_schema() as update:
                    update.union_by_name(schema)

    def exists(self, name: str) -> bool:
        with self._errors(name):
            return bool(self.catalog.table_exists(self._identifier(name)))

    def list_tables(self) -> list[str]:
        with self._errors(None):
            try:
                return sorted(ident[-1] for ident in self.catalog.list_tables(self.namespace))
            except NoSuchNamespaceError:
                return []

    def properties(self, name: str) -> dict[str, str]:
        with self._errors(name):
            return dict(self._load(name).properties)

    def snapshots(self, name: str) -> list[LakeSnapshot]:
        with self._errors(name):
            table = self._load(name)
            out = []
            for snap in sorted(
                table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number)
            ):
                summary = snap.summary
                out.append(
                    LakeSnapshot(
                        snapshot_id=snap.snapshot_id,
                        parent_id=snap.parent_snapshot_id,
                        committed_at=datetime.fromtimestamp(snap.timestamp_ms / 1000, UTC),
                        operation=str(summary.operation.value) if summary else "unknown",
                        summary=dict(summary.additional_properties) if summary else {},
                    )
                )
            return out

    # -- reads ---------------------------------------------------------------------------

    def scan(
        self, name: str, *, day: str | None = None, columns: Sequence[str] | None = None
    ) -> pa.RecordBatchReader:
        with self._errors(name):
            table = self._load(name)
            selected = tuple(columns) if columns else ("*",)
            reader = table.scan(row_filter=_day_filter(day), selected_fields=selected)
            raw = reader.to_arrow_batch_reader()
            wanted = _plain_schema(raw.schema)
            return pa.RecordBatchReader.from_batches(wanted, (b.cast(wanted) for b in raw))

    def files(self, name: str, *, day: str | None = None) -> list[LakeFile]:
        with self._errors(name):
            table = self._load(name)
            return [
                LakeFile(
                    uri=task.file.file_path,
                    day=str(task.file.partition[0]),
                    rows=task.file.record_count,
                    bytes=task.file.file_size_in_bytes,
                )
                for task in table.scan(row_filter=_day_filter(day)).plan_files()
            ]

    # -- the one write -------------------------------------------------------------------

    def replace_day(
        self,
        name: str,
        day: str,
        batches: Iterable[pa.RecordBatch],
        *,
        properties: Mapping[str, str] | None = None,
        summary: Mapping[str, str] | None = None,
    ) -> DayReplaced:
        with self._errors(name):
            table = self._load(name)
            written = self._write(table, day, batches)
            try:
                return self._commit(table, name, day, written, properties, summary)
            except (CommitFailedException, ValidationException):
                # The commit surely did not land: the files written for it belong to nobody.
                for data_file in written:
                    table.io.delete(data_file.file_path)
                raise

    def _write(self, table: Table, day: str, batches: Iterable[pa.RecordBatch]) -> list[DataFile]:
        target = table.schema().as_arrow()
        write_uuid = uuid.uuid4()
        counter = itertools.count()
        written: list[DataFile] = []
        try:
            for chunk in _chunks(batches, self._chunk_rows):
                rows = _conform(chunk, target, day, table.name()[-1])
                written += _dataframe_to_data_files(
                    table_metadata=table.metadata,
                    df=rows,
                    io=table.io,
                    write_uuid=write_uuid,
                    counter=counter,
                )
        except BaseException:
            for data_file in written:
                table.io.delete(data_file.file_path)
            raise
        return written

    def _commit(
        self,
        table: Table,
        name: str,
        day: str,
        written: list[DataFile],
        properties: Mapping[str, str] | None,
        summary: Mapping[str, str] | None,
    ) -> DayReplaced:
        current = [task.file for task in table.scan(row_filter=_on_day(day)).plan_files()]
        snapshot_id: int | None = None
        with table.transaction() as txn:
            if current or written:
                snapshot_summary = {**(summary or {}), f"{PROPERTY_PREFIX}day": day}
                with txn.update_snapshot(snapshot_properties=snapshot_summary).overwrite() as ow:
                    # The predicate scopes pyiceberg's conflict checks to this day: a commit to
                    # another day meanwhile is retried on top, one to this day fails ours.
                    ow.delete_by_predicate(_on_day(day))
                    for data_file in current:
                        ow.delete_data_file(data_file)
                    for data_file in written:
                        ow.append_data_file(data_file)
                    snapshot_id = ow.snapshot_id
            if properties:
                txn.set_properties(dict(properties))
        return DayReplaced(
            table=name,
            day=day,
            snapshot_id=snapshot_id,
            rows=sum(f.record_count for f in written),
            files_added=len(written),
            files_removed=len(current),
        )

    # -- helpers -------------------------------------------------------------------------

    def _identifier(self, name: str) -> tuple[str, str]:
        return (self.namespace, name)

    def _load(self, name: str) -> Table:
        try:
            return self.catalog.load_table(self._identifier(name))
        except NoSuchTableError:
            raise ConfigError(
                f"lake table {self.namespace}.{name} does not exist",
                hint="sluice compact --date YYYY-MM-DD creates the lake tables",
                table=name,
            ) from None

    def _ensure_namespace(self) -> None:
        if self._namespace_ready:
            return
        # Look before creating: on AWS the database usually exists already (the verified
        # tables live there), and a role may read it without being allowed to create one.
        try:
            self.catalog.load_namespace_properties(self.namespace)
        except NoSuchNamespaceError:
            try:
                self.catalog.create_namespace(self.namespace)
            except Exception:
                # A concurrent creator won: pyiceberg's SQL catalog reports that race as the
                # database's integrity error, not NamespaceAlreadyExistsError. It is fine
                # exactly when the namespace now exists.
                if not self._namespace_exists():
                    raise
        self._namespace_ready = True

    def _namespace_exists(self) -> bool:
        try:
            self.catalog.load_namespace_properties(self.namespace)
        except NoSuchNamespaceError:
            return False
        return True

    def _create(self, name: str, schema: pa.Schema) -> None:
        try:
            txn = self.catalog.create_table_transaction(
                self._identifier(name),
                schema=schema,
                location=f"{self.warehouse}/{name}",
                properties=TABLE_PROPERTIES,
            )
            with txn.update_spec() as spec:
                spec.add_identity(DAY)
            txn.commit_transaction()
        except Exception:
            # A concurrent creator won (reported as TableAlreadyExistsError, or on the SQL
            # catalog as a failed commit): its table is the same. Anything else is re-raised.
            if not self.catalog.table_exists(self._identifier(name)):
                raise

    @contextmanager
    def _errors(self, table: str | None) -> Iterator[None]:
        try:
            yield
        except SluiceError:
            raise
        except (CommitFailedException, ValidationException, CommitStateUnknownException) as exc:
            raise BackendBusy(
                f"lake table {table}: a concurrent commit changed the same day ({exc})",
                hint="run the command again",
                table=table,
            ) from exc
        except Exception as exc:
            translated = self._translate(exc)
            if translated is None:
                raise
            translated.context.setdefault("table", table)
            raise translated from exc


def _on_day(day: str) -> BooleanExpression:
    # pyiceberg's predicates are pydantic models whose dataclass_transform hides their
    # positional __init__ from mypy; this is the documented call.
    return EqualTo(DAY, day)  # type: ignore[call-arg, arg-type]


def _day_filter(day: str | None) -> BooleanExpression:
    return AlwaysTrue() if day is None else _on_day(day)


def _chunks(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _conform(rows: pa.Table, target: pa.Schema, day: str, table: str) -> pa.Table:
    """`rows` in the table's column order and types, with `day` filled in."""
    extra = [n for n in rows.column_names if n not in target.names or n == DAY]
    if extra:
        raise ConfigError(f"lake table {table}: unexpected column(s) {extra}", table=table)
    columns: list[pa.Array | pa.ChunkedArray] = []
    for target_field in target:
        if target_field.name == DAY:
            columns.append(pa.array([day] * rows.num_rows, target_field.type))
        elif target_field.name in rows.column_names:
            column = rows.column(target_field.name)
            if column.null_count and not target_field.nullable:
                raise ConfigError(
                    f"lake table {table}: nulls in required column {target_field.name}",
                    table=table,
                )
            columns.append(column.cast(target_field.type))
        elif target_field.nullable:
            columns.append(pa.nulls(rows.num_rows, target_field.type))
        else:
            raise ConfigError(
                f"lake table {table}: required column {target_field.name} is missing", table=table
            )
    return pa.Table.from_arrays(columns, schema=target)


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with large strings and binaries as plain ones (what the rest of sluice uses)."""

    def plain(dtype: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(dtype):
            return pa.string()
        if pa.types.is_large_binary(dtype):
            return pa.binary()
        return dtype

    return pa.schema(
        [pa.field(f.name, plain(f.type), f.nullable) for f in schema], metadata=schema.metadata
    )
