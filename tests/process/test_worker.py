"""The worker's decisions: delete, retry, dead-letter, wait for another worker's lease."""

from __future__ import annotations

import json
import time

from sluice.backends.ledger.base import FileStatus, SourceRef
from sluice.env import Env
from sluice.layout import ObjectUri
from sluice.messages import CORRELATION_ID, process_raw_file, redrive_raw_file
from sluice.process.worker import WorkerStats, handle_message, run_worker
from tests.conftest import line, make_event, put_raw


def send(env: Env, body: str, **attributes: str) -> None:
    env.processing_queue.send(body, attributes or {CORRELATION_ID: "corr"})


def dlq_bodies(env: Env) -> list[str]:
    messages = env.processing_dlq.receive(10, visibility_timeout=0)
    return [m.body for m in messages]


def test_good_object_is_processed_and_its_message_deleted(env: Env) -> None:
    uri = put_raw(env, [line(make_event())])
    message = process_raw_file(uri, "corr-1")
    env.processing_queue.send(message.body, message.attributes)
    stats = run_worker(env, until_idle=True)
    assert (stats.completed, stats.rows, stats.dead_lettered) == (1, 2, 0)
    counts = env.processing_queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)


def test_terminal_failure_goes_to_the_dlq_at_once_with_body_and_attributes(env: Env) -> None:
    uri = put_raw(env, [], raw=b"\x1f\x8b\x08\x00garbage")
    message = process_raw_file(uri, "corr-2")
    env.processing_queue.send(message.body, {**message.attributes, "origin": "test"})
    stats = run_worker(env, until_idle=True)
    assert (stats.dead_lettered, stats.retried) == (1, 0)
    (moved,) = env.processing_dlq.receive(10)
    assert moved.body == message.body
    assert moved.attributes == {CORRELATION_ID: "corr-2", "origin": "test"}
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.FAILED and record.terminal
    (failure,) = env.ledger.failures(uri.bucket, uri.key)
    assert failure.correlation_id == "corr-2" and failure.error_class == "CorruptObject"


def test_missing_object_goes_to_the_dlq_with_its_reason(env: Env) -> None:
    uri = ObjectUri(env.config.buckets.raw, "raw/json_telemetry/gone.gz")
    message = process_raw_file(uri)
    env.processing_queue.send(message.body, message.attributes)
    assert run_worker(env, until_idle=True).dead_lettered == 1
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.error_class == "ObjectNotFound" and record.terminal
    assert str(uri) in (record.last_error or "")


def test_invalid_messages_are_dead_lettered_unchanged(env: Env) -> None:
    bodies = ["not json", '{"kind": "explode"}', '{"kind": "process_raw_file", "bucket": 3}', "[]"]
    for body in bodies:
        send(env, body)
    stats = run_worker(env, until_idle=True)
    assert stats.dead_lettered == len(bodies)
    assert sorted(dlq_bodies(env)) == sorted(bodies)


def test_s3_event_notifications_are_processed(env: Env) -> None:
    uri = put_raw(env, [line(make_event())], key="raw/json_telemetry/a b+c.gz")
    notification = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": uri.bucket},
                    "object": {"key": "raw/json_telemetry/a+b%2Bc.gz"},
                },
            }
        ]
    }
    send(env, json.dumps(notification))
    send(env, json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    stats = run_worker(env, until_idle=True)
    assert (stats.completed, stats.dead_lettered, stats.messages) == (1, 0, 2)
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.COMPLETED


def test_transient_failures_retry_then_reach_the_dlq_after_max_receives(env: Env) -> None:
    uri = put_raw(env, [line(make_event())])
    message = process_raw_file(uri)
    env.processing_queue.send(message.body, message.attributes)
    settings = env.processing_queue.settings()
    assert settings.redrive_policy is not None
    max_receives = settings.redrive_policy.max_receive_count
    stats = WorkerStats()
    # The catalog is unavailable: every attempt fails transiently.
    broken = env.catalog.add_partitions

    def unavailable(*args: object, **kwargs: object) -> int:
        raise OSError("catalog unavailable")

    env.catalog.add_partitions = unavailable  # type: ignore[method-assign]
    try:
        for _ in range(max_receives):
            (received,) = env.processing_queue.receive(1, wait_seconds=5)
            handle_message(env, env.processing_queue, received, stats, "w")
            env.processing_queue.change_visibility(received.receipt_handle, 0)
    finally:
        env.catalog.add_partitions = broken  # type: ignore[method-assign]
    assert stats.retried == max_receives and stats.dead_lettered == 0
    assert env.processing_queue.receive(1) == []  # the redrive policy moved it
    assert dlq_bodies(env) == [message.body]
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.status is FileStatus.FAILED and not record.terminal
    assert record.attempts == max_receives


def test_busy_object_is_left_for_the_lease_holder(env: Env) -> None:
    uri = put_raw(env, [line(make_event())])
    info = env.store.head(uri.bucket, uri.key)
    held = env.ledger.claim(SourceRef(uri.bucket, uri.key, info.etag), "other", 60)
    assert held.claim is not None
    message = process_raw_file(uri)
    env.processing_queue.send(message.body, message.attributes)
    (received,) = env.processing_queue.receive(1)
    stats = WorkerStats()
    handle_message(env, env.processing_queue, received, stats, "me")
    assert stats.busy == 1
    counts = env.processing_queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 1)  # kept, invisible until the lease ends


def test_a_redrive_id_delivered_twice_is_processed_once(env: Env) -> None:
    uri = put_raw(env, [line(make_event())])
    run_once = process_raw_file(uri)
    env.processing_queue.send(run_once.body, run_once.attributes)
    run_worker(env, until_idle=True)
    redrive = redrive_raw_file(uri, "redrive-1")
    for _ in range(2):
        env.processing_queue.send(redrive.body, redrive.attributes)
    stats = run_worker(env, until_idle=True)
    assert (stats.completed, stats.skipped) == (1, 1)
    record = env.ledger.get(uri.bucket, uri.key)
    assert record is not None and record.attempts == 2


def test_until_idle_waits_out_a_message_left_in_flight(env: Env) -> None:
    uri = put_raw(env, [line(make_event())])
    message = process_raw_file(uri)
    env.processing_queue.send(message.body, message.attributes)
    env.processing_queue.receive(1, visibility_timeout=2)  # a worker that died holding it
    started = time.monotonic()
    stats = run_worker(env, until_idle=True)
    assert stats.completed == 1 and time.monotonic() - started >= 1.5
