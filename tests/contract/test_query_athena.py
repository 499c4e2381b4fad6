"""The Athena query engine: start, poll with backoff, page results into Arrow, and its errors.

Athena cannot run the query contract of `test_query.py`: moto's Athena executes no SQL. What
moto does do is run the request flow for real (StartQueryExecution, GetQueryExecution through
QUEUED and RUNNING, StopQueryExecution, GetQueryResults) and return results seeded through its
own API, so these tests drive the engine against it with seeded, Athena-shaped results. Where
moto cannot produce a state (a FAILED execution, a second page of results, throttling), the
tests say so and check the part of the engine that handles it on an answer shaped like AWS's.
The DuckDB engine over S3 (`duckdb-s3` in `test_query.py`) is the AWS query path tested end
to end.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from sluice.backends.catalog.base import Partition, TableDef
from sluice.backends.query.athena import (
    ATHENA_DDL_MAX_BYTES,
    AthenaQueryEngine,
    PollPolicy,
    add_partition_statements,
    finished_error,
    result_pages,
    results_to_arrow,
)
from sluice.errors import BackendBusy, ConfigError, QueryFailed, TransientError

DATABASE = "sluice"
OUTPUT = "s3://athena-results/sluice/"
SQL = "SELECT * FROM telemetry_lock_flat"


def column(name: str, type_: str, precision: int = 0, scale: int = 0) -> dict[str, Any]:
    """A ColumnInfo entry as Athena returns it."""
    return {
        "CatalogName": "hive",
        "SchemaName": "",
        "TableName": "",
        "Name": name,
        "Label": name,
        "Type": type_,
        "Precision": precision,
        "Scale": scale,
        "Nullable": "UNKNOWN",
        "CaseSensitive": type_ == "varchar",
    }


def row(*values: str | None) -> dict[str, Any]:
    """A result row as Athena returns it: a NULL has no VarCharValue."""
    return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}


def header(columns: list[dict[str, Any]]) -> dict[str, Any]:
    return row(*(c["Name"] for c in columns))


def post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 201


@dataclass
class Athena:
    engine: AthenaQueryEngine
    client: Any
    endpoint: str
    workgroup: str
    slept: list[float] = field(default_factory=list)

    def seed(self, columns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """Queue the result moto hands the next query started (moto's own API)."""
        post(
            f"{self.endpoint}/moto-api/static/athena/query-results",
            {"results": [{"rows": rows, "column_info": columns}]},
        )

    def progress_every(self, polls: int) -> None:
        """Make executions move QUEUED -> RUNNING -> SUCCEEDED once per `polls` polls."""
        post(
            f"{self.endpoint}/moto-api/state-manager/set-transition",
            {
                "model_name": "athena::execution",
                "transition": {"progression": "manual", "times": polls},
            },
        )

    def executions(self) -> list[dict[str, Any]]:
        ids = self.client.list_query_executions(WorkGroup=self.workgroup)["QueryExecutionIds"]
        return [self.client.get_query_execution(QueryExecutionId=i)["QueryExecution"] for i in ids]


@pytest.fixture
def athena(aws_clients: Any, moto_endpoint: str) -> Iterator[Athena]:
    """An engine on a workgroup of its own; polls never really sleep."""
    client = aws_clients.client("athena")
    workgroup = f"sluice-test-{uuid.uuid4().hex[:12]}"
    client.create_work_group(Name=workgroup)
    slept: list[float] = []
    engine = AthenaQueryEngine(
        client,
        workgroup=workgroup,
        database=DATABASE,
        output_location=OUTPUT,
        poll=PollPolicy(first=1, factor=2, cap=4, timeout=600, sleep=slept.append),
    )
    yield Athena(engine, client, moto_endpoint, workgroup, slept)
    post(
        f"{moto_endpoint}/moto-api/state-manager/unset-transition",
        {"model_name": "athena::execution"},
    )
    client.delete_work_group(WorkGroup=workgroup)


TYPED = [
    column("event_id", "varchar"),
    column("line", "bigint", 19),
    column("battery", "integer", 10),
    column("cpu", "double", 17),
    column("ok", "boolean"),
    column("at", "timestamp", 3),
    column("day", "date"),
    column("price", "decimal", 10, 2),
    column("at_zoned", "timestamp with time zone", 3),
    column("tags", "array"),
]


@pytest.mark.aws
def test_select_result_becomes_typed_arrow_with_nulls(athena: Athena) -> None:
    athena.seed(
        TYPED,
        [
            header(TYPED),
            row(
                "e1", "1", "80", "1.5", "true", "2025-11-24 21:09:35.120", "2025-11-24",
                "12.34", "2025-11-24 21:09:35.120 UTC", "[a, b]",
            ),
            row("", None, None, "NaN", "false", None, None, None, None, None),
            row(None, "-9", "0", "-Infinity", None, "2025-11-24 00:00:00.000", "2025-11-25",
                "-0.50", "2025-11-24 22:09:35.000 Europe/Berlin", "[]"),
        ],
    )  # fmt: skip

    result = athena.engine.query(SQL)

    assert result.column_names == [c["Name"] for c in TYPED]
    assert [str(t) for t in result.schema.types] == [
        "string", "int64", "int32", "double", "bool", "timestamp[us]", "date32[day]",
        "decimal128(10, 2)", "timestamp[us, tz=UTC]", "string",
    ]  # fmt: skip
    got = result.to_pylist()
    assert got[0] == {
        "event_id": "e1",
        "line": 1,
        "battery": 80,
        "cpu": 1.5,
        "ok": True,
        "at": datetime(2025, 11, 24, 21, 9, 35, 120000),
        "day": date(2025, 11, 24),
        "price": Decimal("12.34"),
        "at_zoned": datetime(2025, 11, 24, 21, 9, 35, 120000, tzinfo=UTC),
        "tags": "[a, b]",
    }
    assert got[1]["event_id"] == ""  # an empty string is not a NULL
    assert [k for k, v in got[1].items() if v is None] == [
        "line", "battery", "at", "day", "price", "at_zoned", "tags",
    ]  # fmt: skip
    assert got[2]["event_id"] is None and got[2]["cpu"] == float("-inf")
    assert got[2]["at_zoned"] == datetime(2025, 11, 24, 21, 9, 35, tzinfo=UTC)


@pytest.mark.aws
def test_query_runs_in_the_workgroup_and_database_given(athena: Athena) -> None:
    athena.engine.query(SQL)

    [execution] = athena.executions()
    assert execution["Query"] == SQL
    assert execution["WorkGroup"] == athena.workgroup
    assert execution["QueryExecutionContext"]["Database"] == DATABASE
    assert execution["ResultConfiguration"]["OutputLocation"].startswith(OUTPUT)
    assert execution["Status"]["State"] == "SUCCEEDED"


@pytest.mark.aws
def test_empty_select_keeps_its_columns(athena: Athena) -> None:
    athena.seed(TYPED[:3], [header(TYPED[:3])])
    result = athena.engine.query(SQL)
    assert (result.num_rows, result.column_names) == (0, ["event_id", "line", "battery"])
    assert result.schema.field("line").type == pa.int64()


@pytest.mark.aws
def test_ddl_result_has_no_header_row(athena: Athena) -> None:
    columns = [column("tab_name", "varchar")]
    athena.seed(columns, [row("telemetry_bridge_flat"), row("telemetry_lock_flat")])
    result = athena.engine.query("SHOW TABLES")
    assert result.column("tab_name").to_pylist() == ["telemetry_bridge_flat", "telemetry_lock_flat"]


@pytest.mark.aws
def test_polls_with_capped_exponential_backoff(athena: Athena) -> None:
    athena.progress_every(3)  # QUEUED for 2 polls, RUNNING for 3, then SUCCEEDED
    athena.seed(TYPED[:1], [header(TYPED[:1]), row("e1")])

    assert athena.engine.query(SQL).to_pylist() == [{"event_id": "e1"}]
    assert athena.slept == [1, 2, 4, 4, 4]


@pytest.mark.aws
def test_many_rows(athena: Athena) -> None:
    """2,500 rows; moto answers them in one page (it ignores MaxResults), see the next test."""
    columns = TYPED[:2]
    athena.seed(columns, [header(columns), *(row(f"e{i}", str(i)) for i in range(2500))])
    result = athena.engine.query(SQL)
    assert result.num_rows == 2500
    assert result.column("line").to_pylist() == list(range(2500))


@dataclass
class PagedResults:
    """Stands in for GetQueryResults where moto cannot: Athena's pages of at most MaxResults
    rows, the header row only on the first, NextToken on every page but the last."""

    columns: list[dict[str, Any]]
    rows: list[dict[str, Any]]

    def get_query_results(
        self, QueryExecutionId: str, MaxResults: int, NextToken: str = "0"
    ) -> dict[str, Any]:
        start = int(NextToken)
        page: dict[str, Any] = {
            "ResultSet": {
                "Rows": self.rows[start : start + MaxResults],
                "ResultSetMetadata": {"ColumnInfo": self.columns},
            }
        }
        if start + MaxResults < len(self.rows):
            page["NextToken"] = str(start + MaxResults)
        return page


def test_result_pages_follow_next_token() -> None:
    columns = TYPED[:2]
    rows = [header(columns), *(row(f"e{i}", str(i)) for i in range(2500))]
    result = results_to_arrow(result_pages(PagedResults(columns, rows), "q-1"), header=True)
    assert result.num_rows == 2500
    assert result.column("line").to_pylist() == list(range(2500))  # one header, dropped once


@pytest.mark.aws
def test_cancelled_query_is_query_failed(athena: Athena) -> None:
    athena.progress_every(1_000_000)  # never finishes on its own

    def cancel_from_elsewhere(_: float) -> None:
        for execution in athena.executions():
            athena.client.stop_query_execution(QueryExecutionId=execution["QueryExecutionId"])

    athena.engine = AthenaQueryEngine(
        athena.client,
        workgroup=athena.workgroup,
        database=DATABASE,
        poll=PollPolicy(sleep=cancel_from_elsewhere),
    )
    with pytest.raises(QueryFailed, match="cancelled") as info:
        athena.engine.query(SQL)
    [execution] = athena.executions()
    assert info.value.context["query_id"] == execution["QueryExecutionId"]


@pytest.mark.aws
def test_timeout_stops_the_query_and_is_transient(athena: Athena) -> None:
    athena.progress_every(1_000_000)
    now = [0.0]

    def sleep(seconds: float) -> None:
        athena.slept.append(seconds)
        now[0] += seconds

    athena.engine = AthenaQueryEngine(
        athena.client,
        workgroup=athena.workgroup,
        database=DATABASE,
        poll=PollPolicy(first=1, cap=4, timeout=10, sleep=sleep, clock=lambda: now[0]),
    )
    with pytest.raises(TransientError, match="still QUEUED after 10s") as info:
        athena.engine.query(SQL)
    assert not isinstance(info.value, QueryFailed)
    assert athena.slept == [1, 2, 4, 3]  # the last wait ends at the deadline
    [execution] = athena.executions()
    assert execution["Status"]["State"] == "CANCELLED"  # not left running
    assert info.value.context["query_id"] == execution["QueryExecutionId"]


@pytest.mark.aws
def test_unknown_workgroup_is_query_failed_naming_it(athena: Athena) -> None:
    engine = AthenaQueryEngine(athena.client, workgroup="no-such-workgroup", database=DATABASE)
    with pytest.raises(QueryFailed, match="WorkGroup") as info:
        engine.query(SQL)
    assert info.value.hint is not None and "no-such-workgroup" in info.value.hint


def test_failed_execution_is_query_failed_with_athenas_reason() -> None:
    """Moto's executions only ever succeed or are cancelled, so a FAILED one is checked on
    the QueryExecution shape AWS documents."""
    reason = "COLUMN_NOT_FOUND: line 1:8: Column 'nope' cannot be resolved"
    failed = {
        "QueryExecutionId": "q-1",
        "StatementType": "DML",
        "Status": {
            "State": "FAILED",
            "StateChangeReason": reason,
            "AthenaError": {"ErrorCategory": 2, "ErrorType": 1006, "Retryable": False},
        },
    }
    error = finished_error(failed, "SELECT nope FROM t")
    assert isinstance(error, QueryFailed)
    assert "q-1" in error.message and reason in error.message
    assert error.context["query_id"] == "q-1"

    failed["Status"]["AthenaError"] = {"ErrorCategory": 1, "ErrorType": 401, "Retryable": True}
    retryable = finished_error(failed, "SELECT nope FROM t")
    assert isinstance(retryable, TransientError) and reason in retryable.message


@pytest.mark.aws
def test_throttling_is_transient(athena: Athena) -> None:
    """Moto never throttles; the engine's translation is checked on botocore's error."""
    throttled = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
        "StartQueryExecution",
    )
    assert isinstance(athena.engine._error("StartQueryExecution", throttled, SQL), BackendBusy)


