"""The query engine on Athena: start a query, poll it with backoff, page its results into Arrow.

Athena reads the Glue catalog's tables itself (only registered partitions, partition keys as
string columns), so this engine needs no catalog or store: a workgroup, a database and, unless
the workgroup sets one, an S3 location for Athena's result files.

GetQueryResults returns every value as text; columns are cast to Arrow by the type Athena
reports for them (`ATHENA_TYPES`), and types with no counterpart here (array, map, row, json,
varbinary) stay strings, as Athena prints them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from sluice.backends.catalog.base import Partition, TableDef
from sluice.backends.catalog.glue import partition_values
from sluice.errors import BackendBusy, ConfigError, QueryFailed, SluiceError, TransientError

ATHENA_DDL_MAX_BYTES = 262_144  # Athena's limit on the length of a query string
PAGE_ROWS = 1000  # GetQueryResults' largest page

ATHENA_TYPES: dict[str, pa.DataType] = {
    "varchar": pa.string(),
    "char": pa.string(),
    "string": pa.string(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    # Athena prints milliseconds (engine v3 up to microseconds); "us" holds both, as DuckDB does.
    "timestamp": pa.timestamp("us"),
}
_ZONED = "timestamp with time zone"
_TRANSIENT = {"ThrottlingException", "TooManyRequestsException", "InternalServerException"}


@dataclass(frozen=True)
class PollPolicy:
    """How to wait for a query: exponential backoff from `first` to `cap` seconds, giving up
    after `timeout` seconds. `sleep` and `clock` are injectable so tests need not wait."""

    first: float = 0.2
    factor: float = 2.0
    cap: float = 5.0
    timeout: float = 30 * 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)


class AthenaQueryEngine:
    """A `QueryEngine` on Athena; safe to share between threads (it holds no query state)."""

    def __init__(
        self,
        client: Any,
        *,
        workgroup: str,
        database: str,
        output_location: str | None = None,
        poll: PollPolicy | None = None,
    ) -> None:
        self._client = client
        self.workgroup = workgroup
        self.database = database
        self.output_location = output_location
        self._poll = poll or PollPolicy()

    def query(self, sql: str) -> pa.Table:
        """Run one statement on Athena and return its result.

        Raises:
            QueryFailed: Athena rejected, failed or cancelled the statement (`query_id` names
                the execution, the message gives Athena's reason).
            TransientError: throttled, a failure Athena marks retryable, or still running
                after the poll timeout (the query is then stopped).
            ConfigError: access denied to Athena.
        """
        query_id = self._start(sql)
        execution = self._wait(query_id, sql)
        # Athena repeats the column names as the first row of a DML result; DDL and utility
        # statements (SHOW, DESCRIBE) have no such row.
        header = execution.get("StatementType", "DML") == "DML"
        return results_to_arrow(result_pages(self._client, query_id), header=header, sql=sql)

    def _start(self, sql: str) -> str:
        request: dict[str, Any] = {
            "QueryString": sql,
            "QueryExecutionContext": {"Database": self.database},
            "WorkGroup": self.workgroup,
        }
        if self.output_location:
            request["ResultConfiguration"] = {"OutputLocation": self.output_location}
        try:
            query_id: str = self._client.start_query_execution(**request)["QueryExecutionId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error("StartQueryExecution", exc, sql) from exc
        return query_id

    def _wait(self, query_id: str, sql: str) -> dict[str, Any]:
        poll = self._poll
        deadline = poll.clock() + poll.timeout
        delay = poll.first
        while True:
            try:
                answer = self._client.get_query_execution(QueryExecutionId=query_id)
            except (ClientError, BotoCoreError) as exc:
                raise self._error("GetQueryExecution", exc, sql, query_id) from exc
            execution: dict[str, Any] = answer["QueryExecution"]
            state = execution["Status"]["State"]
            if state == "SUCCEEDED":
                return execution
            if state in ("FAILED", "CANCELLED"):
                raise finished_error(execution, sql)
            left = deadline - poll.clock()
            if left <= 0:
                self._stop(query_id)
                raise TransientError(
                    f"Athena query {query_id} was still {state} after {poll.timeout:g}s; "
                    "stopped it",
                    hint=f"look at it in workgroup {self.workgroup}, or narrow the query",
                    query_id=query_id,
                    sql=sql,
                )
            poll.sleep(min(delay, left))
            delay = min(delay * poll.factor, poll.cap)

    def _stop(self, query_id: str) -> None:
        """Stop a query we gave up on, so it does not run (and bill) on its own."""
        # Best effort: the timeout is what the caller needs to hear about.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.stop_query_execution(QueryExecutionId=query_id)

    def _error(
        self, action: str, exc: Exception, sql: str, query_id: str | None = None
    ) -> SluiceError:
        if isinstance(exc, BotoCoreError):
            return BackendBusy(f"Athena {action}: {exc}", hint="retry later", query_id=query_id)
        assert isinstance(exc, ClientError)
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = f"Athena {action}: {code}: {error.get('Message', '')}"
        if code in _TRANSIENT:
            return BackendBusy(message, hint="Athena is throttling; retry later", code=code)
        if code == "AccessDeniedException":
            return ConfigError(message, hint="check the environment's IAM permissions", code=code)
        return QueryFailed(
            message,
            hint=f"workgroup {self.workgroup}, database {self.database}",
            code=code,
            sql=sql,
            query_id=query_id,
        )


def finished_error(execution: dict[str, Any], sql: str) -> SluiceError:
    """The error for a FAILED or CANCELLED execution (a GetQueryExecution `QueryExecution`)."""
    query_id = execution.get("QueryExecutionId")
    status = execution["Status"]
    athena_error = status.get("AthenaError", {})
    reason = status.get("StateChangeReason") or athena_error.get("ErrorMessage") or "no reason"
    if status["State"] == "CANCELLED":
        return QueryFailed(
            f"Athena query {query_id} was cancelled: {reason}",
            hint="it was stopped in Athena (console, API or workgroup limits); run it again",
            query_id=query_id,
            sql=sql,
        )
    context = {"query_id": query_id, "sql": sql, "error_type": athena_error.get("ErrorType")}
    if athena_error.get("Retryable"):
        # Athena says the same statement may succeed (e.g. capacity, an internal error).
        return TransientError(f"Athena query {query_id} failed: {reason}", **context)
    return QueryFailed(
        f"Athena query {query_id} failed: {reason}",
        hint="fix the statement; `SHOW TABLES` lists what Athena can see",
        **context,
    )


def result_pages(client: Any, query_id: str) -> Iterator[dict[str, Any]]:
    """GetQueryResults pages of a finished query, following NextToken."""
    token: str | None = None
    while True:
        request: dict[str, Any] = {"QueryExecutionId": query_id, "MaxResults": PAGE_ROWS}
        if token:
            request["NextToken"] = token
        try:
            page: dict[str, Any] = client.get_query_results(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            cls = BackendBusy if code in _TRANSIENT else QueryFailed
            raise cls(
                f"Athena GetQueryResults: {code}: {error.get('Message', '')}", query_id=query_id
            ) from exc
        except BotoCoreError as exc:
            raise BackendBusy(f"Athena GetQueryResults: {exc}", query_id=query_id) from exc
        yield page
        token = page.get("NextToken")
        if not token:
            return


def results_to_arrow(
    pages: Iterable[dict[str, Any]], *, header: bool, sql: str | None = None
) -> pa.Table:
    """An Arrow table from GetQueryResults pages; a missing `VarCharValue` is NULL.

    Raises:
        QueryFailed: a value does not parse as the type Athena declared for its column.
    """
    columns: list[dict[str, Any]] | None = None
    values: list[list[str | None]] = []
    for page in pages:
        result = page["ResultSet"]
        rows = result.get("Rows", [])
        if columns is None:
            columns = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
            values = [[] for _ in columns]
            if header and rows:
                rows = rows[1:]
        for row in rows:
            for i, datum in enumerate(row["Data"]):
                values[i].append(datum.get("VarCharValue"))
    columns = columns or []
    arrays = [_column(info, column, sql) for info, column in zip(columns, values, strict=True)]
    return pa.Table.from_arrays(arrays, names=[info["Name"] for info in columns])


def _column(info: dict[str, Any], values: list[str | None], sql: str | None) -> pa.Array:
    athena_type = str(info.get("Type", "varchar")).lower()
    try:
        if athena_type == _ZONED:
            return pa.array([_zoned(v) for v in values], pa.timestamp("us", tz="UTC"))
        if athena_type == "decimal":
            target = pa.decimal128(int(info.get("Precision", 38)), int(info.get("Scale", 0)))
        else:
            target = ATHENA_TYPES.get(athena_type, pa.string())
        return pa.array(values, pa.string()).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise QueryFailed(
            f"column {info.get('Name')!r} of Athena type {athena_type} does not read as "
            f"Arrow: {exc}",
            sql=sql,
        ) from exc


def _zoned(text: str | None) -> datetime | None:
    """`2025-11-24 21:09:35.120 UTC` (or any IANA zone name) as an aware datetime."""
    if text is None:
        return None
    stamp, _, zone = text.rpartition(" ")
    try:
        return datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo(zone))
    except ZoneInfoNotFoundError as exc:
        raise ValueError(f"unknown time zone in {text!r}") from exc


def add_partition_statements(
    table: TableDef,
    partitions: Sequence[Partition],
    *,
    database: str | None = None,
    max_bytes: int = ATHENA_DDL_MAX_BYTES,
) -> list[str]:
    """`ALTER TABLE … ADD IF NOT EXISTS PARTITION (…) LOCATION '…' …` statements for Athena.

    Each statement is shorter than `max_bytes` in UTF-8, and together they name every
    partition once, in the order given. For registering partitions through Athena where the
    Glue API is not at hand; never `MSCK REPAIR TABLE`, which lists the table's whole location.

    Raises:
        ConfigError: values that do not match the table's keys, a quote or backtick in a name,
            value or location, or one partition alone making a statement of `max_bytes`.
    """
    for name in (table.name, *table.partition_keys, database or ""):
        if "`" in name:
            raise ConfigError(f"name {name!r} holds a backtick", table=table.name)
    qualified = f"`{database}`.`{table.name}`" if database else f"`{table.name}`"
    head = f"ALTER TABLE {qualified} ADD IF NOT EXISTS"
    head_size = len(head.encode())
    statements: list[str] = []
    clauses: list[str] = []
    size = head_size
    for values in partition_values(table, partitions):
        location = Partition(values).location(table)
        if "'" in location:
            raise ConfigError(f"partition {values} or its location holds a quote", table=table.name)
        pairs = zip(table.partition_keys, values, strict=True)
        spec = ", ".join(f"`{key}` = '{value}'" for key, value in pairs)
        clause = f"\n  PARTITION ({spec}) LOCATION '{location}'"
        clause_size = len(clause.encode())
        if head_size + clause_size >= max_bytes:
            raise ConfigError(
                f"partition {values} alone makes a statement of {max_bytes} bytes or more",
                table=table.name,
            )
        if size + clause_size >= max_bytes:
            statements.append(head + "".join(clauses))
            clauses, size = [], head_size
        clauses.append(clause)
        size += clause_size
    if clauses:
        statements.append(head + "".join(clauses))
    return statements
