"""process_object on the embedded backends: outputs, quarantine, replacement, bad objects."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sluice.backends.ledger.base import FileStatus
from sluice.env import Env
from sluice.errors import CorruptObject, InvalidKey, ObjectNotFound
from sluice.layout import ObjectUri, parse_verified_key, source_hash
from sluice.process.processor import ProcessOutcome, process_object
from tests.conftest import line, make_event, put_raw

# Incompressible content, so that cutting or overwriting bytes hits the deflate stream.
NOISY_GZIP = gzip.compress(
    b"".join(line({"n": random.Random(1).randbytes(40).hex()}) + b"\n" for _ in range(2000))
)


def verified_files(env: Env) -> dict[str, int]:
    bucket = env.config.buckets.verified
    out = {}
    for info in env.store.list(bucket):
        with env.store.open(bucket, info.key) as f:
            out[info.key] = pq.read_metadata(f).num_rows
    return out


def quarantine_records(env: Env) -> list[dict[str, Any]]:
    bucket = env.config.buckets.quarantine
    records = []
    for info in env.store.list(bucket):
        with env.store.open(bucket, info.key) as f:
            records += [json.loads(x) for x in gzip.decompress(f.read()).splitlines()]
    return records


def test_good_object_writes_one_file_per_type_day_hour(env: Env) -> None:
    uri = put_raw(
        env,
        [
            line(make_event("a", occurred_at="2025-11-24T21:00:00Z")),
            line(make_event("b", occurred_at="2025-11-24T21:59:59Z", assertions=0)),
            line(make_event("c", occurred_at="2025-11-24T22:00:00Z")),
            line(make_event("d", type_="bridge", cpu_pct=1.5, assertions=0)),
        ],
    )
    result = process_object(env, uri)
    assert result.outcome is ProcessOutcome.COMPLETED
    files = verified_files(env)
    h = source_hash(str(uri))
    assert files == {
        f"telemetry_flat/type=lock/day=2025-11-24/hour=21/{h}.parquet": 3,
        f"telemetry_flat/type=lock/day=2025-11-24/hour=22/{h}.parquet": 2,
        f"telemetry_flat/type=bridge/day=2025-11-24/hour=21/{h}.parquet": 1,
    }
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.COMPLETED
    assert record.counts is not None and (record.counts.lines, record.counts.rows) == (4, 6)
    assert {o.key for o in record.outputs} == set(files)
    partitions = {p.values for p in env.catalog.list_partitions("telemetry_lock_flat")}
    assert partitions == {("2025-11-24", "21"), ("2025-11-24", "22")}


def test_files_keep_min_max_where_it_can_prune_or_verify_needs_it(env: Env) -> None:
    uri = put_raw(env, [line(make_event(f"e-{i}", battery_pct=i, note=i)) for i in range(5)])
    process_object(env, uri)
    [key] = verified_files(env)
    with env.store.open(env.config.buckets.verified, key) as f:
        group = pq.read_metadata(f).row_group(0)
    with_min_max = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if group.column(i).statistics is not None and group.column(i).statistics.has_min_max
    }
    # Lineage `verify` reads back, numbers and times.
    assert {"envelope__source_ref", "envelope__line", "envelope__occurred_at"} <= with_min_max
    assert "payload__battery_pct" in with_min_max
    # Random ids, constants of the table, JSON extras: their min/max would prune nothing.
    assert not {"envelope__event_id", "envelope__device_id", "payload__extra"} & with_min_max
    assert not {"envelope__type", "envelope__parser_version"} & with_min_max


@pytest.mark.parametrize("occurred_at", ["1999-12-31T23:59:59Z", "2025-11-24 21:09:35"])
def test_a_batch_whose_every_time_the_line_rule_decides(env: Env, occurred_at: str) -> None:
    # Valid lines but for occurred_at (before 2000), or valid in a form the column check leaves
    # to the line rule (a space for the T): every line of the batch goes the per-line way.
    events = [make_event(f"e{i}", occurred_at=occurred_at, assertions=1) for i in range(10)]
    uri = put_raw(env, [line(e) for e in events])
    result = process_object(env, uri)
    assert result.counts is not None
    valid = occurred_at.startswith("2025")
    assert result.counts.quarantined_lines == (0 if valid else 10)
    assert (result.counts.good_lines, result.counts.rows) == ((10, 10) if valid else (0, 0))
    assert sum(verified_files(env).values()) == result.counts.rows


def test_bad_lines_quarantined_good_lines_kept(env: Env) -> None:
    good = line(make_event("g1"))
    lines = [
        b"\xef\xbb\xbf" + good,  # BOM on the first line: stripped, kept
        line(make_event("g2")) + b"\r",  # CRLF: kept
        b"",
        b"   \t",
        b"not json",
        b"[1,2]",
        b"{}",
        b'{"envelope": "\xff"}',
        line(make_event("bad-type", type_="toaster")),
        line(make_event("bad-ts", occurred_at="soon")),
        line(make_event("wrong", battery_pct="high")),
        b'{"x": "' + b"y" * (3 * 1024 * 1024) + b'"}',  # several MB
        line(make_event("g3", assertions=0)),
    ]
    uri = put_raw(env, lines)
    result = process_object(env, uri)
    counts = result.counts
    assert counts is not None
    assert (counts.lines, counts.blank_lines, counts.good_lines) == (13, 2, 3)
    assert counts.quarantined_lines == 8
    assert counts.rows == 5
    records = quarantine_records(env)
    assert sorted(r["line"] for r in records) == [5, 6, 7, 8, 9, 10, 11, 12]
    by_line = {r["line"]: r for r in records}
    assert by_line[5]["reason_code"] == "invalid_json" and by_line[5]["raw"] == "not json"
    assert by_line[8]["reason_code"] == "invalid_utf8" and "raw_b64" in by_line[8]
    assert "envelope.type" in by_line[9]["reason"]
    assert "payload.battery_pct" in by_line[11]["reason"]
    assert by_line[12]["reason_code"] == "line_too_long"
    assert by_line[12]["bytes"] == 3 * 1024 * 1024 + 9 and by_line[12]["raw_truncated"] is True
    assert all(r["source_ref"] == str(uri) for r in records)
    assert counts.quarantine_reasons["invalid_json"] == 1


@pytest.mark.parametrize(
    ("name", "raw", "error", "text"),
    [
        ("zero-byte", b"", CorruptObject, "zero-byte"),
        ("not gzip", b'{"a": 1}\n', CorruptObject, "not gzip"),
        ("truncated", NOISY_GZIP[: len(NOISY_GZIP) // 2], CorruptObject, "truncated"),
        ("corrupt", NOISY_GZIP[:200] + b"\x00" * 64 + NOISY_GZIP[264:], CorruptObject, "corrupt"),
    ],
)
def test_unreadable_object_fails_terminally_and_keeps_previous_outputs(
    env: Env, name: str, raw: bytes, error: type[Exception], text: str
) -> None:
    uri = put_raw(env, [line(make_event("keep"))])
    process_object(env, uri)
    before = verified_files(env)
    env.store.put(uri.bucket, uri.key, raw)  # the object changes: a new ETag, a new input
    with pytest.raises(error, match=text):
        process_object(env, uri)
    assert verified_files(env) == before
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.FAILED and record.terminal
    assert record.error_class == "CorruptObject" and text in (record.last_error or "")
    assert {o.key for o in record.outputs} == set(before)


def test_missing_object_is_recorded_as_terminal_failure(env: Env) -> None:
    uri = ObjectUri(env.config.buckets.raw, "raw/json_telemetry/nope.gz")
    with pytest.raises(ObjectNotFound):
        process_object(env, uri, correlation_id="corr-1")
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.FAILED and record.terminal
    failures = env.ledger.failures(uri.bucket, uri.key)
    assert failures[-1].correlation_id == "corr-1"


@pytest.mark.parametrize("key", ["../outside.gz", "raw/../../x.gz", "/etc/passwd"])
def test_hostile_keys_are_refused(env: Env, key: str) -> None:
    with pytest.raises(InvalidKey):
        process_object(env, ObjectUri(env.config.buckets.raw, key))


def test_reprocessing_is_skipped_unless_forced_and_replaces_in_place(env: Env) -> None:
    uri = put_raw(env, [line(make_event("a"))])
    first = process_object(env, uri)
    files = verified_files(env)
    assert process_object(env, uri).outcome is ProcessOutcome.ALREADY_COMPLETED
    forced = process_object(env, uri, force=True)
    assert forced.outcome is ProcessOutcome.COMPLETED and forced.outputs == first.outputs
    assert verified_files(env) == files


def test_changed_object_removes_outputs_it_no_longer_produces(env: Env) -> None:
    uri = put_raw(
        env,
        [
            line(make_event("a", occurred_at="2025-11-24T10:00:00Z")),
            line(make_event("b", occurred_at="2025-11-24T11:00:00Z")),
            b"bad line",
        ],
    )
    process_object(env, uri)
    assert len(verified_files(env)) == 2 and len(quarantine_records(env)) == 1
    put_raw(env, [line(make_event("a", occurred_at="2025-11-24T10:00:00Z"))], key=uri.key)
    result = process_object(env, uri)
    files = verified_files(env)
    assert [parse_verified_key(k).hour for k in files] == ["10"]  # type: ignore[union-attr]
    assert quarantine_records(env) == []
    assert len(result.removed) == 2


def test_crash_before_complete_leaves_pending_outputs_that_the_next_run_removes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = put_raw(env, [line(make_event("a", occurred_at="2025-11-24T10:00:00Z"))])
    process_object(env, uri)
    # The object changes; the run writes an hour-11 file, then dies before completing.
    put_raw(
        env,
        [
            line(make_event("a", occurred_at="2025-11-24T10:00:00Z")),
            line(make_event("b", occurred_at="2025-11-24T11:00:00Z")),
        ],
        key=uri.key,
    )

    def die(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(env.ledger, "complete", die)
        with pytest.raises(RuntimeError):
            process_object(env, uri)
    assert len(verified_files(env)) == 2
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and len(record.pending_outputs) == 2
    # The object changes back; the next run must remove the hour-11 file it no longer makes.
    put_raw(env, [line(make_event("a", occurred_at="2025-11-24T10:00:00Z"))], key=uri.key)
    process_object(env, uri)
    assert [parse_verified_key(k).hour for k in verified_files(env)] == ["10"]  # type: ignore[union-attr]
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.pending_outputs == ()


def test_a_put_that_fails_while_others_publish_fails_the_object_and_loses_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    hours = [f"2025-11-24T{h:02d}:00:00Z" for h in range(10, 22)]
    uri = put_raw(env, [line(make_event(f"e{i}", occurred_at=t)) for i, t in enumerate(hours)])
    put_file = env.store.put_file

    def fail_one(bucket: str, key: str, path: Path) -> object:
        if "hour=15" in key:
            raise OSError("disk full")
        return put_file(bucket, key, path)

    with monkeypatch.context() as m:
        m.setattr(env.store, "put_file", fail_one)
        with pytest.raises(OSError, match="disk full"):
            process_object(env, uri)
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.FAILED
    assert "disk full" in (record.last_error or "")
    # The files that were put are pending: the next run replaces them and completes.
    assert len(record.pending_outputs) == len(hours)
    result = process_object(env, uri)
    assert result.outcome is ProcessOutcome.COMPLETED
    assert (
        sorted(parse_verified_key(k).hour for k in verified_files(env))
        == [  # type: ignore[union-attr]
            t[11:13] for t in hours
        ]
    )


def test_large_object_streams_in_row_groups(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small memory budget: the rows must go out in several row groups, not held whole.
    monkeypatch.setattr("sluice.process.outputs.FLUSH_BYTES", 256 * 1024)
    monkeypatch.setattr("sluice.process.processor.FAST_BATCH_LINES", 4096)
    events = [line(make_event(f"e{i}", assertions=3)) for i in range(30_000)]
    uri = put_raw(env, events)
    result = process_object(env, uri)
    assert result.counts is not None and result.counts.rows == 90_000
    (key,) = verified_files(env)
    with env.store.open(env.config.buckets.verified, key) as f:
        meta = pq.read_metadata(f)
    assert meta.num_rows == 90_000 and meta.num_row_groups >= 3


def test_columnar_and_row_paths_write_the_same_rows(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sluice.generate import generate

    ndjson = tmp_path / "t.ndjson"
    generate(ndjson, events=3000, days=1, bad_fraction=0.05, seed=3)
    # Unknown fields at every level, among the generated lines (which have payload and
    # assertion extras of their own): each must reach its row's *__extra column.
    odd = make_event("odd-1", assertions=3, battery_pct=5, note={"a": [1]})
    odd["envelope"]["region"] = "eu"
    odd["payload"]["assertions"][1]["unit"] = "V"
    odd["meta"] = {"k": None}
    doorbell = make_event("odd-2", "video_doorbell", assertions=0, uptime_s=None)
    # A valid occurred_at the column check leaves to the line rule, among valid ones.
    spaced = make_event("odd-3", occurred_at="2025-11-24 21:09:35", assertions=1)
    # Numbers at the edges of what the compiled checker vouches for (the columnar path).
    edges = [
        make_event("edge-1", "bridge", uptime_s=-999_999_999_999_999_999, cpu_pct=-0.0),
        make_event("edge-2", "bridge", uptime_s=999_999_999_999_999_999, cpu_pct=12345.6789012345),
        make_event("edge-3", "video_doorbell", video_bitrate_kbps=99999999999999.9, ring_count=0),
        make_event("edge-4", battery_pct=-(2**31), rssi_dbm=2**31 - 1, assertions=1),
    ]
    edges[3]["payload"]["assertions"][0]["measured_value"] = 123456789012345
    generated = ndjson.read_bytes().splitlines()
    odd_lines = [line(odd), line(spaced), *map(line, edges)]
    uri = put_raw(env, [*generated[:1000], *odd_lines, *generated[1000:], line(doorbell)])

    def snapshot() -> dict[str, list[dict[str, Any]]]:
        out = {}
        for key in verified_files(env):
            with env.store.open(env.config.buckets.verified, key) as f:
                rows = pq.read_table(f).to_pylist()
            out[key] = sorted(rows, key=lambda r: (r["envelope__line"], r["envelope__ordinal"]))
        return out

    columnar = process_object(env, uri)
    first = snapshot()
    rows = [r for rows in first.values() for r in rows if r["envelope__event_id"] == "odd-1"]
    assert [r["payload__assertion__extra"] for r in rows] == [None, '{"unit":"V"}', None]
    assert {r["envelope__extra"] for r in rows} == {'{"region":"eu"}'}
    assert {r["payload__extra"] for r in rows} == {'{"$.meta":{"k":null},"note":{"a":[1]}}'}
    [row] = [r for rows in first.values() for r in rows if r["envelope__event_id"] == "odd-2"]
    assert row["payload__extra"] == '{"uptime_s":null}'
    [row] = [r for rows in first.values() for r in rows if r["envelope__event_id"] == "odd-3"]
    assert row["envelope__occurred_at"] == datetime(2025, 11, 24, 21, 9, 35, tzinfo=UTC)
    edge_rows = {
        r["envelope__event_id"]: r
        for rows in first.values()
        for r in rows
        if r["envelope__event_id"].startswith("edge-")
    }
    assert edge_rows["edge-2"]["payload__uptime_s"] == 999_999_999_999_999_999
    assert edge_rows["edge-4"]["payload__assertion__measured_value"] == 123456789012345.0
    # The same object again with the columnar reader refusing every batch: rows go one by one.
    monkeypatch.setattr("sluice.process.columnar.FastBatch.read", lambda self, scratch: None)
    rows = process_object(env, uri, force=True)
    assert rows.counts == columnar.counts
    assert snapshot() == first


def test_a_line_the_reader_refuses_costs_its_neighbours_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msgspec takes a duplicate key (the last value wins); DuckDB's reader refuses the whole
    # batch. The batch is halved until that line is among a few taken one by one.
    import sluice.process.processor as processor

    events = [line(make_event(f"e{i}")) for i in range(4000)]
    duplicate = make_event("dup")
    text = json.dumps(duplicate).replace('"device_id": ', '"device_id": "first", "device_id": ', 1)
    events[2500] = text.encode()
    per_line: list[int] = []
    rule = processor.parse_line

    def counted(data: bytes, arrived_at: Any) -> Any:
        per_line.append(1)
        return rule(data, arrived_at)

    monkeypatch.setattr(processor, "parse_line", counted)
    uri = put_raw(env, events)
    result = process_object(env, uri)
    assert result.counts is not None
    assert (result.counts.good_lines, result.counts.quarantined_lines) == (4000, 0)
    assert 0 < len(per_line) <= processor.SMALLEST_BATCH
    rows = []
    for key in verified_files(env):
        with env.store.open(env.config.buckets.verified, key) as f:
            columns = ["envelope__event_id", "envelope__device_id", "envelope__line"]
            rows += pq.read_table(f, columns=columns).to_pylist()
    assert sorted(r["envelope__line"] for r in rows) == sorted(list(range(1, 4001)) * 2)
    kept = {"envelope__event_id": "dup", "envelope__device_id": "dev-1", "envelope__line": 2501}
    assert kept in rows  # the last value, as the per-line rule reads it
