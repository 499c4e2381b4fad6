"""Compaction of one day: exactly the distinct (event_id, ordinal), the right row of a resend,
one atomic commit per rebuild, and clear answers to bad inputs."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sluice.compact.daily import CompactStatus, compact_day, compacted_rows
from sluice.compact.state import compacted_table
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri, raw_key, table_name
from sluice.messages import process_raw_file
from sluice.process.worker import run_worker
from tests.compact.conftest import duckdb_keys, local_paths, verified_keys
from tests.conftest import ARRIVED, line, make_event, put_raw
from tests.e2e.conftest import Run, uri_path

DAY = "2025-11-24"


def test_compacted_day_holds_exactly_the_distinct_keys(run: Run) -> None:
    verified = verified_keys(run)
    assert any(len(keys) > len(set(keys)) for keys in verified.values()), "no resend to remove"
    for (type_, day), keys in sorted(verified.items()):
        result = compact_day(run.env, type_, day)
        expected = set(keys)
        assert result.status is CompactStatus.COMPACTED
        assert (result.input_rows, result.rows) == (len(keys), len(expected))
        assert result.duplicates_removed == len(keys) - len(expected)
        table = compacted_table(type_)
        # Read back through pyiceberg's own catalog and scan ...
        native = run.env.lake.catalog.load_table(("sluice", table))  # type: ignore[attr-defined]
        rows = native.scan(row_filter=f"day == '{day}'").to_arrow()
        read = list(
            zip(
                rows["envelope__event_id"].to_pylist(),
                rows["envelope__ordinal"].to_pylist(),
                strict=True,
            )
        )
        assert Counter(read) == Counter(expected)
        # ... and independently: DuckDB over the data files of the current snapshot.
        assert Counter(duckdb_keys(local_paths(run.env.lake, table, day))) == Counter(expected)
        assert compacted_rows(run.env, type_, day) == len(expected)
    # The generator's own ground truth: distinct rows per table over all days.
    for type_ in ("lock", "bridge", "video_doorbell"):
        total = sum(compacted_rows(run.env, type_, d) or 0 for (t, d) in verified if t == type_)
        assert total == run.generated.distinct_events[table_name(type_)]


def _process(env: Env, *uris: ObjectUri) -> None:
    env.processing_queue.send_batch([process_raw_file(uri) for uri in uris])
    stats = run_worker(env, until_idle=True)
    assert stats.dead_lettered == 0


def test_resend_appears_once_keeping_the_latest_received(env: Env) -> None:
    first = put_raw(
        env,
        [line(make_event("e-1", battery_pct=80)), line(make_event("e-2", assertions=0))],
        key=raw_key(ARRIVED),
    )
    # The device resends e-1 ten minutes later, twice in one object (lines 1 and 3).
    later = ARRIVED + timedelta(minutes=10)
    resend = put_raw(
        env,
        [
            line(make_event("e-1", battery_pct=50)),
            line(make_event("e-3", assertions=1)),
            line(make_event("e-1", battery_pct=51)),
        ],
        key=raw_key(later),
    )
    _process(env, first, resend)
    result = compact_day(env, "lock", DAY)
    assert (result.input_rows, result.rows, result.duplicates_removed) == (8, 4, 4)
    rows = env.lake.scan(compacted_table("lock"), day=DAY).read_all()
    by_key = {(r["envelope__event_id"], r["envelope__ordinal"]): r for r in rows.to_pylist()}
    assert sorted(by_key) == [("e-1", 0), ("e-1", 1), ("e-2", 0), ("e-3", 0)]
    for ordinal in (0, 1):
        kept = by_key[("e-1", ordinal)]
        assert kept["envelope__source_ref"] == str(resend)
        assert kept["envelope__line"] == 1  # same received_at: the lower line wins
        assert kept["payload__battery_pct"] == 50
        assert kept["envelope__received_at"] == later
    assert by_key[("e-2", 0)]["envelope__source_ref"] == str(first)


def test_newest_parser_version_wins_numerically(env: Env) -> None:
    uri = put_raw(env, [line(make_event("e-1", battery_pct=80))], key=raw_key(ARRIVED))
    _process(env, uri)
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None
    [output] = record.outputs
    path = uri_path(env.config, output.uri)
    original = pq.read_table(path)
    # Copies of the file as other parser versions would have written them, received earlier:
    # version beats received_at, and 1.10.0 is newer than 1.9.0 although it sorts lower as text.
    for version, battery in (("1.9.0", 19), ("1.10.0", 110)):
        copy = original.set_column(
            original.schema.get_field_index("envelope__parser_version"),
            original.schema.field("envelope__parser_version"),
            pa.array([version] * original.num_rows, pa.string()),
        )
        copy = copy.set_column(
            copy.schema.get_field_index("payload__battery_pct"),
            copy.schema.field("payload__battery_pct"),
            pa.array([battery] * original.num_rows, pa.int32()),
        )
        copy = copy.set_column(
            copy.schema.get_field_index("envelope__received_at"),
            copy.schema.field("envelope__received_at"),
            pc.subtract(copy["envelope__received_at"], pa.scalar(timedelta(hours=1))),
        )
        pq.write_table(copy, path.with_name(f"v{version}.parquet"))
    result = compact_day(env, "lock", DAY)
    assert (result.input_rows, result.rows) == (6, 2)
    rows = env.lake.scan(compacted_table("lock"), day=DAY).read_all().to_pylist()
    assert {r["envelope__parser_version"] for r in rows} == {"1.10.0"}
    assert {r["payload__battery_pct"] for r in rows} == {110}


def test_rebuilding_changes_nothing_and_commits_once(run: Run) -> None:
    days = sorted(d for t, d in verified_keys(run) if t == "lock")
    assert len(days) > 1
    table = compacted_table("lock")
    for day in days:
        compact_day(run.env, "lock", day)
    day = days[0]
    before = sorted(run.env.lake.scan(table, day=day).read_all().to_pylist(), key=repr)
    other_files = {f.uri for f in run.env.lake.files(table) if f.day != day}
    history = run.env.lake.snapshots(table)
    again = compact_day(run.env, "lock", day)
    after = sorted(run.env.lake.scan(table, day=day).read_all().to_pylist(), key=repr)
    assert after == before and again.rows == len(before)
    new = run.env.lake.snapshots(table)
    assert len(new) == len(history) + 1  # one commit per rebuild
    snap = new[-1]
    assert snap.operation == "overwrite" and snap.summary["sluice.day"] == day
    assert snap.summary["added-records"] == snap.summary["deleted-records"] == str(again.rows)
    assert (again.files_removed, again.files_added) == (1, 1)
    # Other days keep their files untouched.
    assert {f.uri for f in run.env.lake.files(table) if f.day != day} == other_files


def test_a_reader_never_sees_a_partial_day(run: Run) -> None:
    (type_, day), keys = max(verified_keys(run).items(), key=lambda kv: len(kv[1]))
    expected = len(set(keys))
    table = compacted_table(type_)
    compact_day(run.env, type_, day)
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            for _ in range(3):
                compact_day(run.env, type_, day)
        except BaseException as exc:
            errors.append(exc)

    from sluice.backends.lake.local import LocalLake

    reader = LocalLake(run.config.data_dir, run.config.buckets.lake)  # its own connection
    writer = threading.Thread(target=rebuild)
    writer.start()
    seen: list[int] = []
    while writer.is_alive() or not seen:
        seen.append(reader.scan(table, day=day).read_all().num_rows)
    writer.join()
    assert not errors
    assert set(seen) == {expected}
    # Every snapshot in the history holds the whole day: time travel shows no half state.
    native = reader.catalog.load_table(("sluice", table))
    for snap in native.snapshots():
        rows = native.scan(row_filter=f"day == '{day}'", snapshot_id=snap.snapshot_id)
        assert rows.to_arrow().num_rows == expected


def test_a_day_without_data_is_a_clear_empty_result(run: Run) -> None:
    result = compact_day(run.env, "lock", "2001-01-01")
    assert result.status is CompactStatus.EMPTY
    assert (result.rows, result.snapshot_id, result.build) == (0, None, None)
    assert compacted_rows(run.env, "lock", "2001-01-01") is None
    assert run.env.lake.snapshots(compacted_table("lock")) == []  # nothing was committed


def test_a_day_whose_partitions_are_gone_is_emptied(run: Run) -> None:
    (type_, day) = sorted(verified_keys(run))[0]
    assert compact_day(run.env, type_, day).rows > 0
    name = table_name(type_)
    gone = [p for p in run.env.catalog.list_partitions(name) if p.values[0] == day]
    run.env.catalog.drop_partitions(name, gone)
    result = compact_day(run.env, type_, day)
    assert result.status is CompactStatus.EMPTY
    assert result.files_removed == 1 and result.snapshot_id is not None
    assert compacted_rows(run.env, type_, day) == 0


@pytest.mark.parametrize("day", ["2025-1-1", "2025-02-30", "yesterday", "2025-11-24T00", ""])
def test_bad_dates_are_refused(env: Env, day: str) -> None:
    with pytest.raises(ConfigError, match="not a day"):
        compact_day(env, "lock", day)


def test_unknown_type_is_refused(env: Env) -> None:
    with pytest.raises(ConfigError, match="unknown type") as info:
        compact_day(env, "thermostat", DAY)
    assert info.value.hint is not None and "lock" in info.value.hint
    assert env.lake.list_tables() == []
