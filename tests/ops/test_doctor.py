"""`sluice doctor`: a healthy lake is all OK; each way of breaking it is found by the right check,
with the command that fixes it."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sluice.backends.catalog.base import Partition
from sluice.backends.ledger.base import SourceRef
from sluice.backends.queue.base import QueueSettings
from sluice.cli.app import app
from sluice.compact.run import compact
from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.errors import BackendBusy
from sluice.layout import ObjectUri, partition_prefix, raw_key
from sluice.messages import process_raw_file
from sluice.ops.doctor import DoctorReport, Verdict, doctor
from sluice.process.processor import process_object
from sluice.process.worker import run_worker
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.conftest import line, make_event, put_raw

LOCK = "telemetry_lock_flat"


def recently() -> str:
    """An event time inside the doctor's window of event hours."""
    return (datetime.now(UTC) - timedelta(minutes=30)).isoformat()


def lock_partition(env: Env) -> Partition:
    (partition,) = env.catalog.list_partitions(LOCK)
    return partition


def default_config(data_dir: Path) -> EnvConfig:
    # The defaults, untuned: a healthy lake on them is all OK.
    return EnvConfig(data_dir=data_dir)


def ingest(env: Env, *lines: bytes, raw: bytes | None = None) -> ObjectUri:
    return put_raw(env, list(lines), key=raw_key(datetime.now(UTC)), raw=raw)


def build(env: Env) -> Env:
    """Two raw objects through the real processor: lock and bridge rows, one bad line."""
    at = recently()
    for n in range(2):
        process_object(
            env,
            ingest(
                env,
                line(make_event(f"lock-{n}", occurred_at=at)),
                line(make_event(f"bridge-{n}", type_="bridge", occurred_at=at)),
                b"not json",
            ),
        )
    return env


@pytest.fixture
def lake(tmp_path: Path) -> Env:
    return build(open_env(default_config(tmp_path / "data")))


def verdicts(report: DoctorReport) -> dict[str, Verdict]:
    return {c.name: c.verdict for c in report.checks}


def others_ok(report: DoctorReport, *broken: str) -> None:
    """Every check but the broken ones is OK."""
    rest = {n: v for n, v in verdicts(report).items() if n not in broken}
    assert set(rest.values()) == {Verdict.OK}, report


def test_a_healthy_lake_is_all_ok(lake: Env) -> None:
    assert lake.config == EnvConfig(data_dir=lake.config.data_dir)  # the default settings
    report = doctor(lake)
    others_ok(report)
    # Visibility 30s against a 30s lease: the worker renews both every 10s.
    settings = report.check("queue_settings").summary
    assert "visibility 30s >= 20s, 2 renewal intervals of the worker" in settings
    assert not report.failed and report.verdict is Verdict.OK
    assert report.check("raw_arriving").evidence["objects"] == 2
    assert report.check("registry").evidence["records_checked"] == 2
    assert report.check("schemas").evidence["files_read"] == 4
    assert all(not c.fixes for c in report.checks if c.verdict is Verdict.OK)


def test_days_changed_since_their_compaction(lake: Env) -> None:
    today = lock_partition(lake).values[0]
    old = datetime.now(UTC) - timedelta(days=2)  # a finished day: today's is still filling
    late = ingest(lake, line(make_event("late", occurred_at=old.isoformat())))
    process_object(lake, late)

    report = doctor(lake)
    compaction = report.check("compaction")
    assert compaction.verdict is Verdict.WARN
    assert compaction.evidence["sample"] == [f"lock {old:%Y-%m-%d} (never_compacted, 1 source(s))"]
    assert compaction.fixes == ("sluice compact --changed",)
    assert f"lock {today}" in compaction.evidence["still_filling"]
    others_ok(report, "compaction")

    compact(lake, changed=True, rollups=False)
    assert doctor(lake).check("compaction").verdict is Verdict.OK
    process_object(lake, late, force=True)  # a redrive: the day's files changed again
    compaction = doctor(lake).check("compaction")
    assert compaction.verdict is Verdict.WARN and "files_changed" in compaction.summary


def test_a_message_in_the_dlq(lake: Env) -> None:
    uri = ingest(lake, raw=b"\x1f\x8b\x08\x00garbage")  # corrupt gzip: a terminal failure
    message = process_raw_file(uri, "corr-dlq")
    lake.processing_queue.send(message.body, message.attributes)
    assert run_worker(lake, until_idle=True).dead_lettered == 1

    report = doctor(lake)
    dlq = report.check("dlq")
    assert dlq.verdict is Verdict.FAIL and dlq.evidence["depth"] == 1
    assert dlq.fixes == ("sluice dlq redrive-all --max-messages 1",)
    assert dlq.see == "sluice dlq list"
    failures = report.check("ledger_failures")
    assert failures.verdict is Verdict.FAIL
    assert failures.evidence["by_error_class"] == {"CorruptObject": 1}
    (sample,) = failures.evidence["sample"]
    assert sample["source"] == str(uri) and sample["terminal"] and "gzip" in sample["error"]
    (retry,) = failures.fixes  # taking in the failure of a moment ago
    assert re.fullmatch(r"sluice ledger retry-failed --older-than \d+s", retry)
    others_ok(report, "dlq", "ledger_failures")
    assert report.failed


