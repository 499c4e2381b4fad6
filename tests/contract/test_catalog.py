"""The catalog contract: every `Catalog` implementation passes these tests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from sluice.backends.catalog.base import Catalog, Partition, TableDef
from sluice.backends.catalog.sqlite import SqliteCatalog
from sluice.errors import ConfigError

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


@pytest.fixture(params=["sqlite"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    if request.param == "sqlite":
        return SqliteCatalog(tmp_path / "catalog.sqlite")
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
    assert sorted(counts) == [0, 0, 0, 200]


# -- SQLite only ---------------------------------------------------------------------------


def test_state_is_shared_by_a_second_instance(tmp_path: Path) -> None:
    SqliteCatalog(tmp_path / "c.sqlite").ensure_table(TABLE)
    SqliteCatalog(tmp_path / "c.sqlite").add_partitions(TABLE.name, hours(3))
    assert list(SqliteCatalog(tmp_path / "c.sqlite").list_partitions(TABLE.name)) == hours(3)