def test_value_not_of_its_declared_type_is_query_failed() -> None:
    page = {
        "ResultSet": {
            "Rows": [row("line"), row("12"), row("twelve")],
            "ResultSetMetadata": {"ColumnInfo": [column("line", "bigint")]},
        }
    }
    with pytest.raises(QueryFailed, match=r"'line'.*bigint"):
        results_to_arrow([page], header=True)


# -- ALTER TABLE ... ADD PARTITION for Athena (DESIGN §6) ---------------------------------

LOCK = TableDef(
    "telemetry_lock_flat",
    "s3://verified/telemetry_flat/type=lock/",
    pa.schema([("envelope__event_id", pa.string())]),
    ("day", "hour"),
)
_CLAUSE = re.compile(r"PARTITION \(`day` = '([^']+)', `hour` = '([^']+)'\) LOCATION '([^']+)'")


def hours(days: int) -> list[Partition]:
    return [
        Partition((f"2025-{m:02d}-{d:02d}", f"{h:02d}"))
        for m in range(1, 13)
        for d in range(1, 29)
        for h in range(24)
    ][: days * 24]


def test_add_partition_statements_stay_under_athenas_limit() -> None:
    parts = hours(300)  # 7,200 partitions, about 800 KB of DDL
    statements = add_partition_statements(LOCK, [*parts, parts[0]], database="sluice")

    assert len(statements) > 1
    assert all(len(s.encode()) < ATHENA_DDL_MAX_BYTES for s in statements)
    assert all(s.startswith("ALTER TABLE `sluice`.`telemetry_lock_flat` ADD IF NOT EXISTS\n")
               for s in statements)  # fmt: skip
    named = [m.groups() for s in statements for m in _CLAUSE.finditer(s)]
    assert named == [(*p.values, p.location(LOCK)) for p in parts]  # each once, in order


def test_add_partition_statements_split_at_any_limit() -> None:
    parts = hours(2)
    statements = add_partition_statements(LOCK, parts, max_bytes=1000)
    assert all(len(s.encode()) < 1000 for s in statements)
    assert sum(len(_CLAUSE.findall(s)) for s in statements) == len(parts)
    assert add_partition_statements(LOCK, []) == []


def test_add_partition_statements_refuse_what_they_cannot_write() -> None:
    with pytest.raises(ConfigError, match="alone"):
        add_partition_statements(LOCK, hours(1), max_bytes=100)
    with pytest.raises(ConfigError, match="quote"):
        add_partition_statements(LOCK, [Partition(("2025-11-24", "2'1"))])
    with pytest.raises(ConfigError, match="keys are"):
        add_partition_statements(LOCK, [Partition(("2025-11-24",))])
    with pytest.raises(ConfigError):
        add_partition_statements(LOCK, [Partition(("../x", "00"))])
