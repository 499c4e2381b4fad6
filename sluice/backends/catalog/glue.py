"""The catalog on AWS Glue: Hive-style Parquet tables that Athena reads.

Each table is an external table whose columns are the Arrow schema mapped to Hive types, with
every partition key a `string`; the exact Arrow schema rides along, serialised, in the table's
`Parameters`, so `get_table` returns the same `pa.Schema` the embedded catalog returns. Tables
without that parameter (an Iceberg table of the lake, one made by hand) are not this catalog's:
it neither lists them nor overwrites or drops them.

Where it differs from the embedded catalog:

- Batches of partitions are not atomic: a failure in a later batch leaves the earlier ones
  registered (adding is idempotent, so the caller retries the whole call). Concurrent adds
  still count each partition as new exactly once, but not all in one caller.
- Glue returns partitions in no documented order, so `list_partitions` reads every page
  (values only, no column schemas) and sorts them before yielding the first.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from sluice.backends.catalog.base import (
    Partition,
    TableDef,
    check_segment,
    check_table_def,
    require_table,
)
from sluice.errors import BackendBusy, ConfigError, SluiceError, TerminalError

CREATE_BATCH = 100  # BatchCreatePartition's limit per request
DELETE_BATCH = 25  # BatchDeletePartition's limit per request
SCHEMA_PARAM = "sluice.arrow_schema"  # base64 Arrow IPC schema; marks the table as ours

_PARQUET_SD = {
    "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "SerdeInfo": {
        "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
        "Parameters": {"serialization.format": "1"},
    },
}
_TRANSIENT = {
    "ThrottlingException",
    "InternalServiceException",
    "OperationTimeoutException",
    "ConcurrentModificationException",
    "ResourceNotReadyException",
}
_CONFIG = {
    "AccessDeniedException",
    "EntityNotFoundException",
    "InvalidInputException",
    "ResourceNumberLimitExceededException",
    "GlueEncryptionException",
}
_SIMPLE_HIVE = {
    pa.string(): "string",
    pa.large_string(): "string",
    pa.int8(): "tinyint",
    pa.int16(): "smallint",
    pa.int32(): "int",
    pa.int64(): "bigint",
    pa.uint8(): "smallint",
    pa.uint16(): "int",
    pa.uint32(): "bigint",
    pa.float32(): "float",
    pa.float64(): "double",
    pa.bool_(): "boolean",
    pa.date32(): "date",
    pa.binary(): "binary",
    pa.large_binary(): "binary",
}


class GlueCatalog:
    """A `Catalog` in one Glue database (created by the first `ensure_table` if missing)."""

    def __init__(self, client: Any, database: str) -> None:
        self._client = client
        self.database = database
        self._database_ensured = False

    def ensure_table(self, table: TableDef) -> None:
        """Create or update a table.

        Raises:
            ConfigError: a partition key is not a safe name or is also a data column, a column
                type has no Hive equivalent, or the table exists with different partition keys
                or was not created by sluice.
        """
        _check_table(table)
        if not self._database_ensured:
            # Here rather than at construction: a reader (a Lambda parser) needs no right to
            # create databases, only whoever sets up tables does.
            with self._errors("CreateDatabase", ignore={"AlreadyExistsException"}):
                self._client.create_database(DatabaseInput={"Name": self.database})
            self._database_ensured = True
        wanted = _table_input(table)
        current = self._raw_table(table.name)
        if current is None:
            with self._errors("CreateTable", ignore={"AlreadyExistsException"}, table=table.name):
                self._client.create_table(DatabaseName=self.database, TableInput=wanted)
                return
            current = self._raw_table(table.name)  # another process created it first
            if current is None:
                raise BackendBusy(
                    f"Glue table {self.database}.{table.name} was created and dropped meanwhile",
                    hint="retry",
                    table=table.name,
                )
        existing = _table_def(current)
        if existing is None:
            raise ConfigError(
                f"Glue table {self.database}.{table.name} exists but was not created by sluice",
                hint="choose another table name or drop that table in Glue yourself",
                table=table.name,
            )
        if existing.partition_keys != table.partition_keys:
            raise ConfigError(
                f"table {table.name!r} exists with partition keys {existing.partition_keys}, "
                f"not {table.partition_keys}",
                hint="drop the table first (its partitions go with it), then create it again",
                table=table.name,
            )
        if existing.location == table.location and existing.schema.equals(
            table.schema, check_metadata=True
        ):
            return  # Glue keeps a version per UpdateTable; an unchanged table makes none
        # Keep parameters others set (Athena, Lake Formation); ours overwrite theirs.
        wanted["Parameters"] = {**current.get("Parameters", {}), **wanted["Parameters"]}
        with self._errors("UpdateTable", table=table.name):
            self._client.update_table(
                DatabaseName=self.database, TableInput=wanted, SkipArchive=True
            )

    def get_table(self, name: str) -> TableDef | None:
        raw = self._raw_table(name)
        return None if raw is None else _table_def(raw)

    def list_tables(self) -> list[TableDef]:
        """This catalog's tables in name order (tables sluice did not create are left out)."""
        tables = []
        # A database not created yet holds no tables.
        with self._errors("GetTables", ignore={"EntityNotFoundException"}):
            for page in self._client.get_paginator("get_tables").paginate(
                DatabaseName=self.database
            ):
                tables += [t for raw in page["TableList"] if (t := _table_def(raw)) is not None]
        return sorted(tables, key=lambda t: t.name)

    def drop_table(self, name: str) -> None:
        """Drop a table and its partitions; dropping a missing table does nothing.

        Raises:
            ConfigError: the table was not created by sluice.
        """
        raw = self._raw_table(name)
        if raw is None:
            return
        if _table_def(raw) is None:
            raise ConfigError(
                f"Glue table {self.database}.{name} was not created by sluice; not dropping it",
                table=name,
            )
        # Glue deletes a dropped table's partitions asynchronously, so a table created again
        # at once under the same name could see them; unregister them first.
        self._delete(name, [p.values for p in self._sorted_partitions(name)])
        with self._errors("DeleteTable", ignore={"EntityNotFoundException"}, table=name):
            self._client.delete_table(DatabaseName=self.database, Name=name)

    def add_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        """Register partitions, CREATE_BATCH per request; returns how many were new.

        Raises:
            ConfigError: no such table, or values that do not match its partition keys.
            TerminalError: Glue refused some entries (`errors` holds them); batches before
                the failing one stay registered.
            BackendBusy: Glue is throttling or failing for now.
        """
        tdef = self._require(table)
        values = partition_values(tdef, partitions)
        columns = _columns(tdef.schema)
        new = 0
        for start in range(0, len(values), CREATE_BATCH):
            batch = values[start : start + CREATE_BATCH]
            inputs = [
                {"Values": list(v), "StorageDescriptor": _storage(columns, Partition(v), tdef)}
                for v in batch
            ]
            with self._errors("BatchCreatePartition", table=table):
                answer = self._client.batch_create_partition(
                    DatabaseName=self.database, TableName=table, PartitionInputList=inputs
                )
            new += len(batch) - self._entry_errors(answer, "AlreadyExistsException", table)
        return new

    def drop_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        """Unregister partitions, DELETE_BATCH per request; returns how many existed.

        Raises:
            ConfigError: no such table, or values that do not match its partition keys.
            TerminalError: Glue refused some entries (`errors` holds them).
            BackendBusy: Glue is throttling or failing for now.
        """
        return self._delete(table, partition_values(self._require(table), partitions))

    def list_partitions(self, table: str) -> Iterator[Partition]:
        """Registered partitions, in order of their values.

        Raises:
            ConfigError: no such table (raised at the call, not at the first item).
        """
        self._require(table)
        return self._sorted_partitions(table)

    def _sorted_partitions(self, table: str) -> Iterator[Partition]:
        values: list[tuple[str, ...]] = []
        with self._errors("GetPartitions", table=table):
            pages = self._client.get_paginator("get_partitions").paginate(
                DatabaseName=self.database, TableName=table, ExcludeColumnSchema=True
            )
            for page in pages:
                values += [tuple(p["Values"]) for p in page["Partitions"]]
        return iter([Partition(v) for v in sorted(values)])

    def _delete(self, table: str, values: list[tuple[str, ...]]) -> int:
        existed = 0
        for start in range(0, len(values), DELETE_BATCH):
            batch = values[start : start + DELETE_BATCH]
            with self._errors("BatchDeletePartition", table=table):
                answer = self._client.batch_delete_partition(
                    DatabaseName=self.database,
                    TableName=table,
                    PartitionsToDelete=[{"Values": list(v)} for v in batch],
                )
            existed += len(batch) - self._entry_errors(answer, "EntityNotFoundException", table)
        return existed

    def _entry_errors(self, answer: dict[str, Any], harmless: str, table: str) -> int:
        """How many entries failed only with `harmless`; any other per-entry error raises."""
        errors = answer.get("Errors", [])
        others = [e for e in errors if e["ErrorDetail"]["ErrorCode"] != harmless]
        if others:
            codes = sorted({e["ErrorDetail"]["ErrorCode"] for e in others})
            first = others[0]["ErrorDetail"]
            message = (
                f"Glue refused {len(others)} partition(s) of {self.database}.{table} "
                f"({', '.join(codes)}): {first.get('ErrorMessage', '')}"
            )
            cls = BackendBusy if set(codes) <= _TRANSIENT else TerminalError
            raise cls(message, table=table, errors=others)
        return len(errors)

    def _raw_table(self, name: str) -> dict[str, Any] | None:
        with self._errors("GetTable", ignore={"EntityNotFoundException"}, table=name):
            answer = self._client.get_table(DatabaseName=self.database, Name=name)
            table: dict[str, Any] = answer["Table"]
            return table
        return None

    def _require(self, name: str) -> TableDef:
        return require_table(self, name, f"the catalog (Glue database {self.database})")

    @contextmanager
    def _errors(
        self, action: str, *, ignore: frozenset[str] | set[str] = frozenset(), **context: Any
    ) -> Iterator[None]:
        """Translate botocore's errors into sluice's; an error coded in `ignore` is swallowed."""
        try:
            yield
        except ClientError as exc:
            if _code(exc) not in ignore:
                raise _translate(exc, action, self.database, **context) from exc
        except BotoCoreError as exc:
            raise BackendBusy(f"Glue {action}: {exc}", hint="retry later", **context) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def _translate(exc: ClientError, action: str, database: str, **context: Any) -> SluiceError:
    code = _code(exc)
    detail = exc.response.get("Error", {}).get("Message", "")
    message = f"Glue {action} in database {database}: {code}: {detail}"
    if code in _TRANSIENT:
        return BackendBusy(message, hint="Glue is throttling; retry later", code=code, **context)
    if code in _CONFIG:
        hint = "check the environment's region, glue_database and IAM permissions"
        return ConfigError(message, hint=hint, code=code, **context)
    return TerminalError(message, code=code, **context)


