"""`verify` finds what was broken on purpose, and passes a whole lake."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import Output, Receipt
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri
from sluice.ops.verify import Check, Finding, Verdict, VerifyReport, load_thresholds, verify
from sluice.process.processor import process_object
from tests.conftest import ARRIVED, line, make_event, put_raw

DAY = "2025-11-24"
LOCK = "telemetry_lock_flat"


def build_lake(env: Env) -> dict[str, ObjectUri]:
    """Two raw objects through the real parser: `a` holds five lock events at 21h (two
    assertion rows each), a blank and a bad line; `b` three bridge events and a lock event."""
    a = put_raw(
        env,
        [line(make_event(f"a-{i}", occurred_at=f"{DAY}T21:0{i}:00Z")) for i in range(5)]
        + [b"", b"not json"],
    )
    b = put_raw(
        env,
        [line(make_event(f"b-{i}", "bridge", f"{DAY}T22:00:00Z", assertions=1)) for i in range(3)]
        + [line(make_event("b-lock", occurred_at=f"{DAY}T22:30:00Z", assertions=0))],
    )
    for uri in (a, b):
        process_object(env, uri)
    return {"a": a, "b": b}


def output_of(env: Env, uri: ObjectUri, table: str = LOCK) -> Output:
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None
    return next(o for o in record.outputs if o.table == table)


def rewrite(env: Env, output: Output, change: Callable[[pa.Table], pa.Table]) -> None:
    """Replace a verified file by `change` of its rows, as a tool outside sluice would."""
    fs, root = env.store.arrow_filesystem()
    with fs.open_input_file(f"{root}{output.bucket}/{output.key}") as f:
        table = pq.ParquetFile(f).read()
    sink = pa.BufferOutputStream()
    pq.write_table(change(table), sink)
    env.store.put(output.bucket, output.key, sink.getvalue().to_pybytes())


def set_null(table: pa.Table, column: str, row: int = 0) -> pa.Table:
    i = table.schema.get_field_index(column)
    values = table.column(i).to_pylist()
    values[row] = None
    field = pa.field(column, table.schema.field(i).type)  # nullable, as a foreign tool writes
    return table.set_column(i, field, pa.array(values, field.type))


def verdicts(report: VerifyReport) -> dict[tuple[str, str, str], Verdict]:
    return {(r.table, r.check.value, f.name): f.verdict for r in report.results for f in r.findings}


def finding(report: VerifyReport, table: str, name: str) -> Finding:
    for result in report.results:
        for f in result.findings:
            if result.table == table and f.name == name:
                return f
    raise AssertionError(f"no finding {name} for {table}")


def not_passing(report: VerifyReport) -> dict[tuple[str, str, str], Verdict]:
    """Findings that are not PASS, apart from compaction (the day is not compacted here)."""
    return {
        k: v for k, v in verdicts(report).items() if v is not Verdict.PASS and k[2] != "compacted"
    }


@pytest.fixture
def lake(env: Env) -> dict[str, ObjectUri]:
    return build_lake(env)


def test_a_whole_lake_passes(env: Env, lake: dict[str, ObjectUri]) -> None:
    from sluice.compact.daily import compact_day

    for type_ in ("lock", "bridge"):
        compact_day(env, type_, DAY)
    report = verify(env, DAY, ["lock", "bridge"])
    assert {k: v for k, v in verdicts(report).items() if v is not Verdict.PASS} == {}
    assert report.verdict is Verdict.PASS
    assert report.has_data
    assert {r.check for r in report.results} == set(Check)
    counts = finding(report, LOCK, "rows_in_files").numbers
    assert counts == {
        "objects": 2,
        "files": 2,
        "ledger_rows": 11,
        "visible_rows": 11,
        "mismatches": 0,
    }
    assert finding(report, LOCK, "receipts").numbers == {
        "with_receipt": 0,
        "without_receipt": 2,
        "offenders": 0,
    }
    assertions = finding(report, LOCK, "assertions").numbers
    assert assertions["components"] == {"c0": 5, "c1": 5}
    assert assertions["assertion_rows"] == 10


def test_a_copied_file_is_a_pipeline_duplicate(env: Env, lake: dict[str, ObjectUri]) -> None:
    original = output_of(env, lake["a"])
    copy = original.key.replace(".parquet", "-copy.parquet")
    env.store.copy(original.bucket, original.key, original.bucket, copy)

    report = verify(env, DAY, ["lock"], [Check.DUPLICATES, Check.COUNTS])

    dup = finding(report, LOCK, "pipeline_duplicates")
    assert dup.verdict is Verdict.FAIL
    assert dup.numbers == {
        "rows": 21,
        "distinct_rows": 11,
        "groups": 10,
        "extra_rows": 10,
        "first_source_ref": str(lake["a"]),
        "first_hour": "21",
    }
    samples = dup.samples
    assert len(samples) == 10
    first = samples[0]
    assert (first["source_ref"], first["line"], first["ordinal"]) == (str(lake["a"]), 1, 0)
    assert first["copies"] == 2 and first["hour"] == "21"
    files = {f["uri"]: f["in_ledger"] for f in first["files"]}
    assert files == {original.uri: True, f"s3://{original.bucket}/{copy}": False}
    assert dup.hint is not None
    assert dup.hint.startswith(f"sluice redrive --parquet-uri s3://{original.bucket}/{copy} --wait")
    # The copy is no upstream duplicate: the same line twice is one line.
    assert finding(report, LOCK, "upstream_duplicates").numbers["groups"] == 0
    rows = finding(report, LOCK, "rows_in_files")
    assert rows.verdict is Verdict.FAIL
    [mismatch] = rows.samples
    assert mismatch["source_ref"] == str(lake["a"])
    assert (mismatch["ledger_rows"], mismatch["visible_rows"], mismatch["file_rows"]) == (
        10,
        20,
        10,
    )
    assert "other files" in mismatch["problem"]
    assert report.failed


def test_a_copy_in_another_hour_is_found_with_its_files(
    env: Env, lake: dict[str, ObjectUri]
) -> None:
    original = output_of(env, lake["a"])
    stray = original.key.replace("hour=21", "hour=22")  # a registered partition (b's lock row)
    env.store.copy(original.bucket, original.key, original.bucket, stray)

    report = verify(env, DAY, ["lock"], [Check.DUPLICATES], samples=2)

    dup = finding(report, LOCK, "pipeline_duplicates")
    assert dup.verdict is Verdict.FAIL and dup.numbers["groups"] == 10
    assert [(s["line"], s["ordinal"], s["hour"]) for s in dup.samples] == [
        (1, 0, "21"),
        (1, 1, "21"),
    ]
    files = {f["uri"]: f["in_ledger"] for f in dup.samples[0]["files"]}
    assert files == {original.uri: True, f"s3://{original.bucket}/{stray}": False}


def test_a_row_removed_from_a_file_fails_counts(env: Env, lake: dict[str, ObjectUri]) -> None:
    output = output_of(env, lake["a"])
    rewrite(env, output, lambda t: t.slice(1))

    report = verify(env, DAY, ["lock"])

    assert not_passing(report) == {(LOCK, "counts", "rows_in_files"): Verdict.FAIL}
    [mismatch] = finding(report, LOCK, "rows_in_files").samples
    assert mismatch == {
        "source_ref": str(lake["a"]),
        "hour": "21",
        "visible_rows": 9,
        "file": output.uri,
        "ledger_rows": 10,
        "file_rows": 9,
        "status": "completed",
        "problem": "the file holds 9 rows, the ledger says 10",
    }
    assert finding(report, LOCK, "rows_in_files").hint == f"sluice redrive --s3-uri {lake['a']}"


def test_a_device_resend_is_reported_not_failed(env: Env, lake: dict[str, ObjectUri]) -> None:
    resend = put_raw(env, [line(make_event("a-0", occurred_at=f"{DAY}T21:00:00Z"))])
    process_object(env, resend)

    report = verify(env, DAY, ["lock"])

    assert not_passing(report) == {}
    upstream = finding(report, LOCK, "upstream_duplicates")
    assert upstream.verdict is Verdict.PASS
    assert upstream.numbers == {"unique_keys": 11, "groups": 2, "extra_lines": 2}
    samples = upstream.samples
    assert [(s["event_id"], s["ordinal"], s["objects"]) for s in samples] == [
        ("a-0", 0, 2),
        ("a-0", 1, 2),
    ]
    assert {x["source_ref"] for x in samples[0]["lines"]} == {str(lake["a"]), str(resend)}


def test_an_unregistered_partition_and_a_wrong_receipt(env: Env) -> None:
    uri = put_raw(env, [line(make_event("r-1", occurred_at=f"{DAY}T21:00:00Z"))])
    env.ledger.record_receipt(Receipt(uri.bucket, uri.key, 7, 100, ARRIVED))
    process_object(env, uri)
    env.catalog.drop_partitions(LOCK, [Partition((DAY, "21"))])

    report = verify(env, DAY, ["lock"], [Check.COUNTS])

    assert not_passing(report) == {
        (LOCK, "counts", "rows_in_files"): Verdict.FAIL,
        (LOCK, "counts", "receipts"): Verdict.FAIL,
    }
    [mismatch] = finding(report, LOCK, "rows_in_files").samples
    assert "not registered" in mismatch["problem"] and mismatch["file_rows"] == 2
    assert finding(report, LOCK, "rows_in_files").hint == f"sluice catalog repair --table {LOCK}"
    [receipt] = finding(report, LOCK, "receipts").samples
    assert receipt == {"source_ref": str(uri), "receipt_lines": 7, "ledger_lines": 1}


def test_quality_finds_nulls_and_assertions_without_components(
    env: Env, lake: dict[str, ObjectUri], tmp_path: Path
) -> None:
    output = output_of(env, lake["a"])
    rewrite(
        env,
        output,
        lambda t: set_null(
            set_null(t, "envelope__device_id", 3), "payload__assertion__component_name", 5
        ),
    )

    report = verify(env, DAY, ["lock"], [Check.QUALITY])

    nulls = finding(report, LOCK, "null_rates")
    assert nulls.verdict is Verdict.FAIL
    assert nulls.numbers["null_rates"]["envelope__device_id"] == pytest.approx(1 / 11)
    assert [(s["source_ref"], s["line"], s["ordinal"]) for s in nulls.samples] == [
        (str(lake["a"]), 2, 1)
    ]
    assertions = finding(report, LOCK, "assertions")
    assert assertions.verdict is Verdict.FAIL
    assert assertions.numbers["missing_component"] == 1
    assert [(s["line"], s["ordinal"]) for s in assertions.samples] == [(3, 1)]

    loose = tmp_path / "q.toml"
    loose.write_text(
        "[default]\nmax_null_rate = { envelope__device_id = 0.1 }\n"
        "[lock]\nmax_missing_component_rate = 0.2\ncomponents = ['c0']\n"
    )
    report = verify(env, DAY, ["lock"], [Check.QUALITY], thresholds=load_thresholds(loose))
    assert finding(report, LOCK, "null_rates").verdict is Verdict.PASS
    assertions = finding(report, LOCK, "assertions")
    assert assertions.verdict is Verdict.FAIL  # c1 is not a known component
    assert assertions.numbers["unknown_components"] == {"c1": 4}


def test_verified_unique_rows_against_compaction(env: Env, lake: dict[str, ObjectUri]) -> None:
    from sluice.compact.daily import compact_day

    def compacted() -> Finding:
        return finding(verify(env, DAY, ["lock"], [Check.COUNTS]), LOCK, "compacted")

    assert compacted().verdict is Verdict.WARN  # not compacted yet
    resend = put_raw(env, [line(make_event("a-0", occurred_at=f"{DAY}T21:00:00Z"))])
    process_object(env, resend)
    compact_day(env, "lock", DAY)
    assert compacted().verdict is Verdict.PASS  # the resend's rows are no unique rows
    assert compacted().numbers == {"verified_unique_rows": 11, "compacted_rows": 11}

    late = put_raw(env, [line(make_event("late", occurred_at=f"{DAY}T23:00:00Z"))])
    process_object(env, late)
    stale = compacted()
    assert stale.verdict is Verdict.FAIL
    assert stale.numbers == {"verified_unique_rows": 13, "compacted_rows": 11}
    assert stale.hint == f"sluice compact --date {DAY} --type lock"


def test_a_day_without_data_is_a_clear_warning(env: Env, lake: dict[str, ObjectUri]) -> None:
    report = verify(env, "2025-11-20")
    assert not report.has_data and report.verdict is Verdict.WARN
    assert {f.name for r in report.results for f in r.findings} == {"no_data"}
    assert len(report.results) == len(report.tables) * len(Check)


@pytest.mark.parametrize("day", ["2025-13-01", "24-11-2025", "2025-11-24' OR 1=1 --", ""])
def test_bad_days_are_refused(env: Env, day: str) -> None:
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        verify(env, day)


def test_unknown_types_and_bad_thresholds_are_refused(env: Env, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'doorbell'"):
        verify(env, DAY, ["doorbell"])
    bad = {
        "a.toml": "[lock]\nmax_null_rate = { envelope__device_id = 2 }\n",
        "b.toml": "[locks]\n",
        "c.json": '{"lock": {"max_nul_rate": {}}}',
        "d.toml": "[lock\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError):
            load_thresholds(tmp_path / name)
    with pytest.raises(ConfigError, match="does not have"):
        verify(env, DAY, ["bridge"], thresholds={"bridge": {"max_null_rate": {"payload__x": 0.1}}})


def test_a_lake_from_the_generator_passes(env: Env, tmp_path: Path) -> None:
    """The whole path (generate → ingest → worker → compact), with bad lines and resends."""
    from sluice.compact.daily import compact_day
    from sluice.generate import generate
    from sluice.ingest.buffer import ingest_files
    from sluice.process.worker import run_worker

    made = generate(
        tmp_path / "t.ndjson", events=1500, days=1, now=datetime(2025, 11, 25, tzinfo=UTC)
    )
    ingest_files(env, [tmp_path / "t.ndjson"], max_object_bytes=150_000)
    run_worker(env, until_idle=True)
    for type_ in ("lock", "bridge", "video_doorbell"):
        compact_day(env, type_, DAY)

    report = verify(env, DAY, samples=3)

    assert report.verdict is Verdict.PASS, not_passing(report)
    for table in report.tables:
        receipts = finding(report, table, "receipts").numbers
        assert receipts["without_receipt"] == 0
    upstream = sum(
        finding(report, t, "upstream_duplicates").numbers["groups"] for t in report.tables
    )
    assert upstream > 0 and made.resent_events > 0
