"""Crashes and stops (DESIGN promises 5 and 6): a worker killed at random moments, restarted each
time, ends in exactly the state of a run without crashes; a worker asked to stop (SIGTERM)
finishes what it holds, exits 0 and leaves nothing half-done.

The workers are real `sluice worker` processes (the CLI entry point), in their own session so
that a SIGKILL reaches the worker processes they spawn too. A `sluice.toml` shortens the
visibility timeout and the lease, so messages and claims of a killed worker come back in seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sluice.backends.ledger.base import FileStatus
from sluice.config import EnvConfig, load_config
from sluice.env import open_env
from sluice.layout import parse_uri
from sluice.process.worker import run_worker, run_workers
from tests.e2e.conftest import (
    SHORT_SECONDS,
    SLUICE,
    Run,
    assert_same_state,
    bucket_dir,
    cli_env,
    enqueue_objects,
    quarantine_files,
    raw_lines,
    read_quarantine,
    run_pipeline,
    short_config,
    snapshot,
    source_hash,
    temp_leftovers,
    uri_path,
    verified_files,
)

pytestmark = pytest.mark.e2e

MIN_KILLS = 5
MAX_KILLS = 10


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(
        "[env.local]\n"
        f"visibility_timeout_seconds = {SHORT_SECONDS}\n"
        f"lease_seconds = {SHORT_SECONDS}\n"
    )
    return path


def prepared(tmp_path: Path, *, events: int, max_object_bytes: int) -> tuple[Path, Run]:
    """Raw objects ingested and announced, nothing processed yet."""
    toml = write_config(tmp_path)
    config = load_config(config_file=toml, data_dir=tmp_path / "data")
    assert (config.visibility_timeout_seconds, config.lease_seconds) == (SHORT_SECONDS,) * 2
    run = run_pipeline(
        tmp_path,
        events=events,
        days=1,
        seed=4242,
        max_object_bytes=max_object_bytes,
        process=False,
        config=config,
    )
    return toml, run


def worker_command(toml: Path, config: EnvConfig, *args: str) -> list[str]:
    return [SLUICE, "--config", str(toml), "--data-dir", str(config.data_dir), *args]


def reference_state(tmp_path: Path, run: Run) -> EnvConfig:
    """The same raw objects (same bucket and keys) processed once, without crashes."""
    config = short_config(tmp_path / "reference")
    raw = run.config.buckets.raw
    shutil.copytree(bucket_dir(run.config, raw), bucket_dir(config, raw))
    env = open_env(config)
    enqueue_objects(env, run.ingested.objects)
    stats = run_worker(env, until_idle=True)
    assert stats.completed == len(run.ingested.objects), stats
    return config


def statuses(run: Run) -> Counter[str]:
    return Counter(r.status.value for r in run.env.ledger.list())


def wait_for_work(run: Run, since: datetime, proc: subprocess.Popen[bytes]) -> bool:
    """Wait until a claim or completion newer than `since` shows in the ledger."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r.updated_at > since for r in run.env.ledger.list()):
            return True
        time.sleep(0.01)
    return False


@dataclass
class Kill:
    after_seconds: float  # after the worker began to work
    processes: int
    statuses: Counter[str]  # of the ledger's records, right after the kill
    interrupted: int  # objects this worker had claimed and not completed


