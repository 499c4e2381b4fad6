"""`sluice queue status|wait` and the duration parser, on the embedded queue and on SQS (moto)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from sluice.backends.queue.base import QueueSettings, RedrivePolicy
from sluice.cli.app import main
from sluice.config import QueueNames
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.messages import process_raw_file
from sluice.ops.queues import (
    DrainTimeout,
    WaitProgress,
    format_duration,
    parse_duration,
    queue_status,
    wait_until_drained,
)
from sluice.process.worker import run_worker
from tests.aws.conftest import aws_config, aws_env  # noqa: F401  (fixtures)
from tests.conftest import line, make_event, put_raw

FAST = {"poll": timedelta(seconds=0.05)}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    # Rich wraps long lines at the terminal's width; compare words, not line breaks.
    return int(exited.value.code or 0), out, " ".join(err.split())


def send(env: Env, count: int) -> None:
    for i in range(count):
        uri = put_raw(env, [line(make_event(f"e-{i}"))])
        message = process_raw_file(uri)
        env.processing_queue.send(message.body, message.attributes)


def by_name(env: Env) -> dict[str, object]:
    return {q.name: q for q in queue_status(env)}


# Durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 30 * 86400),
        ("1h30m", 5400),
        ("2w", 14 * 86400),
        ("0.5s", 0.5),
        (" 5M ", 300),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "-5m", "5 minutes", "m", "1y", "1h-5m", "5mm"])
def test_bad_durations_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_duration(text, what="--older-than")
    assert "--older-than" in error.value.message and "90s" in (error.value.hint or "")


def test_format_duration_reads_back() -> None:
    assert [format_duration(s) for s in (0, 0.3, 45, 90, 3600, 5400, 30 * 86400 + 7200)] == [
        "0s",
        "0.3s",
        "45s",
        "1m30s",
        "1h",
        "1h30m",
        "30d2h",
    ]
    assert parse_duration(format_duration(5400)) == timedelta(seconds=5400)


# Status --------------------------------------------------------------------------------------


def test_status_counts_match_what_was_sent_and_received(env: Env) -> None:
    send(env, 3)
    (taken,) = env.processing_queue.receive(1, visibility_timeout=60)
    env.processing_dlq.send(taken.body, taken.attributes)
    statuses = queue_status(env)
    assert [(q.role, q.name) for q in statuses] == [
        ("processing", "processing"),
        ("processing_dlq", "processing-dlq"),
    ]
    work, dlq = statuses
    assert (work.visible, work.in_flight, work.delayed) == (2, 1, 0)
    assert work.oldest_age_seconds is not None and 0 <= work.oldest_age_seconds < 30
    assert (work.dead_letter_queue, work.max_receive_count, work.dlq_depth) == (
        "processing-dlq",
        env.config.max_receive_count,
        1,
    )
    assert not work.is_dead_letter_queue
    assert (dlq.visible, dlq.in_flight, dlq.dlq_depth, dlq.dead_letter_for) == (
        1,
        0,
        None,
        ("processing",),
    )
    assert dlq.is_dead_letter_queue
    assert (work.retention_seconds, dlq.retention_seconds) == (
        env.config.retention_seconds,
        env.config.dlq_retention_seconds,
    )


def test_a_dlq_only_a_redrive_policy_names_is_reported_too(env: Env) -> None:
    cfg = env.config
    env.queues.create("overflow-dlq", QueueSettings(30, 3600))
    env.queues.create(
        cfg.queues.processing,
        QueueSettings(2, cfg.retention_seconds, RedrivePolicy("overflow-dlq", 3)),
    )
    names = [(q.role, q.name, q.dead_letter_for) for q in queue_status(env)]
    assert names[-1] == ("dlq", "overflow-dlq", ("processing",))


def test_status_command_as_table_and_json(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    send(env, 2)
    data = str(env.config.data_dir)
    code, out, _ = cli(capsys, "--data-dir", data, "queue", "status", "--json")
    assert code == 0
    assert [(q["name"], q["visible"], q["in_flight"]) for q in json.loads(out)] == [
        ("processing", 2, 0),
        ("processing-dlq", 0, 0),
    ]
    code, out, _ = cli(capsys, "--data-dir", data, "queue", "status")
    assert code == 0 and "DLQ of" in out and "receives" in out


# Waiting -------------------------------------------------------------------------------------


def test_wait_returns_once_drained_and_stable(env: Env) -> None:
    send(env, 3)
    seen: list[WaitProgress] = []
    worker = threading.Thread(target=run_worker, args=(env,), kwargs={"until_idle": True})
    started = time.monotonic()
    worker.start()
    try:
        result = wait_until_drained(
            env,
            stable_for=timedelta(seconds=0.5),
            timeout=timedelta(seconds=30),
            on_progress=seen.append,
            **FAST,
        )
    finally:
        worker.join()
    assert time.monotonic() - started >= 0.5
    assert seen[0].pending > 0, "the wait began while the worker still had work"
    assert seen[-1].pending == 0 and seen[-1].idle_for_seconds >= 0.5
    assert result.waited_seconds >= 0.5 and result.dead_letters == {"processing-dlq": 0}
    assert [r.status.value for r in env.ledger.list()] == ["completed"] * 3


def test_wait_reports_what_the_dlq_holds(env: Env) -> None:
    put_raw(env, [], raw=b"not gzip at all")  # noise in the store, never sent
    corrupt = put_raw(env, [], raw=b"\x1f\x8b\x08\x00garbage")
    env.processing_queue.send(process_raw_file(corrupt).body)
    run_worker(env, until_idle=True)
    result = wait_until_drained(env, stable_for=timedelta(0), **FAST)
    assert result.dead_letters == {"processing-dlq": 1} and result.dead_lettered == 1
    assert result.polls == 1


def test_wait_times_out_while_a_message_is_in_flight(env: Env) -> None:
    send(env, 1)
    env.processing_queue.receive(1, visibility_timeout=60)  # a worker holds it
    started = time.monotonic()
    with pytest.raises(DrainTimeout) as error:
        wait_until_drained(env, stable_for=timedelta(0), timeout=timedelta(seconds=0.5), **FAST)
    assert 0.5 <= time.monotonic() - started < 3
    assert "1 in flight" in error.value.message and "queue status" in (error.value.hint or "")
    assert error.value.context["queues"]["processing"] == {
        "visible": 0,
        "in_flight": 1,
        "delayed": 0,
    }


def test_wait_command_exits_non_zero_at_its_timeout(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    send(env, 1)
    env.processing_queue.receive(1, visibility_timeout=60)
    data = str(env.config.data_dir)
    args = (
        "--data-dir",
        data,
        "queue",
        "wait",
        "--stable-for",
        "0s",
        "--timeout",
        "0.3s",
        "--poll",
        "0.1s",
    )
    code, _, err = cli(capsys, *args)
    assert code == 1 and "not drained after 0.3s" in err and "1 in flight" in err
    assert "next: sluice queue status" in err
    code, out, _ = cli(capsys, *args, "--json")
    assert code == 1 and json.loads(out)["error"] == "DrainTimeout"


def test_wait_command_when_drained(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(env.config.data_dir)
    code, out, _ = cli(
        capsys, "--data-dir", data, "queue", "wait", "--stable-for", "0.2s", "--poll", "0.1s"
    )
    assert code == 0 and "drained" in out and "processing-dlq is empty" in out
    code, out, _ = cli(capsys, "--data-dir", data, "--json", "queue", "wait", "--stable-for", "0s")
    assert code == 0 and json.loads(out)["dead_letters"] == {"processing-dlq": 0}


@pytest.mark.parametrize(
    "flags", [("--stable-for", "1 minute"), ("--timeout", "30"), ("--poll", "0s")]
)
def test_wait_command_refuses_bad_durations(
    env: Env, capsys: pytest.CaptureFixture[str], flags: tuple[str, str]
) -> None:
    code, _, err = cli(capsys, "--data-dir", str(env.config.data_dir), "queue", "wait", *flags)
    assert code == 1 and flags[0] in err


# On SQS (moto) -------------------------------------------------------------------------------


@pytest.mark.aws
def test_status_and_wait_on_sqs(aws_env: Env) -> None:  # noqa: F811
    queue = aws_env.processing_queue
    for i in range(3):
        queue.send(json.dumps({"n": i}))
    (held,) = queue.receive(1, visibility_timeout=60, wait_seconds=1)
    aws_env.processing_dlq.send("dead")
    work, dlq = queue_status(aws_env)
    assert (work.name, work.visible, work.in_flight, work.dlq_depth) == (queue.name, 2, 1, 1)
    assert work.oldest_age_seconds is None, "SQS cannot tell"
    assert (work.dead_letter_queue, work.max_receive_count) == (aws_env.processing_dlq.name, 3)
    assert (dlq.visible, dlq.dead_letter_for) == (1, (queue.name,))
    urls = QueueNames(queue.url, aws_env.processing_dlq.url)  # type: ignore[attr-defined]
    by_url = replace(aws_env, config=replace(aws_env.config, queues=urls))
    assert queue_status(by_url) == [work, dlq], "sluice.toml may name queues by URL"

    with pytest.raises(DrainTimeout) as error:
        wait_until_drained(
            aws_env,
            stable_for=timedelta(0),
            timeout=timedelta(seconds=0.3),
            poll=timedelta(seconds=0.1),
        )
    assert "2 visible, 1 in flight" in error.value.message
    queue.delete(held.receipt_handle)
    while messages := queue.receive(10, wait_seconds=1):
        for message in messages:
            queue.delete(message.receipt_handle)
    result = wait_until_drained(
        aws_env, stable_for=timedelta(seconds=0.3), poll=timedelta(seconds=0.1)
    )
    assert result.dead_letters == {aws_env.processing_dlq.name: 1}
