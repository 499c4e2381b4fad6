"""`sluice ledger …` on the embedded backend with the real pipeline (and reset-stuck on AWS)."""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sluice.backends.ledger.base import SourceRef
from sluice.backends.ledger.sqlite import SqliteLedger
from sluice.cli.app import main
from sluice.env import Env
from sluice.errors import ConfigError, CorruptObject
from sluice.layout import ObjectUri
from sluice.messages import parse_body
from sluice.ops.ledger import cleanup, ledger_stats, list_records, reset_stuck, retry_failed
from sluice.process.processor import process_object
from sluice.process.worker import run_worker
from tests.aws.conftest import aws_config, aws_env  # noqa: F401  (fixtures)
from tests.conftest import line, make_event, put_raw

CORRUPT = b"\x1f\x8b\x08\x00garbage"
NOW = timedelta(0)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    # Rich wraps long lines at the terminal's width; compare words, not line breaks.
    return int(exited.value.code or 0), out, " ".join(err.split())


def processed(env: Env, *raws: bytes | None) -> list[ObjectUri]:
    """Store one raw object per entry (a good event, or exactly these bytes) and process each
    as the worker does (a corrupt one fails, its reason in the ledger)."""
    uris = [put_raw(env, [line(make_event(f"e-{i}"))], raw=raw) for i, raw in enumerate(raws)]
    for uri in uris:
        with contextlib.suppress(CorruptObject):
            process_object(env, uri)
    return uris


def in_the_past(env: Env, days: float) -> Env:
    """The same environment, its ledger's clock `days` behind (records written through it are
    that old)."""
    path = env.config.data_dir / "ledger.sqlite"
    ledger = SqliteLedger(path, clock=lambda: datetime.now(UTC) - timedelta(days=days))
    return replace(env, ledger=ledger)


def stuck_claim(env: Env, uri: ObjectUri, lease: float = 0.2) -> None:
    """A worker claimed the object and died: its lease runs out `lease` seconds from now."""
    etag = env.store.head(uri.bucket, uri.key).etag
    assert env.ledger.claim(SourceRef(uri.bucket, uri.key, etag), "dead", lease).claim


def statuses(env: Env) -> dict[str, str]:
    return {r.key: r.status.value for r in env.ledger.list()}


def queued(env: Env) -> list[str]:
    """The bodies waiting in the processing queue (received and released at once)."""
    messages = env.processing_queue.receive(10, visibility_timeout=0)
    return [m.body for m in messages]


# Looking -------------------------------------------------------------------------------------


