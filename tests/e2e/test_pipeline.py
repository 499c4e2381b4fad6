"""End to end on the embedded backends: generate → ingest → worker → verified Parquet, quarantine,
ledger and query, checked against the generator's ground truth and against the raw bytes.

One pipeline run (every bad kind, huge lines included, many small raw objects) is shared by the
read-only tests of this module; the CLI tests run their own, in their own data directories.
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sluice.env import open_env
from sluice.generate import BAD_KINDS, HUGE_LINE
from sluice.layout import TYPES, table_name
from sluice.process.schemas import ASSERTION_FIELDS, PARSER_VERSION, PAYLOAD_FIELDS, SPECS
from sluice.query import run_query
from tests.e2e.conftest import (
    IDENTITY,
    SLUICE,
    Identity,
    Run,
    bucket_dir,
    cli_env,
    quarantine_files,
    raw_lines,
    raw_objects,
    read_quarantine,
    run_pipeline,
    short_config,
    snapshot,
    source_hash,
    uri_path,
    verified_files,
)

pytestmark = pytest.mark.e2e

# Each bad kind of the generator and the reason code the parser (sluice/process/parse.py) gives
# it. Written out here rather than imported, so that a generator and a parser drifting apart
# together cannot make this test pass:
#   invalid_json       a strict prefix of an object      -> msgspec.DecodeError   -> invalid_json
#   not_object         an array, string, number, null…   -> parse_event           -> not_object
#   missing_field      a required envelope key deleted   -> "…: missing or null"  -> missing_field
#   null_field         a required envelope key null      -> "…: missing or null"  -> missing_field
#   empty_object       `{}` (no envelope at all)         -> "envelope: missing"   -> missing_field
#   unknown_type       type thermostat/smoke_alarm/…     -> no SPECS entry        -> unknown_type
#   bad_timestamp      not RFC 3339 / impossible date    -> parse_timestamp       -> bad_timestamp
#   old_timestamp      in 1999 (before 2000-01-01)       -> EARLIEST check        -> bad_timestamp
#   future_timestamp   30 days after the raw's arrival   -> MAX_AHEAD_OF_ARRIVAL  -> bad_timestamp
#   wrong_payload_type "high" for an int / string list   -> _check, _assertions   -> wrong_type
#   non_utf8           bytes FF FE inside a string       -> UnicodeDecodeError    -> invalid_utf8
#   huge_line          a ~3 MB line (> MAX_LINE_BYTES)   -> decode_line / lines   -> line_too_long
REASON_CODE = {
    "invalid_json": "invalid_json",
    "not_object": "not_object",
    "missing_field": "missing_field",
    "null_field": "missing_field",
    "empty_object": "missing_field",
    "unknown_type": "unknown_type",
    "bad_timestamp": "bad_timestamp",
    "old_timestamp": "bad_timestamp",
    "future_timestamp": "bad_timestamp",
    "wrong_payload_type": "wrong_type",
    "non_utf8": "invalid_utf8",
    "huge_line": "line_too_long",
}


# The envelope keys the schema has columns for; any other goes to envelope__extra (DESIGN §4).
ENVELOPE_KEYS = frozenset(
    ("event_id", "type", "event_kind", "device_id", "occurred_at", "schema_version", "batch_id")
)


def expected_codes(bad_lines: dict[str, int]) -> Counter[str]:
    codes: Counter[str] = Counter()
    for kind, n in bad_lines.items():
        codes[REASON_CODE[kind]] += n
    return codes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("pipeline")
    return run_pipeline(
        tmp,
        events=6_000,
        bad_fraction=0.05,
        seed=20251124,
        huge_lines=True,
        max_object_bytes=96 * 1024,
    )


@pytest.fixture(scope="module")
def tables(run: Run) -> dict[str, Any]:
    """Every verified file read back with pyarrow: key -> Table."""
    return {key: pq.read_table(path) for key, path in verified_files(run.config).items()}


@pytest.fixture(scope="module")
def lines_by_source(run: Run) -> dict[str, list[bytes]]:
    return {uri: raw_lines(path) for uri, path in raw_objects(run.config).items()}


def _partition_of_key(key: str) -> tuple[str, str, str]:
    # telemetry_flat/type=T/day=D/hour=H/<hash>.parquet
    _, t, d, h, _ = key.split("/")
    assert t.startswith("type=") and d.startswith("day=") and h.startswith("hour="), key
    return t[5:], d[4:], h[5:]


# -- the run itself ---------------------------------------------------------------------------


def test_the_run_covers_what_it_claims_to(run: Run) -> None:
    gen = run.generated
    assert set(gen.bad_lines) == {*BAD_KINDS, HUGE_LINE}, "every bad kind, huge lines included"
    assert len(run.ingested.objects) >= 20, "many small raw objects"
    hours = Counter(p.rsplit("/", 1)[0] for p in gen.rows_by_partition)
    assert max(hours.values()) > 1, "several hours per table and day"
    sources_per_partition = Counter(k.rsplit("/", 1)[0] for k in verified_files(run.config))
    assert max(sources_per_partition.values()) > 1, "several raw objects feed one partition"
    assert run.stats is not None
    assert run.stats.completed == len(run.ingested.objects)


def test_raw_objects_hold_the_input_byte_for_byte(run: Run) -> None:
    objects = raw_objects(run.config)
    assert sorted(objects) == sorted(run.ingested.objects)
    data = b"".join(gzip.decompress(objects[uri].read_bytes()) for uri in run.ingested.objects)
    assert data == run.input.read_bytes()


# -- verified rows ----------------------------------------------------------------------------


def test_verified_rows_match_the_generator(run: Run, tables: dict[str, Any]) -> None:
    by_table: Counter[str] = Counter()
    by_partition: Counter[str] = Counter()
    for key, table in tables.items():
        type_, day, hour = _partition_of_key(key)
        by_table[table_name(type_)] += table.num_rows
        by_partition[f"{table_name(type_)}/day={day}/hour={hour}"] += table.num_rows
    assert dict(by_table) == {t: n for t, n in run.generated.rows.items() if n}
    assert dict(by_partition) == run.generated.rows_by_partition


def test_query_engine_sees_every_row_of_every_partition(run: Run) -> None:
    seen: dict[str, int] = {}
    for type_ in TYPES:
        table = table_name(type_)
        result = run_query(run.env, f"SELECT day, hour, count(*) AS n FROM {table} GROUP BY ALL")
        for row in result.to_pylist():
            seen[f"{table}/day={row['day']}/hour={row['hour']}"] = row["n"]
    assert seen == run.generated.rows_by_partition


def test_no_row_appears_twice_across_all_files(run: Run, tables: dict[str, Any]) -> None:
    identities: Counter[Identity] = Counter()
    for table in tables.values():
        cols = [table.column(c).to_pylist() for c in IDENTITY]
        identities.update(zip(*cols, strict=True))
    duplicates = {k: n for k, n in identities.items() if n > 1}
    assert not duplicates, list(duplicates.items())[:5]
    assert sum(identities.values()) == sum(run.generated.rows.values())


def test_every_file_of_a_table_has_the_table_schema(run: Run) -> None:
    for key, path in verified_files(run.config).items():
        type_, _, _ = _partition_of_key(key)
        schema = pq.read_schema(path)
        expected = SPECS[type_].schema
        assert schema.equals(expected, check_metadata=False), (key, schema, expected)
        assert schema.names == expected.names, key  # same order, too


def test_every_row_lies_in_the_partition_of_its_event_time(tables: dict[str, Any]) -> None:
    for key, table in tables.items():
        type_, day, hour = _partition_of_key(key)
        assert set(table.column("envelope__type").to_pylist()) == {type_}, key
        for at in table.column("envelope__occurred_at").to_pylist():
            assert at.utcoffset() == timedelta(0), (key, at)
            assert (at.strftime("%Y-%m-%d"), at.strftime("%H")) == (day, hour), (key, at)


def test_lineage_columns_name_an_existing_raw_object(run: Run, tables: dict[str, Any]) -> None:
    raw = set(raw_objects(run.config))
    since = run.started.replace(microsecond=0) - timedelta(seconds=1)
    until = datetime.now().astimezone()
    for key, table in tables.items():
        for column in (
            "envelope__received_at",
            "envelope__source_ref",
            "envelope__line",
            "envelope__ordinal",
            "envelope__parser_version",
        ):
            assert table.column(column).null_count == 0, (key, column)
        sources = set(table.column("envelope__source_ref").to_pylist())
        assert len(sources) == 1, (key, sources)  # one file per (source, table, day, hour)
        (source,) = sources
        assert source in raw, (key, source)
        assert key.rsplit("/", 1)[1] == f"{source_hash(source)}.parquet", key
        assert set(table.column("envelope__parser_version").to_pylist()) == {PARSER_VERSION}
        for received in set(table.column("envelope__received_at").to_pylist()):
            assert since <= received <= until, (key, received)


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _same(value: Any, column: Any) -> bool:
    """A raw JSON value and its column value (ints widen to doubles, nothing else converts)."""
    if isinstance(column, float) and type(value) is int:
        return float(value) == column
    return type(value) is type(column) and value == column


def test_every_row_is_its_raw_line(
    tables: dict[str, Any], lines_by_source: dict[str, list[bytes]]
) -> None:
    """Each row holds the event of the raw line it names — every envelope and payload field, and
    every unknown key in the `*__extra` JSON columns — one row per assertion element."""
    ordinals: dict[tuple[str, int], set[int]] = defaultdict(set)
    extras_seen = Counter[str]()
    for key, table in tables.items():
        type_, _, _ = _partition_of_key(key)
        fields = PAYLOAD_FIELDS[type_]
        for row in table.to_pylist():
            source, line, ordinal = (row[c] for c in IDENTITY)
            where = (key, line, ordinal)
            event = json.loads(lines_by_source[source][line - 1])
            envelope, payload = event["envelope"], event.get("payload") or {}
            for name in ("event_id", "type", "event_kind", "device_id", "schema_version"):
                assert _same(envelope[name], row[f"envelope__{name}"]), (where, name)
            assert row["envelope__batch_id"] == envelope.get("batch_id"), where
            occurred = datetime.fromisoformat(envelope["occurred_at"])
            assert row["envelope__occurred_at"] == occurred, where
            envelope_extra = {k: v for k, v in envelope.items() if k not in ENVELOPE_KEYS}
            assert _json_or_none(row["envelope__extra"]) == (envelope_extra or None), where
            for name in fields:
                value, column = payload.get(name), row[f"payload__{name}"]
                assert (value is None and column is None) or _same(value, column), (where, name)
            extra = {k: v for k, v in payload.items() if k not in fields and k != "assertions"}
            extra |= {f"$.{k}": v for k, v in event.items() if k not in ("envelope", "payload")}
            assert _json_or_none(row["payload__extra"]) == (extra or None), where
            extras_seen["payload"] += bool(extra)
            assertions = payload.get("assertions") or []
            if assertions:
                element = assertions[ordinal]
                for name in ASSERTION_FIELDS:
                    value, column = element.get(name), row[f"payload__assertion__{name}"]
                    assert (value is None and column is None) or _same(value, column), (
                        where,
                        name,
                    )
                unknown = {k: v for k, v in element.items() if k not in ASSERTION_FIELDS}
                assert _json_or_none(row["payload__assertion__extra"]) == (unknown or None)
                extras_seen["assertion"] += bool(unknown)
            else:
                assert ordinal == 0, where
                assert all(row[f"payload__assertion__{n}"] is None for n in ASSERTION_FIELDS)
            ordinals[(source, line)].add(ordinal)
    for (source, line), seen in ordinals.items():
        payload = json.loads(lines_by_source[source][line - 1]).get("payload") or {}
        assert seen == set(range(max(1, len(payload.get("assertions") or ())))), (source, line)
    # The generator puts unknown keys in some payloads and assertions: they were checked.
    assert extras_seen["payload"] and extras_seen["assertion"], extras_seen


def test_upstream_duplicates_are_kept(run: Run, tables: dict[str, Any]) -> None:
    """A resent event (same event_id on another line) is kept in the verified tables; only
    compaction removes it. Distinct (event_id, ordinal) per table = the generator's."""
    distinct: dict[str, set[tuple[str, int]]] = defaultdict(set)
    rows: Counter[str] = Counter()
    for key, table in tables.items():
        name = table_name(_partition_of_key(key)[0])
        ids = table.column("envelope__event_id").to_pylist()
        distinct[name].update(zip(ids, table.column("envelope__ordinal").to_pylist(), strict=True))
        rows[name] += table.num_rows
    assert {t: len(v) for t, v in distinct.items()} == {
        t: n for t, n in run.generated.distinct_events.items() if n
    }
    assert run.generated.resent_events > 0
    assert sum(rows.values()) > sum(len(v) for v in distinct.values())


