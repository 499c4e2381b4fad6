"""The query engine contract: every `QueryEngine` passes these tests.

A lake is an engine with the catalog and object store it reads; Parquet files are written to
the store and their partitions registered in the catalog, as the pipeline does.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.backends.catalog.base import Catalog, Partition, TableDef
from sluice.backends.catalog.sqlite import SqliteCatalog
from sluice.backends.query.base import QueryEngine
from sluice.backends.query.duckdb import DuckDBQueryEngine
from sluice.backends.store.base import ObjectStore
from sluice.backends.store.local import LocalObjectStore
from sluice.errors import QueryFailed

BUCKET = "verified"
SCHEMA = pa.schema(
    [
        pa.field("envelope__event_id", pa.string()),
        pa.field("envelope__line", pa.int64()),
        pa.field("payload__battery_pct", pa.int64()),
    ]
)
LOCK = TableDef(
    "telemetry_lock_flat", f"s3://{BUCKET}/telemetry_flat/type=lock/", SCHEMA, ("day", "hour")
)
COLUMNS = [*SCHEMA.names, "day", "hour"]
H21 = Partition(("2025-11-24", "21"))
H22 = Partition(("2025-11-24", "22"))
NEXT_DAY = Partition(("2025-11-25", "00"))


@dataclass
class Lake:
    engine: QueryEngine
    catalog: Catalog
    store: ObjectStore

    def write(self, table: TableDef, part: Partition | None, name: str, data: pa.Table) -> None:
        """Write `data` as Parquet file `name` in a partition (None: unpartitioned table)."""
        buf = io.BytesIO()
        pq.write_table(data, buf)
        location = table.location if part is None else part.location(table)
        key = location.removeprefix(f"s3://{BUCKET}/") + name
        self.store.put(BUCKET, key, buf.getvalue())

    def scalar(self, sql: str) -> object:
        return self.engine.query(sql).column(0)[0].as_py()


@pytest.fixture(params=["duckdb-local", pytest.param("duckdb-s3", marks=pytest.mark.aws)])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    if request.param == "duckdb-local":
        catalog = SqliteCatalog(tmp_path / "catalog.sqlite")
        store = LocalObjectStore(tmp_path / "buckets")
        engine = DuckDBQueryEngine(catalog, store, threads=2)
        yield Lake(engine, catalog, store)
        engine.close()
        return
    if request.param == "duckdb-s3":
        yield from _s3_lake(request)
        return
    raise AssertionError(f"unknown engine {request.param}")


def _s3_lake(request: pytest.FixtureRequest) -> Iterator[Lake]:
    """DuckDB reading S3 through pyarrow, tables in Glue: the AWS environment's own engine,
    run for real against the moto server (`BUCKET` fresh, a Glue database of its own)."""
    from sluice.backends.catalog.glue import GlueCatalog
    from sluice.backends.store.s3 import S3ObjectStore
    from tests.moto_server import REGION

    clients: Any = request.getfixturevalue("aws_clients")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    s3 = clients.client("s3")
    _empty_bucket(s3, BUCKET)
    database = f"sluice_test_{uuid.uuid4().hex[:12]}"
    catalog = GlueCatalog(clients.client("glue"), database)
    store = S3ObjectStore(s3, region=REGION, endpoint_url=endpoint, credentials=clients.credentials)
    engine = DuckDBQueryEngine(catalog, store, threads=2)
    yield Lake(engine, catalog, store)
    engine.close()
    clients.client("glue").delete_database(Name=database)
    _empty_bucket(s3, BUCKET)


def _empty_bucket(client: Any, bucket: str) -> None:
    """Create `bucket` if missing and delete what it holds (the raw client: no code under test)."""
    from botocore.exceptions import ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})


def rows(n: int, start: int = 0, battery: int = 50) -> pa.Table:
    return pa.table(
        {
            "envelope__event_id": [f"e{i}" for i in range(start, start + n)],
            "envelope__line": list(range(start + 1, start + n + 1)),
            "payload__battery_pct": [battery] * n,
        },
        schema=SCHEMA,
    )


def count(lake: Lake, table: str = LOCK.name) -> object:
    return lake.scalar(f"SELECT count(*) FROM {table}")


def test_reads_only_registered_partitions(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.write(LOCK, H21, "a.parquet", rows(3))
    lake.write(LOCK, H21, "b.parquet", rows(2, start=3))
    lake.write(LOCK, H22, "c.parquet", rows(4))
    lake.catalog.add_partitions(LOCK.name, [H21])

    assert count(lake) == 5
    lake.catalog.add_partitions(LOCK.name, [H22])
    assert count(lake) == 9
    lake.catalog.drop_partitions(LOCK.name, [H21])
    assert count(lake) == 4


def test_sees_files_written_between_queries(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.catalog.add_partitions(LOCK.name, [H21])
    assert count(lake) == 0
    lake.write(LOCK, H21, "a.parquet", rows(3))
    assert count(lake) == 3


def test_partition_keys_are_string_columns_after_the_data(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.write(LOCK, H21, "a.parquet", rows(2))
    lake.write(LOCK, NEXT_DAY, "a.parquet", rows(1, start=2))
    lake.catalog.add_partitions(LOCK.name, [H21, NEXT_DAY])

    result = lake.engine.query(f"SELECT * FROM {LOCK.name} ORDER BY envelope__line")

    assert result.column_names == COLUMNS
    assert pa.types.is_string(result.schema.field("day").type)
    assert pa.types.is_string(result.schema.field("hour").type)
    assert result.select(["envelope__event_id", "day", "hour"]).to_pylist() == [
        {"envelope__event_id": "e0", "day": "2025-11-24", "hour": "21"},
        {"envelope__event_id": "e1", "day": "2025-11-24", "hour": "21"},
        {"envelope__event_id": "e2", "day": "2025-11-25", "hour": "00"},
    ]


def test_filters_on_partition_columns(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    for i, part in enumerate([H21, H22, NEXT_DAY]):
        lake.write(LOCK, part, "a.parquet", rows(i + 1))
    lake.catalog.add_partitions(LOCK.name, [H21, H22, NEXT_DAY])

    sql = f"SELECT count(*) FROM {LOCK.name} WHERE day = '2025-11-24' AND hour >= '22'"
    assert lake.scalar(sql) == 2


def test_empty_table_has_the_schema_columns(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    result = lake.engine.query(f"SELECT * FROM {LOCK.name}")
    assert result.num_rows == 0
    assert result.column_names == COLUMNS

    lake.catalog.add_partitions(LOCK.name, [H21])  # registered, but holds no files
    assert lake.engine.query(f"SELECT * FROM {LOCK.name}").num_rows == 0


def test_aggregates_across_partitions_and_tables(lake: Lake) -> None:
    bridge = TableDef(
        "telemetry_bridge_flat",
        f"s3://{BUCKET}/telemetry_flat/type=bridge/",
        SCHEMA,
        LOCK.partition_keys,
    )
    for table in (LOCK, bridge):
        lake.catalog.ensure_table(table)
    lake.write(LOCK, H21, "a.parquet", rows(2, battery=10))
    lake.write(LOCK, H22, "a.parquet", rows(3, battery=20))
    lake.write(LOCK, NEXT_DAY, "a.parquet", rows(5, battery=30))
    lake.write(bridge, H21, "a.parquet", rows(7, battery=1))
    lake.catalog.add_partitions(LOCK.name, [H21, H22, NEXT_DAY])
    lake.catalog.add_partitions(bridge.name, [H21])

    by_day = lake.engine.query(
        f"SELECT day, count(*) AS n, sum(payload__battery_pct) AS total FROM {LOCK.name} "
        "GROUP BY day ORDER BY day"
    )
    assert by_day.to_pylist() == [
        {"day": "2025-11-24", "n": 5, "total": 80},
        {"day": "2025-11-25", "n": 5, "total": 150},
    ]
    both = f"SELECT (SELECT count(*) FROM {LOCK.name}) + (SELECT count(*) FROM {bridge.name})"
    assert lake.scalar(both) == 17


def test_many_registered_partitions(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    parts = [Partition(("2025-11-24", f"{h:02d}")) for h in range(24)]
    parts += [Partition(("2025-11-25", f"{h:02d}")) for h in range(24)]
    for part in parts:
        lake.write(LOCK, part, "a.parquet", rows(1))
    lake.catalog.add_partitions(LOCK.name, parts[:40])

    assert count(lake) == 40
    assert lake.scalar(f"SELECT count(DISTINCT (day, hour)) FROM {LOCK.name}") == 40


def test_unpartitioned_table_reads_its_whole_location(lake: Lake) -> None:
    flat = TableDef("ref_devices", f"s3://{BUCKET}/ref/devices/", SCHEMA, ())
    lake.catalog.ensure_table(flat)
    lake.write(flat, None, "a.parquet", rows(2))
    lake.write(flat, None, "x/b.parquet", rows(3))

    result = lake.engine.query("SELECT * FROM ref_devices")
    assert (result.num_rows, result.column_names) == (5, SCHEMA.names)


def test_table_names_are_case_insensitive(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.write(LOCK, H21, "a.parquet", rows(2))
    lake.catalog.add_partitions(LOCK.name, [H21])
    assert count(lake, LOCK.name.upper()) == 2


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "SELECT * FROM no_such_table",
        f"SELECT no_such_column FROM {LOCK.name}",
        "SELECT * FROM read_parquet('/etc/passwd')",
    ],
    ids=["syntax", "unknown-table", "unknown-column", "local-file"],
)
def test_bad_sql_is_query_failed_with_the_tables_in_the_hint(lake: Lake, sql: str) -> None:
    lake.catalog.ensure_table(LOCK)
    with pytest.raises(QueryFailed) as info:
        lake.engine.query(sql)
    assert info.value.message
    assert info.value.hint is not None and LOCK.name in info.value.hint
    assert count(lake) == 0  # the engine is still usable


def test_dropped_table_cannot_be_queried(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    assert count(lake) == 0
    lake.catalog.drop_table(LOCK.name)
    with pytest.raises(QueryFailed, match=LOCK.name):
        count(lake)


def test_file_with_mismatched_schema_is_query_failed(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.write(LOCK, H21, "good.parquet", rows(2))
    bad = pa.table({"envelope__event_id": ["x"], "payload__battery_pct": [[1, 2]]})
    lake.write(LOCK, H22, "bad.parquet", bad)
    lake.catalog.add_partitions(LOCK.name, [H21, H22])

    with pytest.raises(QueryFailed) as info:
        lake.engine.query(f"SELECT sum(payload__battery_pct) FROM {LOCK.name}")

    message = info.value.message
    assert "bad.parquet" in message and "payload__battery_pct" in message
    assert info.value.hint is not None
    # Columns the bad file holds with the right type still read (as Athena does).
    assert count(lake) == 3


def test_file_that_is_not_parquet_is_query_failed(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    key = H21.location(LOCK).removeprefix(f"s3://{BUCKET}/") + "junk.parquet"
    lake.store.put(BUCKET, key, b"this is not parquet")
    lake.catalog.add_partitions(LOCK.name, [H21])

    with pytest.raises(QueryFailed, match=r"junk\.parquet"):
        count(lake)


def test_concurrent_queries(lake: Lake) -> None:
    lake.catalog.ensure_table(LOCK)
    lake.write(LOCK, H21, "a.parquet", rows(10))
    lake.catalog.add_partitions(LOCK.name, [H21])
    results: list[object] = []

    def run() -> None:
        for _ in range(5):
            results.append(count(lake))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [10] * 20
