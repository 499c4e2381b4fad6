"""The catalog contract: every `Catalog` implementation passes these tests."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from sluice.backends.catalog.base import Catalog, Partition, TableDef
from sluice.backends.catalog.sqlite import SqliteCatalog
from sluice.errors import ConfigError, TerminalError

SCHEMA = pa.schema(
    [
        pa.field("envelope__event_id", pa.string(), nullable=False),
        pa.field("envelope__occurred_at", pa.timestamp("us", tz="UTC")),
        pa.field("payload__battery_pct", pa.int64()),
        pa.field("payload__tags", pa.list_(pa.string())),
    ],
    metadata={b"sluice": b"v1"},
)
TABLE = TableDef(
    name="telemetry_lock_flat",
    location="s3://verified/telemetry_flat/type=lock/",
    schema=SCHEMA,
    partition_keys=("day", "hour"),
)


@pytest.fixture(params=["sqlite", pytest.param("glue", marks=pytest.mark.aws)])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    if request.param == "sqlite":
        return SqliteCatalog(tmp_path / "catalog.sqlite")
    if request.param == "glue":
        glue: Catalog = request.getfixturevalue("glue")
        return glue
    raise AssertionError(f"unknown catalog {request.param}")


def hours(n: int) -> list[Partition]:
    """`n` consecutive (day, hour) partitions from 2025-01-01 00, in order."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    stamps = (start + timedelta(hours=i) for i in range(n))
    return [Partition((t.strftime("%Y-%m-%d"), t.strftime("%H"))) for t in stamps]


