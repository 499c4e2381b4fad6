"""Replaying is safe (DESIGN promises 2 and 6): processing a raw object again — forced, by a
redrive message, ten redrives at once, the same redrive twice — leaves the verified and quarantine
state exactly as it was; a changed raw object replaces its old outputs.

Every test starts from its own processed data directory and compares full snapshots of the lake
read back from the files (keys, row counts, row contents, row identities, quarantine contents).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import signal
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pyarrow.parquet as pq
import pytest

from sluice.env import open_env
from sluice.layout import TYPES, parse_uri, table_name
from sluice.messages import process_raw_file, redrive_raw_file
from sluice.process.processor import ProcessOutcome, ProcessResult, process_object
from sluice.process.worker import run_worker, run_workers
from sluice.query import run_query
from tests.e2e.conftest import (
    IDENTITY,
    Run,
    assert_same_state,
    copy_run,
    quarantine_files,
    raw_lines,
    run_pipeline,
    snapshot,
    source_hash,
    uri_path,
    verified_files,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("replay-base")
    return run_pipeline(tmp, events=2_000, days=1, bad_fraction=0.05, seed=99)


@pytest.fixture
def run(processed: Run, tmp_path: Path) -> Run:
    """A fresh copy of the processed lake for each test (they all change it)."""
    return copy_run(processed, tmp_path)


def attempts(run: Run) -> dict[str, int]:
    out = {}
    for uri in run.ingested.objects:
        ref = parse_uri(uri)
        record = run.env.ledger.get(ref.bucket, ref.key)
        assert record is not None, uri
        assert record.status.value == "completed", (uri, record.status, record.last_error)
        assert not record.pending_outputs, uri
        out[uri] = record.attempts
    return out


def outputs_of(run: Run, uri: str) -> dict[str, int]:
    ref = parse_uri(uri)
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None
    return {o.uri: o.rows for o in record.outputs}


def queue_is_empty(run: Run) -> bool:
    return all(
        (c.visible, c.in_flight) == (0, 0)
        for c in (run.env.processing_queue.counts(), run.env.processing_dlq.counts())
    )


def total_rows(run: Run) -> int:
    union = " UNION ALL ".join(f"SELECT count(*) AS n FROM {table_name(t)}" for t in TYPES)
    return int(run_query(run.env, f"SELECT sum(n) AS n FROM ({union})")["n"][0].as_py())


def busiest_object(run: Run) -> str:
    """The raw object with the most outputs (its replay touches the most files)."""
    return max(run.ingested.objects, key=lambda uri: (len(outputs_of(run, uri)), uri))


def test_forced_reprocessing_twice_changes_nothing(run: Run) -> None:
    before = snapshot(run.config)
    assert before.rows == sum(run.generated.rows.values()) and not before.duplicates()
    registry = {uri: outputs_of(run, uri) for uri in run.ingested.objects}
    assert set(attempts(run).values()) == {1}

    for _ in range(2):
        for uri in run.ingested.objects:
            result = process_object(run.env, uri, force=True)
            assert result.outcome is ProcessOutcome.COMPLETED, uri
            assert result.removed == (), (uri, result.removed)
        assert_same_state(before, snapshot(run.config))

    assert set(attempts(run).values()) == {3}
    assert {uri: outputs_of(run, uri) for uri in run.ingested.objects} == registry
    assert total_rows(run) == before.rows

    # Not forced: a completed object at the same ETag is left alone.
    for uri in run.ingested.objects:
        assert process_object(run.env, uri).outcome is ProcessOutcome.ALREADY_COMPLETED
    assert set(attempts(run).values()) == {3}
    assert_same_state(before, snapshot(run.config))


def test_redrive_messages_through_the_queue_change_nothing(run: Run) -> None:
    before = snapshot(run.config)
    messages = [redrive_raw_file(parse_uri(uri), str(uuid.uuid4())) for uri in run.ingested.objects]
    for start in range(0, len(messages), 10):
        assert not run.env.processing_queue.send_batch(messages[start : start + 10]).failed

    stats = run_worker(run.env, until_idle=True)

    assert stats.completed == len(run.ingested.objects), stats
    assert (stats.retried, stats.dead_lettered) == (0, 0), stats.errors
    assert_same_state(before, snapshot(run.config))
    assert set(attempts(run).values()) == {2}
    assert queue_is_empty(run)
    assert total_rows(run) == before.rows


def test_ten_concurrent_redrives_of_one_object_by_three_workers(run: Run) -> None:
    """Ten redrive messages of one object, three worker processes: the state does not change,
    and a reader querying all along never sees a row missing or doubled."""
    before = snapshot(run.config)
    target = busiest_object(run)
    assert len(outputs_of(run, target)) >= 5
    ref = parse_uri(target)
    # A short lease: a message that found the object busy comes back when the lease ends.
    config = dataclasses.replace(run.config, lease_seconds=1)
    messages = [redrive_raw_file(ref, f"redrive-{i}-{uuid.uuid4()}") for i in range(10)]
    assert not run.env.processing_queue.send_batch(messages).failed

    seen: list[int] = []
    stop = threading.Event()
    reader_env = open_env(config, setup=False)

    def reader() -> None:
        while not stop.is_set():
            union = " UNION ALL ".join(f"SELECT count(*) AS n FROM {table_name(t)}" for t in TYPES)
            table = run_query(reader_env, f"SELECT sum(n) AS n FROM ({union})")
            seen.append(int(table["n"][0].as_py()))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = run_workers(config, 3, until_idle=True)
    finally:
        stop.set()
        thread.join(timeout=30)
        for sig, handler in handlers.items():  # run_workers leaves its own installed
            signal.signal(sig, handler)

    assert_same_state(before, snapshot(run.config))
    assert seen, "the reader ran"
    assert set(seen) == {before.rows}, Counter(seen)
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.status.value == "completed", record
    assert not record.pending_outputs
    assert stats.completed >= 1 and stats.dead_lettered == 0, stats
    # One claim per processing run: a redrive that found the object busy did not claim it.
    assert record.attempts == 1 + stats.completed, (record.attempts, stats)
    # Every redrive was carried out (or found done): none may end in the DLQ, where an
    # operator would have to explain a failure that never happened.
    dlq = run.env.processing_dlq.counts()
    assert (dlq.visible, dlq.in_flight) == (0, 0), (
        f"{dlq.visible} redrive(s) of a healthy object went to the DLQ; worker stats: {stats}"
    )
    assert queue_is_empty(run)


def _concurrently(n: int, call: Any) -> tuple[list[ProcessResult], list[BaseException]]:
    barrier = threading.Barrier(n)
    results: list[ProcessResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        barrier.wait()
        try:
            result = call(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, errors


def test_ten_concurrent_forced_runs_of_one_object_have_one_winner_at_a_time(run: Run) -> None:
    """Ten threads force the same object at once: each run either completes or finds the
    object busy (the ledger's claim has one winner among concurrent claimers); none is cut off
    half-way by another, and the state does not change."""
    before = snapshot(run.config)
    target = busiest_object(run)
    ref = parse_uri(target)

    results, errors = _concurrently(10, lambda i: process_object(run.env, target, force=True))

    assert not errors, [repr(e) for e in errors]
    outcomes = Counter(r.outcome for r in results)
    assert set(outcomes) <= {ProcessOutcome.COMPLETED, ProcessOutcome.BUSY}, outcomes
    assert outcomes[ProcessOutcome.COMPLETED] >= 1
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.status.value == "completed"
    assert record.attempts == 1 + outcomes[ProcessOutcome.COMPLETED], (record.attempts, outcomes)
    assert_same_state(before, snapshot(run.config))


def test_the_same_redrive_delivered_twice_is_processed_once(run: Run) -> None:
    before = snapshot(run.config)
    first, second = run.ingested.objects[:2]

    # Two deliveries of one redrive message, one after the other.
    ref = parse_uri(first)
    message = redrive_raw_file(ref, "redrive-once")
    assert not run.env.processing_queue.send_batch([message, message]).failed
    stats = run_worker(run.env, until_idle=True)
    assert (stats.completed, stats.skipped) == (1, 1), stats
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.attempts == 2, record
    # And once more, directly.
    again = process_object(run.env, first, force=True, redrive_id="redrive-once")
    assert again.outcome is ProcessOutcome.REDRIVE_DONE
    assert run.env.ledger.get(ref.bucket, ref.key).attempts == 2  # type: ignore[union-attr]

    # Two deliveries of another redrive at the same moment (two consumers).
    ref = parse_uri(second)
    results, errors = _concurrently(
        2, lambda i: process_object(run.env, second, force=True, redrive_id="redrive-twice")
    )
    assert not errors, [repr(e) for e in errors]
    outcomes = Counter(r.outcome for r in results)
    assert outcomes[ProcessOutcome.COMPLETED] == 1, outcomes
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None
    assert record.attempts == 2, (record.attempts, outcomes)

    assert_same_state(before, snapshot(run.config))
    assert queue_is_empty(run)


def test_a_changed_raw_object_replaces_its_old_outputs(run: Run) -> None:
    """Same key, new bytes (a new ETag): a new input. Its outputs replace the old ones: rows the
    new content does not have are gone, stale files are removed, nothing is doubled, and no
    other object's files change."""
    config = run.config
    target = busiest_object(run)
    ref = parse_uri(target)
    own = source_hash(target)
    before = snapshot(config)
    old_record = run.env.ledger.get(ref.bucket, ref.key)
    assert old_record is not None

    # The old content's lock rows, by line; the object also has rows of other types and
    # quarantined lines, which the new content will not have.
    old_lines = raw_lines(uri_path(config, target))
    lock_rows: dict[int, list[tuple[int, str]]] = {}
    own_types = set()
    for key, path in verified_files(config).items():
        if not key.endswith(f"/{own}.parquet"):
            continue
        table = pq.read_table(path)
        own_types.update(table.column("envelope__type").to_pylist())
        if "/type=lock/" in key:
            for line, ordinal, event_id in zip(
                table.column("envelope__line").to_pylist(),
                table.column("envelope__ordinal").to_pylist(),
                table.column("envelope__event_id").to_pylist(),
                strict=True,
            ):
                lock_rows.setdefault(line, []).append((ordinal, event_id))
    assert len(own_types) > 1 and lock_rows
    assert any(k.endswith(f"/{own}.jsonl.gz") for k in quarantine_files(config))

    # New content: the lock lines only, in reverse order, so every line number moves.
    kept = sorted(lock_rows, reverse=True)
    new_data = b"".join(old_lines[n - 1] + b"\n" for n in kept)
    info = run.env.store.put(ref.bucket, ref.key, gzip.compress(new_data))
    assert info.etag != old_record.etag

    # An overwrite is announced like any new object, here by an S3 event notification (keys
    # URL-encoded as S3 writes them): not forced.
    run.env.processing_queue.send(s3_notification(ref.bucket, ref.key))
    stats = run_worker(run.env, until_idle=True)
    assert stats.completed == 1, stats
    after = snapshot(config)

    # Other objects' files are untouched.
    others = {k: v for k, v in before.files.items() if not k.endswith(f"/{own}.parquet")}
    assert {k: v for k, v in after.files.items() if not k.endswith(f"/{own}.parquet")} == others
    assert {k: v for k, v in after.quarantine.items() if own not in k} == {
        k: v for k, v in before.quarantine.items() if own not in k
    }

    # The object's rows are exactly those of its new content.
    expected: dict[tuple[str, int, int], str] = {}
    for new_line, old_line in enumerate(kept, 1):
        for ordinal, event_id in lock_rows[old_line]:
            expected[(target, new_line, ordinal)] = event_id
    actual: dict[tuple[str, int, int], str] = {}
    for key, path in verified_files(config).items():
        if not key.endswith(f"/{own}.parquet"):
            continue
        assert "/type=lock/" in key, ("stale file of a type the object no longer has", key)
        table = pq.read_table(path)
        for *ident, event_id in zip(
            *(table.column(c).to_pylist() for c in IDENTITY),
            table.column("envelope__event_id").to_pylist(),
            strict=True,
        ):
            assert tuple(ident) not in actual, ("duplicate row", ident)
            actual[tuple(ident)] = event_id
    assert actual == expected
    assert not after.duplicates()
    assert not any(own in k for k in after.quarantine), "stale quarantine file left"
    old_rows = sum(n for k, (n, _) in before.files.items() if k.endswith(f"/{own}.parquet"))
    assert after.rows == before.rows - old_rows + len(expected)
    assert total_rows(run) == after.rows

    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.status.value == "completed"
    assert record.etag == info.etag and record.attempts == 1
    assert record.counts is not None
    assert (record.counts.lines, record.counts.good_lines) == (len(kept), len(kept))
    assert record.counts.quarantined_lines == 0 and record.counts.rows == len(expected)
    on_disk = {
        f"s3://{config.buckets.verified}/{k}"
        for k in verified_files(config)
        if k.endswith(f"/{own}.parquet")
    }
    assert {o.uri for o in record.outputs} == on_disk
    assert not record.pending_outputs

    # The new content is now the completed input: a repeat delivery changes nothing.
    assert process_object(run.env, target).outcome is ProcessOutcome.ALREADY_COMPLETED
    assert snapshot(config) == after
    assert queue_is_empty(run)

    # Overwritten once more with no events at all: the object now has no outputs.
    run.env.store.put(ref.bucket, ref.key, gzip.compress(b"\n  \n"))
    assert process_object(run.env, target).outcome is ProcessOutcome.COMPLETED
    emptied = snapshot(config)
    assert not any(own in k for k in [*emptied.files, *emptied.quarantine])
    assert emptied.files == {
        k: v for k, v in after.files.items() if not k.endswith(f"/{own}.parquet")
    }
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.outputs == () and record.counts is not None
    assert (record.counts.lines, record.counts.blank_lines, record.counts.rows) == (2, 2, 0)


def test_a_failed_reprocess_leaves_the_previous_outputs_in_place(run: Run) -> None:
    """The object is overwritten with bytes that are not gzip: its processing fails for good
    (to the DLQ, with the reason in the ledger) and its previous outputs stay. Once the good
    bytes are back, processing restores exactly the previous state."""
    before = snapshot(run.config)
    target = busiest_object(run)
    ref = parse_uri(target)
    good = uri_path(run.config, target).read_bytes()

    run.env.store.put(ref.bucket, ref.key, b"this is not gzip\n")
    assert not run.env.processing_queue.send_batch([process_raw_file(ref)]).failed
    stats = run_worker(run.env, until_idle=True)
    assert (stats.completed, stats.dead_lettered) == (0, 1), stats
    assert_same_state(before, snapshot(run.config))
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.status.value == "failed"
    assert record.terminal and record.last_error and "gzip" in record.last_error, record
    assert {o.uri for o in record.outputs} == set(outputs_of_files(run, target))
    assert run.env.processing_dlq.counts().visible == 1

    run.env.store.put(ref.bucket, ref.key, good)
    assert not run.env.processing_queue.send_batch([process_raw_file(ref)]).failed
    assert run_worker(run.env, until_idle=True).completed == 1
    assert_same_state(before, snapshot(run.config))
    record = run.env.ledger.get(ref.bucket, ref.key)
    assert record is not None and record.status.value == "completed" and not record.last_error


def outputs_of_files(run: Run, uri: str) -> list[str]:
    """The URIs of the files on disk that hold rows or lines of `uri`."""
    own = source_hash(uri)
    cfg = run.config
    out = [f"s3://{cfg.buckets.verified}/{k}" for k in verified_files(cfg) if own in k]
    return out + [f"s3://{cfg.buckets.quarantine}/{k}" for k in quarantine_files(cfg) if own in k]


def s3_notification(bucket: str, key: str) -> str:
    """An S3 ObjectCreated event notification body, key URL-encoded as S3 sends it."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
    }
    return json.dumps({"Records": [record]})