def hive_type(type_: pa.DataType) -> str:
    """The Hive (Glue/Athena DDL) type of an Arrow type.

    Raises:
        ConfigError: the type has no Hive equivalent Athena can read from Parquet.
    """
    if type_ in _SIMPLE_HIVE:
        return _SIMPLE_HIVE[type_]
    if pa.types.is_timestamp(type_):
        return "timestamp"
    if pa.types.is_decimal(type_):
        return f"decimal({type_.precision},{type_.scale})"
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return f"array<{hive_type(type_.value_type)}>"
    if pa.types.is_map(type_):
        return f"map<{hive_type(type_.key_type)},{hive_type(type_.item_type)}>"
    if pa.types.is_struct(type_):
        fields = ",".join(f"{f.name}:{hive_type(f.type)}" for f in type_)
        return f"struct<{fields}>"
    raise ConfigError(
        f"Arrow type {type_} has no Hive type Athena can read",
        hint="use string, integer, floating point, bool, timestamp, date, decimal, binary, "
        "list, map or struct columns",
    )


def _check_table(table: TableDef) -> None:
    """The embedded catalog's checks on a table definition, plus Hive-typed columns."""
    check_table_def(table)
    _columns(table.schema)


def partition_values(table: TableDef, partitions: Sequence[Partition]) -> list[tuple[str, ...]]:
    """The partitions' values, each once, in the order given.

    Raises:
        ConfigError: a partition whose values do not match the table's keys in number, or
            that are not safe path segments.
    """
    seen: dict[tuple[str, ...], None] = {}
    for part in partitions:
        if len(part.values) != len(table.partition_keys):
            raise ConfigError(
                f"partition {part.values} of table {table.name!r} has "
                f"{len(part.values)} values; the table's keys are {table.partition_keys}",
                table=table.name,
            )
        for value in part.values:
            check_segment("partition value", value)
        seen[part.values] = None
    return list(seen)