def test_stats_and_list_filter_by_status_age_and_limit(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    old = in_the_past(env, 2)
    first, _ = processed(old, None, None)
    good, bad = processed(env, None, CORRUPT)
    live = put_raw(env, [line(make_event("e-live"))])
    stuck_claim(env, live, lease=0.01)
    time.sleep(0.02)

    stats = ledger_stats(env)
    assert stats.total == 5 and stats.stuck == 1
    assert stats.by_status == {"pending": 0, "processing": 1, "completed": 3, "failed": 1}
    today = datetime.now(UTC).date()
    assert stats.by_day == {
        (today - timedelta(days=2)).isoformat(): {"completed": 2},
        today.isoformat(): {"completed": 1, "failed": 1, "processing": 1},
    }
    assert stats.oldest_update is not None and stats.oldest_update.date() < today

    assert [r.key for r in list_records(env, status="failed").records] == [bad.key]
    failed = list_records(env, status="failed").records[0]
    assert failed.error_class == "CorruptObject" and failed.attempts == 1
    assert [r.key for r in list_records(env, status="stuck").records] == [live.key]
    older = list_records(env, status="completed", older_than=timedelta(days=1))
    assert len(older.records) == 2 and not older.more
    first_only = list_records(env, status="completed", limit=1)
    assert [r.key for r in first_only.records] == [first.key] and first_only.more
    assert len(list_records(env).records) == 5

    data = str(env.config.data_dir)
    code, out, _ = cli(capsys, "--data-dir", data, "ledger", "list", "--status", "FAILED", "--json")
    (record,) = json.loads(out)["records"]
    assert code == 0 and record["key"] == bad.key and record["error_class"] == "CorruptObject"
    code, out, _ = cli(capsys, "--data-dir", data, "ledger", "list", "--status", "failed")
    assert code == 0 and "CorruptObject" in out
    code, out, _ = cli(capsys, "--data-dir", data, "--json", "ledger", "stats")
    assert code == 0 and json.loads(out)["by_status"]["completed"] == 3
    code, out, _ = cli(capsys, "--data-dir", data, "ledger", "stats")
    assert code == 0 and "stuck" in out and good.key not in out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("list", "--status", "done"), "unknown status"),
        (("list", "--limit", "-1"), "--limit must be at least 1"),
        (("list", "--limit", "0"), "--limit must be at least 1"),
        (("list", "--older-than", "30"), "not a duration"),
        (("reset-stuck", "--older-than", "soon"), "not a duration"),
        (("retry-failed", "--older-than", "-1h"), "not a duration"),
        (("cleanup", "--older-than", "1 month"), "not a duration"),
    ],
)
def test_bad_inputs_fail_with_a_hint(
    env: Env, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], said: str
) -> None:
    code, _, err = cli(capsys, "--data-dir", str(env.config.data_dir), "ledger", *args)
    assert code == 1 and said in err and "next:" in err


def test_library_refuses_negative_ages(env: Env) -> None:
    for call in (
        lambda: list_records(env, older_than=timedelta(seconds=-1)),
        lambda: reset_stuck(env, older_than=timedelta(seconds=-1)),
        lambda: retry_failed(env, older_than=timedelta(seconds=-1)),
        lambda: cleanup(env, older_than=timedelta(seconds=-1)),
    ):
        with pytest.raises(ConfigError):
            call()


# reset-stuck ---------------------------------------------------------------------------------


def test_reset_stuck_releases_only_expired_leases_and_the_worker_completes_them(
    env: Env,
) -> None:
    dead, alive, orphan = (put_raw(env, [line(make_event(f"e-{i}"))]) for i in range(3))
    stuck_claim(env, dead, lease=0.1)
    stuck_claim(env, alive, lease=60)
    # A reset whose run was interrupted before it sent the message: pending, no message.
    stuck_claim(env, orphan, lease=60)
    env.ledger.reset(orphan.bucket, orphan.key)
    assert reset_stuck(env).planned == 0, "nothing changed 15 minutes ago"
    time.sleep(0.15)

    plan = reset_stuck(env, older_than=NOW, dry_run=True)
    assert (plan.dry_run, plan.planned, plan.done) == (True, 2, 0)
    assert set(plan.sample) == {str(dead), str(orphan)} and str(dead) in plan.plan
    before = {dead.key: "processing", alive.key: "processing", orphan.key: "pending"}
    assert statuses(env) == before and not queued(env)

    result = reset_stuck(env, older_than=NOW)
    assert (result.planned, result.done, result.messages_sent, result.ok) == (2, 2, 2, True)
    assert statuses(env) == {**before, dead.key: "pending"}
    requests = [r for body in queued(env) for r in parse_body(body)]
    assert sorted(r.uri for r in requests) == sorted([dead, orphan])
    assert not any(r.forced for r in requests)

    assert run_worker(env, until_idle=True).completed == 2
    assert statuses(env) == {
        dead.key: "completed",
        alive.key: "processing",
        orphan.key: "completed",
    }
    alive_record = env.ledger.get(alive.bucket, alive.key)
    assert alive_record is not None and alive_record.owner == "dead", "a live lease is kept"
    assert reset_stuck(env, older_than=NOW).planned == 0, "safe to repeat"


# retry-failed --------------------------------------------------------------------------------


