"""The queue contract: every implementation of `sluice.backends.queue.base` passes these tests.

Written against the interface only. An implementation joins by adding an entry to `IMPLS` and a
branch to `make_factory` (which child processes call too, so it takes only picklable arguments).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice.backends.queue.base import (
    MAX_BATCH,
    OutgoingMessage,
    Queue,
    QueueFactory,
    QueueSettings,
    RedrivePolicy,
)
from sluice.errors import BatchTooLarge, ConfigError, QueueNotFound, ReceiptHandleInvalid


@dataclass(frozen=True)
class Impl:
    name: str
    # SQS accepts a stale receipt handle (and leaves the message); the embedded queue refuses it.
    rejects_stale_handles: bool
    # SQS keeps a message at least 60 s, too long to wait for in a test.
    short_retention: bool


IMPLS = [Impl("sqlite", rejects_stale_handles=True, short_retention=True)]


def make_factory(impl: str, location: Path) -> QueueFactory:
    if impl == "sqlite":
        from sluice.backends.queue.sqlite import SqliteQueueFactory

        return SqliteQueueFactory(location / "queues.sqlite")
    raise ValueError(impl)


@pytest.fixture(params=IMPLS, ids=lambda impl: impl.name)
def impl(request: pytest.FixtureRequest) -> Impl:
    param: Impl = request.param
    return param


@pytest.fixture
def queue_factory(impl: Impl, tmp_path: Path) -> QueueFactory:
    return make_factory(impl.name, tmp_path)


def settings(
    visibility: int = 30, retention: int = 3600, redrive: RedrivePolicy | None = None
) -> QueueSettings:
    return QueueSettings(visibility, retention, redrive)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue(queue_factory: QueueFactory) -> Queue:
    return queue_factory.create(unique("q"), settings())


# Sending and receiving -----------------------------------------------------------------------


def test_roundtrip_keeps_body_and_attributes(queue: Queue) -> None:
    attributes = {"correlation_id": "c-1", "kind": "process_raw_file", "note": "ünïcode ✓"}
    message_id = queue.send('{"kind": "process_raw_file"}', attributes)

    [message] = queue.receive()

    assert message.message_id == message_id
    assert message.body == '{"kind": "process_raw_file"}'
    assert dict(message.attributes) == attributes
    assert message.receive_count == 1
    assert abs(message.sent_at.timestamp() - time.time()) < 60


def test_send_batch_reports_every_entry_by_id(queue: Queue) -> None:
    entries = [OutgoingMessage(f"body-{i}", {"i": str(i)}, entry_id=f"e{i}") for i in range(10)]

    result = queue.send_batch(entries)

    assert set(result.sent) == {f"e{i}" for i in range(10)}
    assert result.failed == {}
    received = queue.receive(MAX_BATCH)
    by_id = {m.message_id: m for m in received}
    assert set(by_id) == set(result.sent.values())
    for i in range(10):
        message = by_id[result.sent[f"e{i}"]]
        assert (message.body, dict(message.attributes)) == (f"body-{i}", {"i": str(i)})


def test_send_batch_numbers_entries_without_ids(queue: Queue) -> None:
    result = queue.send_batch([OutgoingMessage("a"), OutgoingMessage("b"), OutgoingMessage("c")])

    assert set(result.sent) == {"0", "1", "2"}


def test_send_batch_reports_invalid_entries_and_sends_the_rest(queue: Queue) -> None:
    result = queue.send_batch(
        [OutgoingMessage("ok", entry_id="good"), OutgoingMessage("", entry_id="bad")]
    )

    assert set(result.sent) == {"good"}
    assert set(result.failed) == {"bad"}
    assert [m.body for m in queue.receive(MAX_BATCH)] == ["ok"]


def test_send_batch_of_eleven_is_refused_and_sends_nothing(queue: Queue) -> None:
    with pytest.raises(BatchTooLarge):
        queue.send_batch([OutgoingMessage(f"m{i}") for i in range(MAX_BATCH + 1)])

    assert queue.counts().visible == 0


def test_send_batch_refuses_empty_batch_and_duplicate_entry_ids(queue: Queue) -> None:
    with pytest.raises(ConfigError):
        queue.send_batch([])
    with pytest.raises(ConfigError):
        queue.send_batch([OutgoingMessage("a", entry_id="x"), OutgoingMessage("b", entry_id="x")])

    assert queue.counts().visible == 0


def test_empty_and_oversized_bodies_are_refused(queue: Queue) -> None:
    with pytest.raises(ConfigError):
        queue.send("")
    with pytest.raises(ConfigError, match="limit"):
        queue.send("x" * (256 * 1024 + 1))

    queue.send("x" * (256 * 1024 - 100))
    assert queue.counts().visible == 1


def test_receive_takes_oldest_first_and_at_most_max_messages(queue: Queue) -> None:
    for i in range(5):
        queue.send(f"m{i}")

    first = queue.receive(3)
    second = queue.receive(3)

    assert [m.body for m in first] == ["m0", "m1", "m2"]
    assert [m.body for m in second] == ["m3", "m4"]
    with pytest.raises(ConfigError):
        queue.receive(MAX_BATCH + 1)


# Visibility and receipt handles ----------------------------------------------------------------


def test_visibility_timeout_hides_then_shows_again(queue: Queue) -> None:
    queue.send("m")

    [first] = queue.receive(visibility_timeout=1)
    assert queue.receive() == []
    time.sleep(1.1)
    [second] = queue.receive()

    assert second.message_id == first.message_id
    assert second.receive_count == first.receive_count + 1 == 2


def test_each_receive_issues_a_new_handle_and_the_stale_one_deletes_nothing(
    queue: Queue, impl: Impl
) -> None:
    queue.send("m")
    [first] = queue.receive(visibility_timeout=0)
    [second] = queue.receive(visibility_timeout=0)
    assert second.receipt_handle != first.receipt_handle

    if impl.rejects_stale_handles:
        with pytest.raises(ReceiptHandleInvalid):
            queue.delete(first.receipt_handle)
    else:
        with contextlib.suppress(ReceiptHandleInvalid):
            queue.delete(first.receipt_handle)

    [third] = queue.receive()
    assert third.message_id == first.message_id
    assert third.receive_count == 3
    queue.delete(third.receipt_handle)
    assert queue.counts().visible + queue.counts().in_flight == 0


def test_unknown_handle_is_refused(queue: Queue, impl: Impl) -> None:
    if not impl.rejects_stale_handles:
        pytest.skip("SQS accepts unknown handles of the right shape")
    with pytest.raises(ReceiptHandleInvalid):
        queue.delete("no-such-handle")
    with pytest.raises(ReceiptHandleInvalid):
        queue.change_visibility("no-such-handle", 0)


def test_change_visibility_to_zero_shows_the_message_at_once(queue: Queue) -> None:
    queue.send("m")
    [first] = queue.receive(visibility_timeout=600)
    assert queue.receive() == []

    queue.change_visibility(first.receipt_handle, 0)

    [again] = queue.receive()
    assert again.message_id == first.message_id
    assert again.receive_count == 2


def test_change_visibility_extends_the_hiding(queue: Queue) -> None:
    queue.send("m")
    [message] = queue.receive(visibility_timeout=0)

    queue.change_visibility(message.receipt_handle, 600)

    assert queue.receive() == []
    assert queue.counts().in_flight == 1


# Long poll ---------------------------------------------------------------------------------


def test_long_poll_returns_as_soon_as_a_message_arrives(queue: Queue) -> None:
    sender = threading.Timer(0.3, lambda: queue.send("late"))
    sender.start()
    try:
        started = time.monotonic()
        messages = queue.receive(wait_seconds=10)
        elapsed = time.monotonic() - started
    finally:
        sender.join()

    assert [m.body for m in messages] == ["late"]
    assert elapsed < 3


def test_long_poll_returns_empty_after_wait_seconds(queue: Queue) -> None:
    started = time.monotonic()
    messages = queue.receive(wait_seconds=1)
    elapsed = time.monotonic() - started

    assert messages == []
    assert 0.9 <= elapsed < 3


# Redrive policy ----------------------------------------------------------------------------


def test_message_moves_to_dead_letter_queue_after_max_receive_count(
    queue_factory: QueueFactory,
) -> None:
    dlq = queue_factory.create(unique("dlq"), settings())
    source = queue_factory.create(
        unique("src"), settings(redrive=RedrivePolicy(dlq.name, max_receive_count=2))
    )
    attributes = {"correlation_id": "c-42"}
    message_id = source.send('{"kind": "process_raw_file"}', attributes)

    counts_seen = [m.receive_count for _ in range(2) for m in source.receive(visibility_timeout=0)]
    assert counts_seen == [1, 2]
    assert source.receive() == []

    [dead] = dlq.receive(wait_seconds=5)
    assert dead.body == '{"kind": "process_raw_file"}'
    assert dict(dead.attributes) == attributes
    assert dead.message_id == message_id
    assert dead.receive_count == 1
    assert source.counts().visible + source.counts().in_flight == 0


def test_redrive_policy_naming_a_missing_queue_is_refused(queue_factory: QueueFactory) -> None:
    with pytest.raises(QueueNotFound):
        queue_factory.create(unique("src"), settings(redrive=RedrivePolicy(unique("missing"), 3)))


def test_create_is_idempotent_and_updates_settings(queue_factory: QueueFactory) -> None:
    name = unique("q")
    first = queue_factory.create(name, settings(visibility=30))
    first.send("kept")

    second = queue_factory.create(name, settings(visibility=60))

    assert second.settings().visibility_timeout_seconds == 60
    assert queue_factory.open(name).settings() == settings(visibility=60)
    assert [m.body for m in second.receive()] == ["kept"]


def test_open_of_unknown_queue_raises(queue_factory: QueueFactory) -> None:
    with pytest.raises(QueueNotFound):
        queue_factory.open(unique("missing"))


# Counts, retention, purge ------------------------------------------------------------------


def test_counts_visible_in_flight_and_oldest_age(queue: Queue) -> None:
    empty = queue.counts()
    assert (empty.visible, empty.in_flight, empty.oldest_age_seconds) == (0, 0, None)

    for i in range(3):
        queue.send(f"m{i}")
    queue.receive(visibility_timeout=600)
    time.sleep(0.05)

    counts = queue.counts()
    assert (counts.visible, counts.in_flight, counts.delayed) == (2, 1, 0)
    assert counts.oldest_age_seconds is not None
    assert 0.05 <= counts.oldest_age_seconds < 60


def test_messages_older_than_retention_are_dropped(queue_factory: QueueFactory, impl: Impl) -> None:
    if not impl.short_retention:
        pytest.skip("retention shorter than 60 s is not allowed")
    queue = queue_factory.create(unique("q"), settings(retention=1))
    queue.send("old")

    time.sleep(1.1)

    assert queue.receive() == []
    counts = queue.counts()
    assert (counts.visible, counts.in_flight, counts.oldest_age_seconds) == (0, 0, None)


def test_purge_deletes_every_message(queue: Queue) -> None:
    queue.send_batch([OutgoingMessage(f"m{i}") for i in range(5)])
    queue.receive(2)

    queue.purge()

    counts = queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)
    assert queue.receive() == []


def test_queues_are_independent(queue_factory: QueueFactory, impl: Impl) -> None:
    a = queue_factory.create(unique("a"), settings())
    b = queue_factory.create(unique("b"), settings())
    a.send("for a")

    assert b.receive() == []
    [message] = a.receive()
    if impl.rejects_stale_handles:
        with pytest.raises(ReceiptHandleInvalid):
            b.delete(message.receipt_handle)
    assert a.counts().in_flight == 1


# Several processes -------------------------------------------------------------------------


def _drain(
    impl: str,
    location: Path,
    queue_name: str,
    worker: int,
    start: multiprocessing.synchronize.Barrier,
) -> None:
    queue = make_factory(impl, location).open(queue_name)
    start.wait(timeout=30)
    seen: list[str] = []
    while messages := queue.receive(5, visibility_timeout=60, wait_seconds=0.5):
        time.sleep(0.01)  # the work, so that the three workers overlap
        for message in messages:
            seen.append(message.message_id)
            queue.delete(message.receipt_handle)
    (location / f"worker-{worker}.txt").write_text("\n".join(seen))


def test_several_processes_process_every_message_exactly_once(
    queue_factory: QueueFactory, impl: Impl, tmp_path: Path
) -> None:
    queue = queue_factory.create(unique("shared"), settings())
    sent: list[str] = []
    for start in range(0, 200, MAX_BATCH):
        batch = [OutgoingMessage(f"m{i}") for i in range(start, start + MAX_BATCH)]
        sent.extend(queue.send_batch(batch).sent.values())

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    workers = [
        ctx.Process(target=_drain, args=(impl.name, tmp_path, queue.name, i, barrier))
        for i in range(3)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0, 0]

    processed = [
        line for i in range(3) for line in (tmp_path / f"worker-{i}.txt").read_text().splitlines()
    ]
    assert len(processed) == len(set(processed)) == 200
    assert set(processed) == set(sent)
    counts = queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)