# -- quarantine -------------------------------------------------------------------------------


def test_quarantine_holds_exactly_the_bad_lines(
    run: Run, tables: dict[str, Any], lines_by_source: dict[str, list[bytes]]
) -> None:
    codes: Counter[str] = Counter()
    quarantined: set[tuple[str, int]] = set()
    for key, path in quarantine_files(run.config).items():
        records = read_quarantine(path)
        sources = {r["source_ref"] for r in records}
        assert len(sources) == 1 and key.endswith(f"/{source_hash(sources.pop())}.jsonl.gz"), key
        for record in records:
            source, number = record["source_ref"], record["line"]
            assert (source, number) not in quarantined, ("quarantined twice", source, number)
            quarantined.add((source, number))
            codes[record["reason_code"]] += 1
            assert record["reason"], record
            original = lines_by_source[source][number - 1]
            kept = (
                base64.b64decode(record["raw_b64"])
                if "raw_b64" in record
                else record["raw"].encode()
            )
            assert record["bytes"] == len(original), (source, number)
            if record.get("raw_truncated"):
                assert record["reason_code"] == "line_too_long"
                assert original.startswith(kept) and len(kept) < len(original)
            else:
                assert kept == original, (source, number)
    assert codes == expected_codes(run.generated.bad_lines)

    # Every line of every raw object is exactly one of: a row source, quarantined, blank.
    verified = {
        (s, n)
        for table in tables.values()
        for s, n in zip(
            table.column("envelope__source_ref").to_pylist(),
            table.column("envelope__line").to_pylist(),
            strict=True,
        )
    }
    assert not verified & quarantined
    blank = 0
    for source, lines in lines_by_source.items():
        for number, line in enumerate(lines, 1):
            where = ((source, number) in verified) + ((source, number) in quarantined)
            if not line.strip():
                blank += 1
                assert where == 0, ("blank line used", source, number)
            else:
                assert where == 1, ("line neither verified nor quarantined", source, number)
    assert blank == run.generated.blank_lines
    assert len({(s, n) for s, n in verified}) == run.generated.good_lines