def test_ensure_table_is_idempotent_and_roundtrips_schema(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    catalog.ensure_table(TABLE)

    got = catalog.get_table(TABLE.name)
    assert got is not None
    assert got.schema.equals(SCHEMA, check_metadata=True)
    assert (got.name, got.location, got.partition_keys) == (
        TABLE.name,
        TABLE.location,
        TABLE.partition_keys,
    )
    assert [t.name for t in catalog.list_tables()] == [TABLE.name]


def test_ensure_table_updates_schema_and_location_keeping_partitions(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    catalog.add_partitions(TABLE.name, hours(3))
    wider = SCHEMA.append(pa.field("payload__extra", pa.string()))
    moved = TableDef(TABLE.name, "s3://verified/elsewhere/", wider, TABLE.partition_keys)

    catalog.ensure_table(moved)

    got = catalog.get_table(TABLE.name)
    assert got is not None
    assert got.location == "s3://verified/elsewhere/"
    assert got.schema.equals(wider)
    assert list(catalog.list_partitions(TABLE.name)) == hours(3)


def test_get_table_of_unknown_is_none(catalog: Catalog) -> None:
    assert catalog.get_table("nope") is None
    assert catalog.list_tables() == []


def test_list_tables_in_name_order(catalog: Catalog) -> None:
    for name in ("telemetry_video_doorbell_flat", "telemetry_bridge_flat", "telemetry_lock_flat"):
        catalog.ensure_table(TableDef(name, f"s3://verified/{name}/", SCHEMA, ("day",)))
    assert [t.name for t in catalog.list_tables()] == [
        "telemetry_bridge_flat",
        "telemetry_lock_flat",
        "telemetry_video_doorbell_flat",
    ]


def test_add_partitions_counts_only_new_ones(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    parts = hours(250)

    assert catalog.add_partitions(TABLE.name, parts) == 250
    assert catalog.add_partitions(TABLE.name, parts) == 0
    assert catalog.add_partitions(TABLE.name, [*hours(2), Partition(("2026-01-01", "00"))]) == 1
    assert catalog.add_partitions(TABLE.name, []) == 0
    assert len(list(catalog.list_partitions(TABLE.name))) == 251


def test_duplicates_within_one_call_count_once(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    part = Partition(("2025-11-24", "21"))
    assert catalog.add_partitions(TABLE.name, [part, part, part]) == 1
    assert catalog.drop_partitions(TABLE.name, [part, part]) == 1


def test_list_partitions_is_ordered(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    parts = [
        Partition(("2025-11-24", "21")),
        Partition(("2025-11-24", "03")),
        Partition(("2025-01-02", "23")),
        Partition(("2025-11-24-x", "00")),  # a longer first value sorts after its prefix
        Partition(("2025-11-23", "10")),
    ]
    catalog.add_partitions(TABLE.name, parts)
    assert list(catalog.list_partitions(TABLE.name)) == sorted(parts)


def test_list_partitions_pages_through_many(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    parts = hours(2500)
    catalog.add_partitions(TABLE.name, parts[::-1])
    assert list(catalog.list_partitions(TABLE.name)) == sorted(parts)


def test_drop_partitions_counts_those_that_existed(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    parts = hours(30)
    catalog.add_partitions(TABLE.name, parts)

    assert catalog.drop_partitions(TABLE.name, [*parts[:10], Partition(("1999-01-01", "00"))]) == 10
    assert catalog.drop_partitions(TABLE.name, parts[:10]) == 0
    assert list(catalog.list_partitions(TABLE.name)) == parts[10:]


def test_partitions_belong_to_their_table(catalog: Catalog) -> None:
    other = TableDef("telemetry_bridge_flat", "s3://verified/b/", SCHEMA, ("day", "hour"))
    catalog.ensure_table(TABLE)
    catalog.ensure_table(other)
    catalog.add_partitions(TABLE.name, hours(5))
    catalog.add_partitions(other.name, hours(2))

    assert catalog.drop_partitions(other.name, hours(5)) == 2
    assert list(catalog.list_partitions(TABLE.name)) == hours(5)
    assert list(catalog.list_partitions(other.name)) == []


@pytest.mark.parametrize(
    "values",
    [("a/b", "00"), ("..", "00"), (".", "00"), ("", "00"), ("2025-11-24", "a\\b"), ("x\n", "00")],
    ids=["slash", "dotdot", "dot", "empty", "backslash", "newline"],
)
def test_unsafe_partition_values_are_refused(catalog: Catalog, values: tuple[str, ...]) -> None:
    catalog.ensure_table(TABLE)
    good = Partition(("2025-11-24", "01"))
    with pytest.raises(ConfigError):
        catalog.add_partitions(TABLE.name, [good, Partition(values)])
    assert list(catalog.list_partitions(TABLE.name)) == []  # nothing of the batch was added


@pytest.mark.parametrize("values", [("2025-11-24",), ("2025-11-24", "21", "x"), ()])
def test_partition_arity_must_match_keys(catalog: Catalog, values: tuple[str, ...]) -> None:
    catalog.ensure_table(TABLE)
    with pytest.raises(ConfigError, match="keys are"):
        catalog.add_partitions(TABLE.name, [Partition(values)])
    with pytest.raises(ConfigError):
        catalog.drop_partitions(TABLE.name, [Partition(values)])


def test_unknown_table_is_a_config_error_with_a_hint(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    for call in (
        lambda: catalog.add_partitions("nope", hours(1)),
        lambda: catalog.drop_partitions("nope", hours(1)),
        lambda: catalog.list_partitions("nope"),
    ):
        with pytest.raises(ConfigError, match="nope") as info:
            call()
        assert info.value.hint is not None and TABLE.name in info.value.hint


def test_drop_table_removes_its_partitions(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    catalog.add_partitions(TABLE.name, hours(10))

    catalog.drop_table(TABLE.name)
    catalog.drop_table(TABLE.name)  # dropping a missing table does nothing

    assert catalog.get_table(TABLE.name) is None
    with pytest.raises(ConfigError):
        catalog.list_partitions(TABLE.name)
    catalog.ensure_table(TABLE)
    assert list(catalog.list_partitions(TABLE.name)) == []


def test_partition_keys_may_not_shadow_data_columns(catalog: Catalog) -> None:
    clash = TableDef("t_clash", "s3://verified/t/", SCHEMA, ("payload__battery_pct",))
    with pytest.raises(ConfigError):
        catalog.ensure_table(clash)


def test_partition_keys_cannot_change_under_existing_table(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    with pytest.raises(ConfigError, match="partition keys") as info:
        catalog.ensure_table(TableDef(TABLE.name, TABLE.location, SCHEMA, ("day",)))
    assert info.value.hint is not None and "drop" in info.value.hint


def test_concurrent_adds_count_each_partition_once(catalog: Catalog) -> None:
    catalog.ensure_table(TABLE)
    parts = hours(200)
    counts: list[int] = []

    def add() -> None:
        counts.append(catalog.add_partitions(TABLE.name, parts))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each partition is new to exactly one caller; Glue's batches of 100 may split them.
    assert sum(counts) == 200 and len(counts) == 4
    assert list(catalog.list_partitions(TABLE.name)) == parts


# -- SQLite only ---------------------------------------------------------------------------


def test_state_is_shared_by_a_second_instance(tmp_path: Path) -> None:
    SqliteCatalog(tmp_path / "c.sqlite").ensure_table(TABLE)
    SqliteCatalog(tmp_path / "c.sqlite").add_partitions(TABLE.name, hours(3))
    assert list(SqliteCatalog(tmp_path / "c.sqlite").list_partitions(TABLE.name)) == hours(3)


# -- Glue only: the table Athena sees, and what moto cannot produce ------------------------

# AWS's per-request limits; moto accepts any batch size, so the tests' client refuses more.
GLUE_LIMITS = {
    "BatchCreatePartition": ("PartitionInputList", 100),
    "BatchDeletePartition": ("PartitionsToDelete", 25),
}


@pytest.fixture(scope="module")
def glue_client(aws_clients: Any) -> Any:
    """A Glue client on the session's moto server that refuses batches AWS would refuse."""
    from sluice.backends.aws import AwsClients

    client = AwsClients(aws_clients.config).client("glue")  # its own: the hook stays here

    def enforce(params: dict[str, Any], model: Any, **_: Any) -> None:
        member, limit = GLUE_LIMITS[model.name]
        assert len(params[member]) <= limit, f"{model.name}: {len(params[member])} > {limit}"

    for operation in GLUE_LIMITS:
        client.meta.events.register(f"provide-client-params.glue.{operation}", enforce)
    return client


@pytest.fixture
def glue(glue_client: Any) -> Iterator[Any]:
    """A Glue catalog in a database of its own (moto's state lasts the whole session)."""
    from sluice.backends.catalog.glue import GlueCatalog

    database = f"sluice_test_{uuid.uuid4().hex[:12]}"
    yield GlueCatalog(glue_client, database)
    with contextlib.suppress(glue_client.exceptions.EntityNotFoundException):
        glue_client.delete_database(Name=database)  # its tables and partitions go with it


@pytest.mark.aws
def test_glue_table_is_a_hive_parquet_table_athena_can_read(glue: Any, glue_client: Any) -> None:
    glue.ensure_table(TABLE)
    glue.add_partitions(TABLE.name, hours(1))

    raw = glue_client.get_table(DatabaseName=glue.database, Name=TABLE.name)["Table"]
    sd = raw["StorageDescriptor"]
    assert raw["TableType"] == "EXTERNAL_TABLE"
    assert sd["Location"] == TABLE.location
    assert sd["SerdeInfo"]["SerializationLibrary"].endswith("ParquetHiveSerDe")
    assert [(c["Name"], c["Type"]) for c in sd["Columns"]] == [
        ("envelope__event_id", "string"),
        ("envelope__occurred_at", "timestamp"),
        ("payload__battery_pct", "bigint"),
        ("payload__tags", "array<string>"),
    ]
    assert [(k["Name"], k["Type"]) for k in raw["PartitionKeys"]] == [
        ("day", "string"),
        ("hour", "string"),
    ]
    part = glue_client.get_partition(
        DatabaseName=glue.database, TableName=TABLE.name, PartitionValues=["2025-01-01", "00"]
    )["Partition"]
    assert part["StorageDescriptor"]["Location"] == f"{TABLE.location}day=2025-01-01/hour=00/"


@pytest.mark.aws
def test_glue_maps_arrow_types_to_hive_and_refuses_the_rest(glue: Any) -> None:
    from sluice.backends.catalog.glue import hive_type

    nested = pa.struct([("a", pa.int32()), ("b", pa.map_(pa.string(), pa.float64()))])
    assert hive_type(nested) == "struct<a:int,b:map<string,double>>"
    assert hive_type(pa.decimal128(12, 3)) == "decimal(12,3)"
    assert hive_type(pa.bool_()) == "boolean"
    odd = TableDef("t_odd", "s3://verified/odd/", pa.schema([("d", pa.duration("s"))]), ())
    with pytest.raises(ConfigError, match="duration"):
        glue.ensure_table(odd)
    assert glue.get_table("t_odd") is None


@pytest.mark.aws
def test_glue_leaves_tables_it_did_not_create_alone(glue: Any, glue_client: Any) -> None:
    glue_client.create_database(DatabaseInput={"Name": glue.database})
    glue_client.create_table(
        DatabaseName=glue.database,
        TableInput={"Name": "int_lock_compacted_daily", "Parameters": {"table_type": "ICEBERG"}},
    )
    glue.ensure_table(TABLE)

    assert [t.name for t in glue.list_tables()] == [TABLE.name]
    assert glue.get_table("int_lock_compacted_daily") is None
    foreign = TableDef("int_lock_compacted_daily", "s3://lake/x/", SCHEMA, ())
    for call in (lambda: glue.ensure_table(foreign), lambda: glue.drop_table(foreign.name)):
        with pytest.raises(ConfigError, match="not created by sluice"):
            call()
    glue_client.get_table(DatabaseName=glue.database, Name=foreign.name)  # still there


@pytest.mark.aws
def test_glue_unchanged_table_gets_no_new_version(glue: Any, glue_client: Any) -> None:
    def versions() -> int:
        answer = glue_client.get_table_versions(DatabaseName=glue.database, TableName=TABLE.name)
        return len(answer["TableVersions"])

    glue.ensure_table(TABLE)
    glue.ensure_table(TABLE)
    assert versions() == 1
    # A changed table is updated; moto keeps a version although SkipArchive asks AWS not to.
    glue.ensure_table(TableDef(TABLE.name, "s3://verified/moved/", SCHEMA, TABLE.partition_keys))
    assert versions() == 2


@pytest.mark.aws
def test_glue_per_entry_errors_other_than_the_harmless_one_raise(glue: Any) -> None:
    """Moto's batch calls only ever report AlreadyExists / EntityNotFound per entry, so the
    other per-entry answers are checked on answers shaped like AWS's."""
    from sluice.errors import BackendBusy

    def entry(code: str) -> dict[str, Any]:
        detail = {"ErrorCode": code, "ErrorMessage": f"{code} for this partition"}
        return {"PartitionValues": ["2025-01-01", "00"], "ErrorDetail": detail}

    ok = {"Errors": [entry("AlreadyExistsException"), entry("AlreadyExistsException")]}
    assert glue._entry_errors(ok, "AlreadyExistsException", TABLE.name) == 2
    bad = {"Errors": [entry("AlreadyExistsException"), entry("InvalidInputException")]}
    with pytest.raises(TerminalError, match="InvalidInputException") as info:
        glue._entry_errors(bad, "AlreadyExistsException", TABLE.name)
    assert info.value.context["errors"] == [entry("InvalidInputException")]
    busy = {"Errors": [entry("InternalServiceException")]}
    with pytest.raises(BackendBusy):
        glue._entry_errors(busy, "EntityNotFoundException", TABLE.name)
