"""The bulk-redrive runbook as one command (`--wait`), end to end; runs that do not go well;
and `sluice redrive` on the command line.

(a) process a generated lake, change the parser version, then `redrive --source-ref-day …
--wait`: every row of the day is rebuilt with the new version, counts are equal, there is no
pipeline duplicate anywhere, and a reader polling the day meanwhile never sees fewer rows.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sluice.backends.queue.base import OutgoingMessage, SendBatchResult
from sluice.cli.app import app, main
from sluice.env import Env, open_env
from sluice.errors import SluiceError
from sluice.layout import table_name
from sluice.ops.redrive import RedriveRequest, SourcesPending, Target, redrive
from sluice.query import run_query
from tests.conftest import put_raw
from tests.e2e.conftest import run_pipeline, snapshot, verified_files
from tests.ops.test_redrive import (
    DAY,
    FAST,
    FailingQueue,
    background_worker,
    build_lake,
    day_request,
    drain,
)

NEW_VERSION = "2.0.0-test"


def day_rows(env: Env, type_: str, day: str) -> int:
    sql = f"SELECT count(*) AS n FROM {table_name(type_)} WHERE day = '{day}'"
    return int(run_query(env, sql).to_pylist()[0]["n"])


def test_the_runbook_in_one_command_rebuilds_a_day_without_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_pipeline(tmp_path, events=800, days=2, bad_fraction=0.02, seed=5)
    env = run.env
    counts = Counter(
        key.split("/")[2] for key in verified_files(run.config) if "/type=lock/" in key
    )
    day = counts.most_common(1)[0][0].removeprefix("day=")
    before = snapshot(run.config)
    rows_before = day_rows(env, "lock", day)
    assert rows_before > 0 and not before.duplicates()

    for module in ("sluice.process.schemas", "sluice.process.outputs", "sluice.process.columnar"):
        monkeypatch.setattr(f"{module}.PARSER_VERSION", NEW_VERSION)

    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        reader_env = open_env(run.config)
        while not stop.is_set():
            try:
                seen.append(day_rows(reader_env, "lock", day))
            except SluiceError as exc:
                errors.append(exc.message)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with background_worker(run.config):
            result = redrive(
                env,
                RedriveRequest(Target.of(source_ref_day=day, type_="lock"), wait=True, follow=FAST),
            )
    finally:
        stop.set()
        thread.join()

    assert result.follow is not None and result.follow.complete, result.follow
    assert result.finish is not None and not result.failed, result.finish
    assert day in result.follow.touched
    assert not errors, errors[:3]
    assert len(seen) >= 3 and min(seen) >= rows_before
    after = snapshot(run.config)
    assert not after.duplicates()
    assert after.identities == before.identities
    assert after.files.keys() == before.files.keys()
    assert day_rows(env, "lock", day) == rows_before
    for key, path in verified_files(run.config).items():
        if f"/type=lock/day={day}/" in key:
            versions = set(pq.read_table(path).column("envelope__parser_version").to_pylist())
            assert versions == {NEW_VERSION}, key


def test_finish_before_the_sources_are_reprocessed_is_refused(env: Env) -> None:
    build_lake(env, sources=2)
    run_id = redrive(env, RedriveRequest(Target.of(source_ref_day=DAY, type_="lock"))).run_id
    assert run_id is not None
    with pytest.raises(SourcesPending) as caught:
        redrive(env, RedriveRequest(resume=run_id, finish=True))
    assert caught.value.hint == f"sluice redrive --resume {run_id} --wait"
    drain(env)
    done = redrive(env, RedriveRequest(resume=run_id, finish=True))
    assert done.follow is not None and done.follow.done == 2 and done.finish is not None
    assert done.sending.already_sent == 2 and done.sending.sent == 0


# -- following a run that does not go well ----------------------------------------------------


def test_a_source_that_fails_terminally_is_reported_and_the_run_fails(env: Env) -> None:
    corrupt = put_raw(env, [], raw=b"this is not gzip")
    events: list[Any] = []
    with background_worker(env.config):
        result = redrive(
            env,
            RedriveRequest(Target.of(s3_uri=str(corrupt)), wait=True, follow=FAST),
            on_event=events.append,
        )
    assert result.failed and result.follow is not None
    assert result.follow.failed_count == 1 and str(corrupt) in result.follow.failed[0]
    assert [e.source for e in events if e.kind == "failed"] == [str(corrupt)]


class DroppingQueue(FailingQueue):
    """Accepts every message and loses it (a purge by someone else, a misrouted send)."""

    def send_batch(self, entries: list[OutgoingMessage]) -> SendBatchResult:
        return SendBatchResult(sent={e.entry_id: "lost" for e in entries})


def test_sources_whose_messages_vanish_fail_once_the_queue_settles(env: Env) -> None:
    build_lake(env, sources=2)
    env.__dict__["processing_queue"] = DroppingQueue(env.processing_queue, fail_on=0)
    settle = replace(FAST, settle_seconds=0.3)
    result = redrive(env, day_request(wait=True, follow=settle))
    assert result.follow is not None and result.follow.failed_count == 2
    assert all("the processing queue is empty" in f for f in result.follow.failed)
    assert result.failed


def test_a_wait_that_times_out_leaves_the_run_to_resume(env: Env) -> None:
    build_lake(env, sources=1)
    result = redrive(env, day_request(wait=True, follow=replace(FAST, timeout_seconds=0.2)))
    assert result.follow is not None and result.follow.timed_out and result.follow.pending == 1
    assert result.finish is None and result.failed
    drain(env)
    assert result.run_id is not None
    resumed = redrive(env, RedriveRequest(resume=result.run_id, wait=True, follow=FAST))
    assert resumed.follow is not None and resumed.follow.complete and not resumed.failed


# -- the command line --------------------------------------------------------------------------


def cli(data_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "redrive", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_the_command_line_runs_resumes_and_finishes_a_redrive(env: Env) -> None:
    data = env.config.data_dir
    uris = build_lake(env, sources=2)
    dry = cli(data, "--source-ref-day", DAY, "--type", "lock", "--dry-run")
    assert dry.exit_code == 0 and "dry run: nothing changed" in dry.stdout
    assert all(str(u) in dry.stdout for u in uris)

    sent = cli(data, "--s3-uri", str(uris[0]), "--json")
    assert sent.exit_code == 0, sent.output
    body = json.loads(sent.stdout)
    assert body["sources"] == 1 and body["sending"]["sent"] == 1 and body["follow"] is None
    drain(env)
    finished = cli(data, "--resume", body["run_id"], "--finish", "--json")
    assert finished.exit_code == 0, finished.output
    end = json.loads(finished.stdout)
    assert end["resumed"] and end["follow"]["done"] == 1
    assert end["finish"]["verify"] and end["finish"]["verify_failed"] is False

    shown = cli(data, "--s3-prefix", f"s3://{env.config.buckets.raw}/raw/", "--monitor")
    assert shown.exit_code == 0 and "messages sent" in shown.stdout
    assert "next: sluice redrive --resume" in shown.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--s3-uri", "s3://raw/a.gz", "--s3-prefix", "s3://raw/"], "more than one mode"),
        ([], "no mode given"),
        (["--source-ref-day", "2025-02-30", "--type", "lock"], "YYYY-MM-DD"),
        (["--source-ref-day", DAY, "--type", "lock", "--limit", "-3"], "--limit"),
        (["--source-ref-day", DAY, "--type", "lock", "--rate", "-1"], "--rate"),
        (["--resume", "20990101T000000Z-000000"], "no redrive run"),
    ],
)
def test_bad_command_lines_exit_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--data-dir", str(tmp_path / "data"), "redrive", *args])
    assert caught.value.code == 1
    assert words in capsys.readouterr().err