# -- ledger, registry and queues --------------------------------------------------------------


def test_ledger_counts_add_up_to_the_generator(run: Run) -> None:
    gen = run.generated
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for uri in run.ingested.objects:
        bucket, key = uri[5:].split("/", 1)
        record = run.env.ledger.get(bucket, key)
        assert record is not None and record.status.value == "completed", uri
        counts = record.counts
        assert counts is not None
        assert counts.lines == counts.blank_lines + counts.good_lines + counts.quarantined_lines
        assert counts.lines == len(raw_lines(uri_path(run.config, uri))), uri
        assert sum(counts.quarantine_reasons.values()) == counts.quarantined_lines, uri
        receipt = run.env.ledger.get_receipt(bucket, key)
        assert receipt is not None and receipt.lines == counts.lines, uri
        for name in ("lines", "blank_lines", "good_lines", "quarantined_lines", "rows"):
            totals[name] += getattr(counts, name)
        reasons.update(counts.quarantine_reasons)
        assert not record.pending_outputs, uri
        assert record.last_error is None, uri
    assert totals == Counter(
        lines=gen.lines,
        blank_lines=gen.blank_lines,
        good_lines=gen.good_lines,
        quarantined_lines=gen.quarantined_lines,
        rows=sum(gen.rows.values()),
    )
    assert reasons == expected_codes(gen.bad_lines)