def test_a_stuck_claim(lake: Env) -> None:
    uri = ingest(lake, line(make_event("stuck", occurred_at=recently())))
    etag = lake.store.head(uri.bucket, uri.key).etag
    claim = lake.ledger.claim(SourceRef(uri.bucket, uri.key, etag), "dead-worker", 1)
    assert claim.claim is not None

    # Just expired: a redelivered message would take it over.
    recent = doctor(lake, now=datetime.now(UTC) + timedelta(seconds=5)).check("stuck_claims")
    assert recent.verdict is Verdict.WARN
    assert recent.fixes == ("sluice worker --until-idle",)

    # Long expired: nothing will ever finish it.
    report = doctor(lake, now=datetime.now(UTC) + timedelta(minutes=16))
    stuck = report.check("stuck_claims")
    assert stuck.verdict is Verdict.FAIL
    assert stuck.fixes == ("sluice ledger reset-stuck --older-than 15m",)
    (sample,) = stuck.evidence["sample"]
    assert sample["source"] == str(uri) and sample["owner"] == "dead-worker"
    assert report.check("registry").verdict is Verdict.OK  # a held object is not "unprocessed"


def test_a_partition_removed_from_the_catalog(lake: Env) -> None:
    hour = lock_partition(lake)
    assert lake.catalog.drop_partitions(LOCK, [hour]) == 1

    report = doctor(lake)
    registry = report.check("registry")
    assert registry.verdict is Verdict.FAIL
    assert registry.evidence["unregistered"] == {LOCK: ["/".join(hour.values)]}
    assert registry.fixes == ("sluice catalog repair --table telemetry_lock_flat",)
    latest = report.check("verified_partitions").evidence["registered"]
    assert latest[LOCK] == [] and latest["telemetry_bridge_flat"] == ["/".join(hour.values)]
    others_ok(report, "registry")


def test_an_empty_registered_partition(lake: Env) -> None:
    before = datetime.now(UTC) - timedelta(hours=2)
    lake.catalog.add_partitions(LOCK, [Partition((f"{before:%Y-%m-%d}", f"{before:%H}"))])

    report = doctor(lake)
    registry = report.check("registry")
    assert registry.verdict is Verdict.WARN
    assert registry.evidence["empty_partitions"] == {LOCK: [f"{before:%Y-%m-%d/%H}"]}
    assert registry.fixes == ("sluice catalog repair --table telemetry_lock_flat",)
    others_ok(report, "registry")


def test_an_output_missing_from_the_store(lake: Env) -> None:
    record = next(r for r in lake.ledger.list() if r.outputs)
    gone = next(o for o in record.outputs if o.table == LOCK)
    lake.store.delete_batch(gone.bucket, [gone.key])

    registry = doctor(lake).check("registry")
    assert registry.verdict is Verdict.FAIL
    assert registry.evidence["missing_outputs"] == {record.uri: [gone.uri]}
    assert registry.fixes == (f"sluice redrive --s3-uri {record.uri}",)


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_verified_files_with_a_wrong_schema(lake: Env) -> None:
    prefix = partition_prefix("lock", *lock_partition(lake).values)
    bucket = lake.config.buckets.verified
    # No lineage: no pipeline output, nothing can rebuild it.
    stranger = pa.table({"x": [1, 2]})
    lake.store.put(bucket, f"{prefix}stranger.parquet", parquet(stranger))
    # Lineage but a changed type: rebuilt from its source.
    drifted = pa.table({"envelope__source_ref": ["s3://raw/k"], "payload__battery_pct": ["81"]})
    lake.store.put(bucket, f"{prefix}drifted.parquet", parquet(drifted))

    report = doctor(lake)
    schemas = report.check("schemas")
    assert schemas.verdict is Verdict.FAIL and schemas.evidence["files_unlike_table"] == 2
    by_file = {f["file"].rsplit("/", 1)[1]: f for f in schemas.evidence["sample"]}
    assert by_file["stranger.parquet"]["extra_columns"] == ["x"]
    assert "envelope__event_id" in by_file["stranger.parquet"]["missing_columns"]
    assert by_file["drifted.parquet"]["type_changes"] == {
        "payload__battery_pct": "string, not int32"
    }
    uri = f"s3://{bucket}/{prefix}"
    assert schemas.fixes == (
        f"sluice redrive --parquet-uri {uri}drifted.parquet",
        f"sluice delete --prefix {uri}stranger.parquet",
    )
    others_ok(report, "schemas")