def _columns(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"Name": f.name, "Type": hive_type(f.type)} for f in schema]


def _storage(columns: list[dict[str, str]], part: Partition | None, table: TableDef) -> Any:
    location = table.location if part is None else part.location(table)
    return {"Columns": columns, "Location": location, **_PARQUET_SD}


def _table_input(table: TableDef) -> dict[str, Any]:
    schema = base64.b64encode(table.schema.serialize().to_pybytes()).decode()
    return {
        "Name": table.name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"EXTERNAL": "TRUE", "classification": "parquet", SCHEMA_PARAM: schema},
        "StorageDescriptor": _storage(_columns(table.schema), None, table),
        "PartitionKeys": [{"Name": k, "Type": "string"} for k in table.partition_keys],
    }


def _table_def(raw: dict[str, Any]) -> TableDef | None:
    """The table sluice created, or None for a table it did not (no Arrow schema parameter)."""
    blob = raw.get("Parameters", {}).get(SCHEMA_PARAM)
    if blob is None:
        return None
    return TableDef(
        name=raw["Name"],
        location=raw["StorageDescriptor"]["Location"],
        schema=pa.ipc.read_schema(pa.py_buffer(base64.b64decode(blob))),
        partition_keys=tuple(k["Name"] for k in raw.get("PartitionKeys", [])),
    )