def test_ledger_outputs_are_the_files_on_disk(run: Run) -> None:
    """The file registry lists exactly the files that exist, with their row counts."""
    on_disk = {
        f"s3://{run.config.buckets.verified}/{k}": p for k, p in verified_files(run.config).items()
    }
    on_disk |= {
        f"s3://{run.config.buckets.quarantine}/{k}": p
        for k, p in quarantine_files(run.config).items()
    }
    registered: dict[str, int] = {}
    for uri in run.ingested.objects:
        bucket, key = uri[5:].split("/", 1)
        record = run.env.ledger.get(bucket, key)
        assert record is not None
        for output in record.outputs:
            assert output.uri not in registered, ("registered by two sources", output.uri)
            registered[output.uri] = output.rows
    assert set(registered) == set(on_disk)
    for uri, rows in registered.items():
        path = on_disk[uri]
        actual = (
            pq.read_metadata(path).num_rows
            if uri.endswith(".parquet")
            else len(read_quarantine(path))
        )
        assert actual == rows, uri


def test_nothing_left_in_the_queue_or_the_dlq(run: Run) -> None:
    for queue in (run.env.processing_queue, run.env.processing_dlq):
        counts = queue.counts()
        assert (counts.visible, counts.in_flight) == (0, 0), queue.name
    assert run.stats is not None
    assert (run.stats.retried, run.stats.dead_lettered, run.stats.errors) == (0, 0, [])


# -- the command line -------------------------------------------------------------------------