@pytest.mark.slow
def test_workers_killed_at_random_moments_lose_and_double_nothing(tmp_path: Path) -> None:
    toml, run = prepared(tmp_path, events=9_000, max_object_bytes=160 * 1024)
    objects = run.ingested.objects
    assert 20 <= len(objects) <= 40, len(objects)
    reference = snapshot(reference_state(tmp_path, run))
    assert reference.rows == sum(run.generated.rows.values()) and not reference.duplicates()

    rng = random.Random(20251124)
    kills: list[Kill] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    while len(kills) < MAX_KILLS:
        processes = 1 + len(kills) % 2
        started = datetime.now(UTC)
        log = (logs / f"worker-{len(kills)}.log").open("wb")
        proc = subprocess.Popen(
            worker_command(toml, run.config, "worker", "--processes", str(processes)),
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # A random moment once this worker has begun to work (its start-up takes about as long
        # as its work: a kill during start-up would prove little).
        after = rng.uniform(0.0, 0.5)
        try:
            assert wait_for_work(run, started, proc), "the worker never started to work"
            time.sleep(after)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and every process it spawned
            proc.wait(timeout=30)
            log.close()
        interrupted = sum(
            1 for r in run.env.ledger.list(status=FileStatus.PROCESSING) if r.updated_at > started
        )
        kills.append(Kill(after, processes, statuses(run), interrupted))
        done = kills[-1].statuses["completed"] == len(objects)
        mid_object = sum(1 for k in kills if k.interrupted)
        if done or (len(kills) >= MIN_KILLS and mid_object >= 2):
            break

    # The kills happened during work, and some of them in the middle of an object.
    assert sum(1 for k in kills if k.statuses["completed"] < len(objects)) >= MIN_KILLS, kills
    assert sum(1 for k in kills if k.interrupted) >= 2, kills

    final = subprocess.run(
        worker_command(toml, run.config, "--json", "worker", "--until-idle"),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    stats = json.loads(final.stdout)
    assert stats["dead_lettered"] == 0, stats

    assert_same_state(reference, snapshot(run.config))
    records = {r.uri: r for r in run.env.ledger.list()}
    assert set(records) == set(objects)
    for uri, record in records.items():
        assert record.status is FileStatus.COMPLETED, (uri, record.status, record.last_error)
        assert not record.pending_outputs, uri
        assert record.lease_expires_at is None, uri
    assert list(run.env.ledger.list(status=FileStatus.PROCESSING)) == []
    for queue in (run.env.processing_queue, run.env.processing_dlq):
        counts = queue.counts()
        assert (counts.visible, counts.in_flight) == (0, 0), queue.name
    # Leftovers of killed writes are not objects: no listing or query can see them.
    for leftover in temp_leftovers(run.config):
        assert leftover.name.startswith(".sluice-tmp-"), leftover


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_finishes_the_object_in_hand_and_exits_zero(tmp_path: Path, processes: int) -> None:
    toml, run = prepared(tmp_path, events=1_000, max_object_bytes=32 * 1024)
    objects = run.ingested.objects
    proc = subprocess.Popen(
        worker_command(toml, run.config, "--json", "worker", "--processes", str(processes)),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not statuses(run) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert statuses(run), "the worker never started"
        time.sleep(0.1)  # into the middle of the work
        at_signal = statuses(run)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 0, err
    # Soon: the object in hand, at most one more received while the signal arrived, and the
    # end of a long poll.
    assert took < 12, took
    stats = json.loads(out)
    records = list(run.env.ledger.list())
    assert {r.status for r in records} == {FileStatus.COMPLETED}, Counter(r.status for r in records)
    completed = {r.uri for r in records}
    assert stats["completed"] == len(completed)
    assert 0 < len(completed) < len(objects), "SIGTERM arrived in the middle of the work"
    assert len(completed) - at_signal["completed"] <= 2 * processes, (at_signal, len(completed))

    # Nothing half-done: each completed object has all its outputs, the others none at all,
    # and their messages wait in the queue (none is left in flight).
    files = {**verified_files(run.config), **quarantine_files(run.config)}
    for uri in objects:
        own = {k: p for k, p in files.items() if source_hash(uri) in k.rsplit("/", 1)[1]}
        ref = parse_uri(uri)
        record = run.env.ledger.get(ref.bucket, ref.key)
        if uri not in completed:
            assert not own, (uri, sorted(own))
            continue
        assert record is not None and record.counts is not None
        assert {o.key for o in record.outputs} == set(own), uri
        assert record.counts.lines == len(raw_lines(uri_path(run.config, uri)))
        rows = quarantined = 0
        for key, path in own.items():
            if key.endswith(".parquet"):
                rows += pq.read_metadata(path).num_rows
            else:
                quarantined += len(read_quarantine(path))
        assert (rows, quarantined) == (record.counts.rows, record.counts.quarantined_lines), uri
    counts = run.env.processing_queue.counts()
    assert (counts.visible, counts.in_flight) == (len(objects) - len(completed), 0)

    # And the rest goes through as if nothing had happened.
    rest = run_worker(run.env, until_idle=True)
    assert rest.completed == len(objects) - len(completed)
    state = snapshot(run.config)
    assert state.rows == sum(run.generated.rows.values()) and not state.duplicates()


def test_run_workers_gives_back_the_signal_handlers_it_took(tmp_path: Path) -> None:
    """A library call that returns must not leave the caller's SIGINT/SIGTERM handlers replaced
    (after `run_workers` returns, Ctrl-C no longer interrupts an embedding program). The same
    holds with several processes (`forward` stays installed); one process is the cheap check."""
    config = short_config(tmp_path / "data")
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_workers(config, 1, until_idle=True)
        after = {sig: signal.getsignal(sig) for sig in before}
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert after == before