def test_retry_failed_reenqueues_fixed_objects_and_they_complete(env: Env) -> None:
    uris = processed(env, *[CORRUPT] * 11)
    assert set(statuses(env).values()) == {"failed"}
    assert retry_failed(env).planned == 0, "failed less than an hour ago"
    for i, uri in enumerate(uris[:-1]):  # the operator fixes all but one
        env.store.put(uri.bucket, uri.key, gzip.compress(line(make_event(f"e-{i}")) + b"\n"))

    plan = retry_failed(env, older_than=NOW, dry_run=True)
    assert (plan.planned, len(plan.sample), plan.messages_sent) == (11, 10, 0)
    assert "and 1 more" in plan.plan and not queued(env)

    result = retry_failed(env, older_than=NOW)
    assert (result.planned, result.messages_sent, result.ok) == (11, 11, True)
    assert result.redrive_id is not None and result.queue == "processing"
    requests = [r for body in queued(env) for r in parse_body(body)]
    assert {r.redrive_id for r in requests} == {result.redrive_id}
    assert all(r.forced for r in requests)

    stats = run_worker(env, until_idle=True)
    assert (stats.completed, stats.dead_lettered) == (10, 1)
    final = statuses(env)
    assert [final[u.key] for u in uris] == ["completed"] * 10 + ["failed"]
    assert env.processing_dlq.counts().visible == 1, "the unfixed one fails again"


# cleanup -------------------------------------------------------------------------------------


def test_cleanup_forgets_only_completed_records_older_than_the_age(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    old = in_the_past(env, 40)
    old_done = processed(old, None, None)
    (old_failed,) = processed(old, CORRUPT)
    (recent,) = processed(in_the_past(env, 20), None)
    before = statuses(env)

    with pytest.raises(ConfigError) as error:
        cleanup(env, older_than=timedelta(days=3))
    assert "retention" in error.value.message and "14d" in error.value.message
    with pytest.raises(ConfigError):
        cleanup(env, older_than=timedelta(days=13))  # the DLQ keeps messages 14 days
    data = str(env.config.data_dir)
    code, _, err = cli(capsys, "--data-dir", data, "ledger", "cleanup", "--older-than", "1d")
    assert code == 1 and "--older-than 14d" in err and statuses(env) == before

    plan = cleanup(env, older_than=timedelta(days=30), dry_run=True)
    assert (plan.planned, plan.done) == (2, 0) and statuses(env) == before

    code, out, _ = cli(
        capsys, "--data-dir", data, "--json", "ledger", "cleanup", "--older-than", "30d"
    )
    result = json.loads(out)
    assert code == 0 and (result["planned"], result["done"], result["skipped"]) == (2, 2, 0)
    assert statuses(env) == {old_failed.key: "failed", recent.key: "completed"}
    assert all(env.ledger.get(u.bucket, u.key) is None for u in old_done)
    assert cleanup(env, older_than=timedelta(days=14)).done == 1, "the 20-day-old one"


def test_cleanup_help_explains_the_retention_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "ledger", "cleanup", "--help")
    text = " ".join(out.split())
    assert code == 0 and "retention" in text and "as a new input" in text


# On AWS (moto) -------------------------------------------------------------------------------


@pytest.mark.aws
def test_reset_stuck_on_aws(aws_env: Env) -> None:  # noqa: F811
    dead, alive = (put_raw(aws_env, [line(make_event(f"e-{i}"))]) for i in range(2))
    stuck_claim(aws_env, dead, lease=0.1)
    stuck_claim(aws_env, alive, lease=60)
    time.sleep(0.15)
    result = reset_stuck(aws_env, older_than=NOW)
    assert (result.planned, result.done, result.messages_sent) == (1, 1, 1)
    assert statuses(aws_env) == {dead.key: "pending", alive.key: "processing"}
    assert run_worker(aws_env, until_idle=True).completed == 1
    assert statuses(aws_env) == {dead.key: "completed", alive.key: "processing"}