def sluice(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SLUICE, *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sluice_json(tmp_path: Path, *args: str) -> Any:
    done = sluice(tmp_path, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def test_cli_generate_ingest_worker_query(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    base = ("--data-dir", data, "--json")
    gen = sluice_json(
        tmp_path,
        *base,
        "generate",
        "-o",
        "in.ndjson",
        "--events",
        "1500",
        "--bad-fraction",
        "0.05",
        "--seed",
        "5",
        "--days",
        "1",
    )
    assert gen["lines"] == gen["good_lines"] + gen["blank_lines"] + sum(gen["bad_lines"].values())
    assert set(gen["bad_lines"]) == set(BAD_KINDS)
    assert (tmp_path / "in.ndjson").stat().st_size > 0

    ingested = sluice_json(tmp_path, *base, "ingest", "--max-object-mb", "0.05", "in.ndjson")
    assert ingested["lines"] == gen["lines"]
    assert ingested["messages_sent"] == len(ingested["objects"]) > 5
    config = short_config(Path(data))
    assert sorted(raw_objects(config)) == sorted(ingested["objects"])

    stats = sluice_json(tmp_path, *base, "worker", "--until-idle")
    assert stats["completed"] == len(ingested["objects"])
    assert stats["rows"] == sum(gen["rows"].values())
    assert stats["quarantined_lines"] == sum(gen["bad_lines"].values())
    assert (stats["dead_lettered"], stats["retried"], stats["errors"]) == (0, 0, [])
    assert sum(n for n, _ in snapshot(config).files.values()) == sum(gen["rows"].values())

    union = " UNION ALL ".join(
        f"SELECT '{table_name(t)}' AS t, day, hour, count(*) AS n FROM {table_name(t)} GROUP BY ALL"
        for t in TYPES
    )
    rows = sluice_json(tmp_path, *base, "query", union)
    assert {f"{r['t']}/day={r['day']}/hour={r['hour']}": r["n"] for r in rows} == gen[
        "rows_by_partition"
    ]


def test_cli_ingest_of_a_missing_file_fails_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "present.ndjson").write_text('{"envelope": {}}\n')
    done = sluice(tmp_path, "--data-dir", str(data), "ingest", "present.ndjson", "absent.ndjson")
    assert done.returncode != 0
    assert "absent.ndjson" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    config = short_config(data)
    assert raw_objects(config) == {}, "the present file must not be ingested either"
    assert not list(bucket_dir(config, config.buckets.raw).rglob("*"))

    as_json = sluice(tmp_path, "--data-dir", str(data), "--json", "ingest", "absent.ndjson")
    assert as_json.returncode != 0
    error = json.loads(as_json.stdout)
    assert error["error"] == "ConfigError" and "absent.ndjson" in error["message"]

    env = open_env(config)
    counts = env.processing_queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)
    assert list(env.ledger.receipts()) == []


def test_cli_query_with_bad_sql_fails(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    done = sluice(tmp_path, "--data-dir", data, "query", "SELEC count(*) FROM telemetry_lock_flat")
    assert done.returncode != 0
    assert "syntax error" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    missing = sluice(tmp_path, "--data-dir", data, "--json", "query", "SELECT * FROM nope_flat")
    assert missing.returncode != 0
    assert json.loads(missing.stdout)["error"] == "QueryFailed"


def test_cli_unknown_env_fails_with_a_readable_hint(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    as_json = sluice(tmp_path, "--data-dir", data, "--env", "nope", "--json", "query", "SELECT 1")
    assert as_json.returncode != 0
    error = json.loads(as_json.stdout)
    assert error["error"] == "ConfigError" and "nope" in error["message"]
    assert "[env.nope]" in error["hint"]

    done = sluice(tmp_path, "--data-dir", data, "--env", "nope", "worker", "--until-idle")
    assert done.returncode != 0
    assert "unknown environment 'nope'" in done.stderr, done.stderr
    # The hint names the table to add; the human rendering must not eat it as markup.
    assert "[env.nope]" in done.stderr, done.stderr


def test_cli_query_prints_values_verbatim(tmp_path: Path) -> None:
    """Values are data, not terminal markup: a device-sent string such as "[/]" or
    "[red]x[/red]" is printed as it is (and does not crash the table rendering)."""
    data = str(tmp_path / "data")
    sql = "SELECT 'x[/]y' AS closing, '[red]alert[/red]' AS styled"
    done = sluice(tmp_path, "--data-dir", data, "query", sql)
    assert done.returncode == 0, done.stderr
    assert "x[/]y" in done.stdout and "[red]alert[/red]" in done.stdout, done.stdout
    as_json = sluice(tmp_path, "--data-dir", data, "--json", "query", sql)
    assert json.loads(as_json.stdout) == [{"closing": "x[/]y", "styled": "[red]alert[/red]"}]