def test_bad_queue_settings(tmp_path: Path) -> None:
    config = replace(default_config(tmp_path / "data"), dlq_retention_seconds=3600)
    env = build(open_env(config))

    report = doctor(env)
    settings = report.check("queue_settings")
    assert settings.verdict is Verdict.FAIL
    assert "processing-dlq keeps messages 60m, not longer than processing's 4d" in (
        settings.summary
    )
    assert "sluice.toml" in settings.summary  # the environment's own settings are the cause
    assert settings.fixes == ("sluice setup",)
    others_ok(report, "queue_settings")

    # A queue without a redrive policy never dead-letters anything.
    env.queues.create("processing", QueueSettings(30, 4 * 24 * 3600))
    settings = doctor(env).check("queue_settings")
    assert settings.verdict is Verdict.FAIL and "no redrive policy" in settings.summary
    assert settings.evidence["processing"]["redrive_policy"] is None

    # Embedded workers renew visibility with their lease, every third of it (10s): a visibility
    # under two renewal intervals only warns.
    short = replace(default_config(tmp_path / "short"), visibility_timeout_seconds=19)
    settings = doctor(open_env(short)).check("queue_settings")
    assert settings.verdict is Verdict.WARN
    assert "visibility timeout 19s is under 20s, 2 renewal intervals" in settings.summary
    assert "sluice.toml" in settings.summary and settings.fixes == ("sluice setup",)
    enough = replace(default_config(tmp_path / "enough"), visibility_timeout_seconds=20)
    assert doctor(open_env(enough)).check("queue_settings").verdict is Verdict.OK


def test_a_check_that_cannot_run_fails_alone(lake: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(table: str) -> None:
        raise BackendBusy("catalog is throttling", hint="retry in a minute")

    monkeypatch.setattr(lake.catalog, "list_partitions", busy)
    report = doctor(lake)
    broken = ("verified_partitions", "registry", "schemas")
    for name in broken:
        check = report.check(name)
        assert check.verdict is Verdict.FAIL
        assert check.evidence["error"] == "BackendBusy"
        assert check.evidence["hint"] == "retry in a minute"
    others_ok(report, *broken)


def test_cli_exit_code_and_json(lake: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_CONFIG", raising=False)
    monkeypatch.chdir(lake.config.data_dir)  # no sluice.toml here
    runner = CliRunner()
    args = ["--data-dir", str(lake.config.data_dir), "doctor"]

    healthy = runner.invoke(app, [*args, "--json"])
    assert healthy.exit_code == 0, healthy.output
    report = json.loads(healthy.stdout)
    assert set(report) == {"environment", "backend", "checked_at", "hours", "verdict", "checks"}
    assert report["verdict"] == "OK" and report["hours"] == 3
    first = report["checks"][0]
    assert set(first) == {"name", "title", "verdict", "summary", "evidence", "fixes", "see"}
    assert [c["name"] for c in report["checks"]] == [
        "raw_arriving",
        "processing_queue",
        "dlq",
        "ledger_failures",
        "stuck_claims",
        "verified_partitions",
        "registry",
        "schemas",
        "compaction",
        "queue_settings",
    ]

    lake.processing_dlq.send('{"kind": "process_raw_file"}', {"correlation_id": "c"})
    broken = runner.invoke(app, [*args, "--json"])
    assert broken.exit_code == 1
    dlq = next(c for c in json.loads(broken.stdout)["checks"] if c["name"] == "dlq")
    assert dlq["verdict"] == "FAIL" and dlq["fixes"] == ["sluice dlq redrive-all --max-messages 1"]

    text = runner.invoke(app, [*args, "-v"], env={"COLUMNS": "200"})
    assert text.exit_code == 1
    assert "sluice dlq redrive-all --max-messages 1" in text.stdout
    assert "depth: 1" in text.stdout  # -v shows the evidence


@pytest.mark.aws
def test_doctor_on_the_aws_backends(aws_env: Env) -> None:  # noqa: F811
    process_object(aws_env, ingest(aws_env, line(make_event(occurred_at=recently()))))

    report = doctor(aws_env)
    assert all("error" not in c.evidence for c in report.checks), report
    queue = report.check("processing_queue")
    assert queue.verdict is Verdict.OK and "not available" in queue.evidence["oldest_age"]
    assert report.check("schemas").evidence["files_read"] == 1  # a footer read over S3
    # The fixture's visibility (5s) is far under 6x the parser function's timeout.
    settings = report.check("queue_settings")
    assert settings.verdict is Verdict.FAIL
    assert settings.fixes == ("sluice --env moto setup",)
    others_ok(report, "queue_settings")


def test_an_environment_never_set_up(tmp_path: Path) -> None:
    report = doctor(open_env(default_config(tmp_path / "data"), setup=False))
    for name in ("processing_queue", "dlq", "queue_settings"):
        check = report.check(name)
        assert check.verdict is Verdict.FAIL and check.evidence["error"] == "QueueNotFound"
        assert check.fixes == ("sluice setup",)
    schemas = report.check("schemas")
    assert schemas.verdict is Verdict.FAIL and "not in the catalog" in schemas.summary
    assert schemas.fixes == ("sluice setup",)
