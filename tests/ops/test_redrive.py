"""`sluice redrive` on the embedded backends: the failures operators fear, each a test.

Lakes are built by the real processor from raw objects whose events fall on several days and
types, and read back independently of the code under test (`tests.e2e.conftest.snapshot`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sluice.backends.queue.base import OutgoingMessage, Queue, SendBatchResult
from sluice.config import EnvConfig
from sluice.env import Env, open_env
from sluice.errors import ProtectedEnvironment
from sluice.layout import ObjectUri, parse_uri, partition_prefix
from sluice.ops.redrive import (
    FollowSettings,
    MissingSources,
    Pacing,
    RedriveEvent,
    RedriveInterrupted,
    RedriveRequest,
    Target,
    redrive,
)
from sluice.process.processor import process_object
from sluice.process.worker import WorkerStats, handle_message, run_worker
from tests.conftest import line, make_event, put_raw
from tests.e2e.conftest import snapshot

DAY = "2025-11-24"
FAST = FollowSettings(timeout_seconds=60, poll_seconds=0.1, settle_seconds=5)


# -- helpers (shared by the other test_redrive* modules) ---------------------------------------


def build_lake(env: Env, sources: int = 4) -> list[ObjectUri]:
    """Raw objects whose events feed lock on DAY (hours 21, 22), bridge on DAY and lock on the
    day before, each processed once."""
    uris = []
    for i in range(sources):
        lines = [
            line(make_event(f"s{i}-a", "lock", f"{DAY}T21:0{i % 10}:00Z")),
            line(make_event(f"s{i}-b", "lock", f"{DAY}T22:30:00Z", assertions=3)),
            line(make_event(f"s{i}-c", "bridge", f"{DAY}T21:10:00Z", assertions=0, cpu_pct=1.5)),
            line(make_event(f"s{i}-d", "lock", "2025-11-23T10:00:00Z")),
            b"not json",
        ]
        uris.append(put_raw(env, lines))
    for uri in uris:
        process_object(env, uri)
    return uris


def day_request(**kwargs: Any) -> RedriveRequest:
    return RedriveRequest(Target.of(source_ref_day=DAY, type_="lock"), **kwargs)


def drain(env: Env) -> None:
    """Process every message in the queue with the worker's own per-message code (run_worker
    would long-poll a second more to be sure the queue is idle)."""
    queue, stats = env.processing_queue, WorkerStats()
    while batch := queue.receive(10):
        for message in batch:
            handle_message(env, queue, message, stats, "test-worker")
    assert not stats.errors, stats.errors


def queued(env: Env) -> list[dict[str, Any]]:
    """Every message in the processing queue (received and deleted), as JSON bodies."""
    import json

    out = []
    while batch := env.processing_queue.receive(10):
        for message in batch:
            out.append(json.loads(message.body) | {"attributes": dict(message.attributes)})
            env.processing_queue.delete(message.receipt_handle)
    return out


def store_keys(env: Env) -> dict[str, str]:
    """Every object of every bucket, by URI, with its ETag."""
    return {
        info.uri: info.etag
        for bucket in vars(env.config.buckets).values()
        for info in env.store.list(bucket)
    }


@contextmanager
def background_worker(config: EnvConfig) -> Iterator[None]:
    """A worker in a thread (its own environment) until the block ends."""
    stop = threading.Event()

    def work() -> None:
        env = open_env(config)
        while not stop.is_set():
            run_worker(env, until_idle=True, should_stop=stop.is_set)
            stop.wait(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


# -- nothing doubled ---------------------------------------------------------------------------


def test_redriving_a_day_twice_without_deleting_parquet_makes_no_duplicates(env: Env) -> None:
    build_lake(env)
    before = snapshot(env.config)
    for _ in range(2):
        result = redrive(env, day_request())
        assert result.sources == 4 and result.sending.sent == 4
        assert result.replaced_in_place == 8 and result.orphans == 0 and result.to_delete == 0
        drain(env)
        after = snapshot(env.config)
        assert not after.duplicates()
        assert after.identities == before.identities
        assert after.files.keys() == before.files.keys()
        assert after.rows == before.rows


def test_sources_that_feed_other_days_and_types_are_rebuilt_everywhere_once(env: Env) -> None:
    uris = build_lake(env, sources=3)
    before = snapshot(env.config)
    other = [k for k in before.files if "type=bridge" in k or "day=2025-11-23" in k]
    assert len(other) == 6  # each source: one bridge file on DAY, one lock file the day before
    redrive(env, day_request())
    drain(env)
    after = snapshot(env.config)
    assert not after.duplicates()
    assert after.identities == before.identities
    assert after.files == before.files  # same keys, same rows, same contents
    for uri in uris:  # each source was reprocessed once, by its redrive
        record = env.ledger.get(uri.bucket, uri.key)
        assert record is not None and record.attempts == 2


def test_files_of_unregistered_partitions_are_found_by_listing(env: Env) -> None:
    from sluice.layout import table_name

    build_lake(env, sources=3)
    before = snapshot(env.config)
    lock = table_name("lock")
    env.catalog.drop_partitions(lock, list(env.catalog.list_partitions(lock)))
    result = redrive(env, day_request())  # the engine sees no row of the day now
    assert result.sources == 3 and result.replaced_in_place == 6 and result.orphans == 0
    drain(env)  # the worker registers the partitions again as it publishes
    assert snapshot(env.config).files == before.files
    assert len(list(env.catalog.list_partitions(lock))) == 3


# -- nothing lost ------------------------------------------------------------------------------


@pytest.mark.parametrize("delete_parquet", [False, True], ids=["in-place", "delete-parquet"])
def test_a_missing_raw_object_refuses_the_run(env: Env, delete_parquet: bool) -> None:
    uris = build_lake(env, sources=3)
    gone = uris[1]
    env.store.delete_batch(gone.bucket, [gone.key])
    before = store_keys(env)
    with pytest.raises(MissingSources) as caught:
        redrive(env, day_request(delete_parquet=delete_parquet))
    assert caught.value.context["missing"] == [str(gone)]
    assert str(gone) in caught.value.message
    assert caught.value.hint is not None and "--skip-missing-sources" in caught.value.hint
    assert store_keys(env) == before  # nothing deleted, no run written
    assert env.processing_queue.counts().visible == 0  # nothing sent


def test_skip_missing_sources_redrives_the_others_and_keeps_the_missing_ones_files(
    env: Env,
) -> None:
    uris = build_lake(env, sources=3)
    gone = uris[0]
    env.store.delete_batch(gone.bucket, [gone.key])
    kept = set(snapshot(env.config).files)
    result = redrive(env, day_request(delete_parquet=True, skip_missing_sources=True))
    assert result.missing == [str(gone)] and result.sources == 2
    assert result.kept_count == 2 and all(str(gone) in k.reason for k in result.kept)
    sent = [m["key"] for m in queued(env)]
    assert sorted(sent) == sorted(u.key for u in uris[1:])
    left = set(snapshot(env.config).files)
    assert {k.uri.split("/", 3)[3] for k in result.kept} <= left
    assert len(kept - left) == 4  # the other two sources' lock files on DAY


# -- resumable ---------------------------------------------------------------------------------


class FailingQueue:
    """The processing queue, whose `fail_on`-th send_batch raises (a lost connection)."""

    def __init__(self, queue: Queue, fail_on: int) -> None:
        self.queue = queue
        self.name = queue.name
        self.calls = 0
        self.fail_on = fail_on

    def send_batch(self, entries: list[OutgoingMessage]) -> SendBatchResult:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionResetError("connection reset by peer")
        return self.queue.send_batch(entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def raw_objects(env: Env, count: int) -> str:
    """`count` raw objects under one prefix (never processed: a prefix redrive sends them)."""
    for i in range(count):
        put_raw(env, [line(make_event(f"p{i}"))], key=f"raw/json_telemetry/batch/obj-{i:03d}.gz")
    return f"s3://{env.config.buckets.raw}/raw/json_telemetry/batch/"


@pytest.mark.parametrize(
    ("chunk_size", "first_sent"), [(10, 10), (20, 10)], ids=["between-chunks", "mid-chunk"]
)
def test_an_interrupted_redrive_resumed_sends_every_source_exactly_once(
    env: Env, chunk_size: int, first_sent: int
) -> None:
    prefix = raw_objects(env, 25)
    real = env.processing_queue
    env.__dict__["processing_queue"] = FailingQueue(real, fail_on=2)
    request = RedriveRequest(Target.of(s3_prefix=prefix), chunk_size=chunk_size)
    with pytest.raises(RedriveInterrupted) as caught:
        redrive(env, request)
    run_id = caught.value.context["run_id"]
    assert caught.value.hint == f"sluice redrive --resume {run_id}   (sends the rest once)"
    assert real.counts().visible == first_sent
    env.__dict__["processing_queue"] = real
    resumed = redrive(env, RedriveRequest(resume=run_id))
    assert resumed.resumed and resumed.sending.already_sent == first_sent
    assert resumed.sending.sent == 25 - first_sent
    messages = queued(env)
    per_source = Counter(m["key"] for m in messages)
    assert len(per_source) == 25 and set(per_source.values()) == {1}
    ids = {m["redrive_id"] for m in messages}
    assert len(ids) == 25 and all(i.startswith(run_id) for i in ids)
    assert {m["attributes"]["correlation_id"] for m in messages} == ids
    again = redrive(env, RedriveRequest(resume=run_id))  # a finished run sends nothing more
    assert again.sending.sent == 0 and again.sending.already_sent == 25


# -- backpressure ------------------------------------------------------------------------------


def test_backpressure_holds_the_visible_count_at_or_below_the_limit(env: Env) -> None:
    prefix = raw_objects(env, 60)
    limit = 15
    stop = threading.Event()
    seen: list[int] = []

    def poll() -> None:
        queue = open_env(env.config).processing_queue
        while not stop.is_set():
            seen.append(queue.counts().visible)
            time.sleep(0.002)

    def consume() -> None:  # a slow consumer: ten messages every 50 ms
        queue = open_env(env.config).processing_queue
        while not stop.is_set():
            for message in queue.receive(10):
                queue.delete(message.receipt_handle)
            time.sleep(0.05)

    threads = [threading.Thread(target=f, daemon=True) for f in (poll, consume)]
    for thread in threads:
        thread.start()
    events: list[RedriveEvent] = []
    try:
        result = redrive(
            env,
            RedriveRequest(
                Target.of(s3_prefix=prefix),
                pacing=Pacing(max_queue_visible=limit, poll_seconds=0.02),
            ),
            on_event=events.append,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.sending.sent == 60
    assert result.sending.pauses >= 1 and any(e.kind == "paused" for e in events)
    # Sampled all along the run (the count depends on how busy the machine is, not the code).
    assert len(seen) > 20 and max(seen) <= limit


def test_the_rate_limit_paces_the_sends(env: Env) -> None:
    prefix = raw_objects(env, 12)
    started = time.monotonic()
    result = redrive(env, RedriveRequest(Target.of(s3_prefix=prefix), pacing=Pacing(rate=40)))
    assert result.sending.sent == 12
    assert time.monotonic() - started >= 11 / 40


# -- orphans, --delete-parquet, dry run --------------------------------------------------------


def copy_as_orphan(env: Env) -> str:
    """A verified lock file of DAY copied under another name beside it (an older tool's copy)."""
    bucket = env.config.buckets.verified
    original = next(iter(env.store.list(bucket, partition_prefix("lock", DAY, "21"))))
    copy = original.key.rsplit("/", 1)[0] + "/part-00000-copy.parquet"
    env.store.copy(bucket, original.key, bucket, copy)
    return f"s3://{bucket}/{copy}"


def test_orphans_are_listed_and_removed_once_the_run_is_reprocessed(env: Env) -> None:
    build_lake(env, sources=3)
    before = snapshot(env.config)
    orphan = copy_as_orphan(env)
    assert snapshot(env.config).duplicates()  # the copy doubles its source's rows
    dry = redrive(env, day_request(dry_run=True))
    assert [o.uri for o in dry.orphan_list] == [orphan] and dry.orphans == 1
    with background_worker(env.config):
        result = redrive(env, day_request(wait=True, follow=FAST))
    assert result.follow is not None and result.follow.complete
    assert result.finish is not None and result.finish.orphans_removed == 1
    assert not result.failed and not result.finish.verify_failed
    after = snapshot(env.config)
    assert not env.store.exists(*_bucket_key(orphan))
    assert not after.duplicates() and after.identities == before.identities
    assert after.files.keys() == before.files.keys()


def _bucket_key(uri: str) -> tuple[str, str]:
    ref = parse_uri(uri)
    return ref.bucket, ref.key


def test_a_parquet_uri_redrive_rebuilds_the_source_and_removes_the_copy(env: Env) -> None:
    build_lake(env, sources=2)
    before = snapshot(env.config)
    orphan = copy_as_orphan(env)
    with background_worker(env.config):
        result = redrive(env, RedriveRequest(Target.of(parquet_uri=orphan), wait=True, follow=FAST))
    assert result.sources == 1 and result.orphans == 1 and not result.failed
    assert not env.store.exists(*_bucket_key(orphan))
    assert snapshot(env.config).files == before.files


def test_delete_parquet_deletes_the_targeted_files_then_redrives(env: Env) -> None:
    build_lake(env, sources=3)
    before = snapshot(env.config)
    orphan = copy_as_orphan(env)
    day_files = {k for k in before.files if f"type=lock/day={DAY}/" in k}
    result = redrive(env, day_request(delete_parquet=True))
    assert result.deleted == result.to_delete == len(day_files) + 1
    assert result.replaced_in_place == 0 and result.orphans == 0
    now = snapshot(env.config).files
    assert not day_files & now.keys()  # the gap the older tools leave
    assert not env.store.exists(*_bucket_key(orphan))
    assert env.processing_queue.counts().visible == 3
    drain(env)
    after = snapshot(env.config)
    assert after.files == before.files and not after.duplicates()


def test_a_dry_run_lists_exactly_what_would_happen_and_changes_nothing(env: Env) -> None:
    uris = build_lake(env, sources=3)
    orphan = copy_as_orphan(env)
    before = store_keys(env)
    result = redrive(env, day_request(dry_run=True, delete_parquet=True))
    assert result.dry_run and result.run_id is None
    assert sorted(result.send) == sorted(str(u) for u in uris)
    day_files = {u for u in before if f"/type=lock/day={DAY}/" in u}
    assert set(result.delete) == day_files and orphan in result.delete
    assert store_keys(env) == before
    assert env.processing_queue.counts().visible == 0


# -- the guard ---------------------------------------------------------------------------------


def test_a_protected_environment_refuses_without_yes(tmp_path: Path) -> None:
    env = open_env(replace(EnvConfig(data_dir=tmp_path / "data"), name="prod", protected=True))
    build_lake(env, sources=2)
    before = store_keys(env)
    with pytest.raises(ProtectedEnvironment) as caught:
        redrive(env, day_request(command="sluice --env prod redrive X"))
    assert "send: 2 redrive_raw_file message(s)" in caught.value.message
    assert (
        caught.value.hint is not None and "sluice --env prod redrive X --yes" in caught.value.hint
    )
    assert store_keys(env) == before and env.processing_queue.counts().visible == 0
    assert redrive(env, day_request(dry_run=True)).sources == 2  # looking is always allowed
    assert redrive(env, day_request(yes=True)).sending.sent == 2


def test_limit_redrives_the_first_sources_and_keeps_the_others_files(env: Env) -> None:
    uris = build_lake(env, sources=3)
    result = redrive(env, day_request(limit=1, delete_parquet=True))
    assert result.sources == 1 and result.excluded_by_limit == 2
    assert result.to_delete == 2 and result.kept_count == 4
    assert all("past --limit" in k.reason for k in result.kept)
    assert [m["key"] for m in queued(env)] == [sorted(u.key for u in uris)[0]]
    prefix = raw_objects(env, 25)
    listed = redrive(env, RedriveRequest(Target.of(s3_prefix=prefix), limit=7, dry_run=True))
    assert listed.sources == len(listed.send) == 7 and listed.excluded_by_limit == 18
