"""The queue contract: every implementation of `sluice.backends.queue.base` passes these tests.

Written against the interface only. An implementation joins by adding an entry to `IMPLS` and a
branch to `make_factory` (which child processes call too, so it takes only picklable arguments).
The sqs implementation runs against the session's moto server.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.synchronize
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluice.backends.queue.base import (
    MAX_BATCH,
    Message,
    MoveStatus,
    MoveTask,
    OutgoingMessage,
    Queue,
    QueueFactory,
    QueueSettings,
    RedrivePolicy,
)
from sluice.config import EnvConfig
from sluice.errors import (
    BackendBusy,
    BatchTooLarge,
    ConfigError,
    QueueNotFound,
    ReceiptHandleInvalid,
    SluiceError,
    TransientError,
)


@dataclass(frozen=True)
class Impl:
    name: str
    # SQS accepts a stale receipt handle; the embedded queue refuses it.
    rejects_stale_handles: bool
    # SQS documents that a stale handle deletes nothing, but moto deletes the message with any
    # handle it ever issued; the embedded queue never does.
    stale_handle_keeps_message: bool
    # SQS keeps a message at least 60 s, too long to wait for in a test.
    short_retention: bool
    # SQS has the oldest message's age only as a CloudWatch metric, so counts() reports None.
    reports_oldest_age: bool
    # A standard SQS queue delivers in best-effort order (moto happens to keep it).
    ordered: bool
    # SQS (and moto) keep counting receives after the move to the DLQ; the embedded queue
    # restarts the count there.
    dlq_restarts_receive_count: bool
    # Messages for the several-processes test: the moto server answers ~100 requests/s (and
    # each message here costs a delete), so the sqs side sends fewer to keep the suite quick.
    shared_messages: int
    # FIFO (test_queue_fifo.py). A duplicate's send returns the first message's id (moto: a new
    # id; SQS documents only that the duplicate is accepted).
    duplicate_returns_first_id: bool = True
    # SQS keeps deduplicating after the first message is deleted; moto compares only with the
    # messages still in the queue.
    deduplicates_after_delete: bool = True
    # SQS gives a message moved to a FIFO DLQ its message id as deduplication id; moto keeps the
    # one it was sent with.
    dlq_replaces_deduplication_id: bool = True


IMPLS = [
    pytest.param(
        Impl(
            "sqlite",
            rejects_stale_handles=True,
            stale_handle_keeps_message=True,
            short_retention=True,
            reports_oldest_age=True,
            ordered=True,
            dlq_restarts_receive_count=True,
            shared_messages=200,
        ),
        id="sqlite",
    ),
    pytest.param(
        Impl(
            "sqs",
            rejects_stale_handles=False,
            stale_handle_keeps_message=False,
            short_retention=False,
            reports_oldest_age=False,
            ordered=False,
            dlq_restarts_receive_count=False,
            shared_messages=100,
            duplicate_returns_first_id=False,
            deduplicates_after_delete=False,
            dlq_replaces_deduplication_id=False,
        ),
        id="sqs",
        marks=pytest.mark.aws,
    ),
]


def make_factory(impl: str, location: Path, endpoint_url: str | None = None) -> QueueFactory:
    if impl == "sqlite":
        from sluice.backends.queue.sqlite import SqliteQueueFactory

        return SqliteQueueFactory(location / "queues.sqlite")
    if impl == "sqs":
        from sluice.backends.queue.sqs import SqsQueueFactory

        assert endpoint_url is not None
        return SqsQueueFactory(_sqs_client(endpoint_url))
    raise ValueError(impl)


@functools.cache
def _sqs_client(endpoint_url: str) -> Any:
    # Built here rather than taken from the `aws_clients` fixture so that spawned children can
    # build theirs the same way (they inherit the fixture's AWS_* variables).
    from sluice.backends.aws import AwsClients
    from tests.moto_server import REGION

    config = EnvConfig(name="moto", backend="aws", region=REGION, endpoint_url=endpoint_url)
    return AwsClients(config).client("sqs")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Impl:
    param: Impl = request.param
    return param


@pytest.fixture
def endpoint_url(impl: Impl, request: pytest.FixtureRequest) -> str | None:
    # Only the sqs implementation needs the moto server; sqlite-only runs never start it.
    if impl.name != "sqs":
        return None
    url: str = request.getfixturevalue("moto_endpoint")
    return url


@pytest.fixture
def queue_factory(impl: Impl, tmp_path: Path, endpoint_url: str | None) -> QueueFactory:
    return make_factory(impl.name, tmp_path, endpoint_url)


def settings(
    visibility: int = 30, retention: int = 3600, redrive: RedrivePolicy | None = None
) -> QueueSettings:
    return QueueSettings(visibility, retention, redrive)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def drain(queue: Queue) -> list[Message]:
    """Receive (and delete) until the queue comes back empty."""
    received: list[Message] = []
    while messages := queue.receive(MAX_BATCH):
        for message in messages:
            queue.delete(message.receipt_handle)
        received.extend(messages)
    return received


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


def test_receive_takes_oldest_first_and_at_most_max_messages(queue: Queue, impl: Impl) -> None:
    for i in range(5):
        queue.send(f"m{i}")

    first = queue.receive(3)
    second = queue.receive(3)

    if impl.ordered:
        assert [m.body for m in first] == ["m0", "m1", "m2"]
        assert [m.body for m in second] == ["m3", "m4"]
    else:
        assert len(first) <= 3 and len(second) <= 3
        rest = [m.body for m in first + second + drain(queue)]
        assert sorted(rest) == [f"m{i}" for i in range(5)]
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

    remaining = queue.receive()
    if remaining or impl.stale_handle_keeps_message:
        [third] = remaining
        assert third.message_id == first.message_id
        assert third.receive_count == 3
        queue.delete(third.receipt_handle)
    assert queue.counts().visible + queue.counts().in_flight == 0


def test_unknown_handle_is_refused(queue: Queue) -> None:
    # Every implementation refuses a handle it never issued (SQS: one not of its shape).
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
    queue_factory: QueueFactory, impl: Impl
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
    assert dead.receive_count == (1 if impl.dlq_restarts_receive_count else 3)
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


def test_settings_read_back_the_redrive_policy_and_an_update_removes_it(
    queue_factory: QueueFactory,
) -> None:
    dlq, source = dead_letter_pair(queue_factory)
    assert source.settings() == settings(redrive=RedrivePolicy(dlq.name, 2))

    queue_factory.create(source.name, settings())

    assert queue_factory.open(source.name).settings() == settings()


def test_open_of_unknown_queue_raises(queue_factory: QueueFactory) -> None:
    with pytest.raises(QueueNotFound):
        queue_factory.open(unique("missing"))


# Counts, retention, purge ------------------------------------------------------------------


def test_counts_visible_in_flight_and_oldest_age(queue: Queue, impl: Impl) -> None:
    empty = queue.counts()
    assert (empty.visible, empty.in_flight, empty.oldest_age_seconds) == (0, 0, None)

    for i in range(3):
        queue.send(f"m{i}")
    queue.receive(visibility_timeout=600)
    time.sleep(0.05)

    counts = queue.counts()
    assert (counts.visible, counts.in_flight, counts.delayed) == (2, 1, 0)
    if impl.reports_oldest_age:
        assert counts.oldest_age_seconds is not None
        assert 0.05 <= counts.oldest_age_seconds < 60
    else:
        assert counts.oldest_age_seconds is None


def test_messages_older_than_retention_are_dropped(queue_factory: QueueFactory, impl: Impl) -> None:
    if not impl.short_retention:
        # SQS keeps messages at least 60 s, too long to wait for here: what can be checked is
        # that a shorter retention is refused before it reaches the service.
        with pytest.raises(ConfigError, match="retention"):
            queue_factory.create(unique("q"), settings(retention=1))
        return
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
    endpoint_url: str | None,
    queue_name: str,
    worker: int,
    start: multiprocessing.synchronize.Barrier,
) -> None:
    queue = make_factory(impl, location, endpoint_url).open(queue_name)
    start.wait(timeout=30)
    seen: list[str] = []
    while messages := queue.receive(5, visibility_timeout=60, wait_seconds=0.5):
        time.sleep(0.01)  # the work, so that the three workers overlap
        for message in messages:
            seen.append(message.message_id)
            queue.delete(message.receipt_handle)
    (location / f"worker-{worker}.txt").write_text("\n".join(seen))


def test_several_processes_process_every_message_exactly_once(
    queue_factory: QueueFactory, impl: Impl, tmp_path: Path, endpoint_url: str | None
) -> None:
    queue = queue_factory.create(unique("shared"), settings())
    sent: list[str] = []
    for start in range(0, impl.shared_messages, MAX_BATCH):
        batch = [OutgoingMessage(f"m{i}") for i in range(start, start + MAX_BATCH)]
        sent.extend(queue.send_batch(batch).sent.values())

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    workers = [
        ctx.Process(target=_drain, args=(impl.name, tmp_path, endpoint_url, queue.name, i, barrier))
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
    assert len(processed) == len(set(processed)) == impl.shared_messages
    assert set(processed) == set(sent)
    counts = queue.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)


# Moving a DLQ's messages back -----------------------------------------------------------


def finished(factory: QueueFactory, task: MoveTask, timeout: float = 60) -> MoveTask:
    """Poll a move task until it stops (a move the backend ran in the call has stopped already)."""
    deadline = time.monotonic() + timeout
    while task.status in (MoveStatus.RUNNING, MoveStatus.CANCELLING):
        assert time.monotonic() < deadline, f"move still running: {task}"
        time.sleep(0.5)
        task = factory.move_task_status(task)
    return task


def dead_letter_pair(queue_factory: QueueFactory) -> tuple[Queue, Queue]:
    dlq = queue_factory.create(unique("dlq"), settings())
    source = queue_factory.create(unique("src"), settings(redrive=RedrivePolicy(dlq.name, 2)))
    return dlq, source


def test_message_move_keeps_body_and_attributes_and_empties_the_dlq(
    queue_factory: QueueFactory,
) -> None:
    dlq, source = dead_letter_pair(queue_factory)
    sent = {
        f'{{"kind": "process_raw_file", "n": {i}}}': {"correlation_id": f"c-{i}", "n": str(i)}
        for i in range(MAX_BATCH + 2)  # more than one batch
    }
    for body, attributes in sent.items():
        dlq.send(body, attributes)

    task = finished(queue_factory, queue_factory.start_message_move(dlq.name, source.name))

    assert (task.status, task.moved) == (MoveStatus.COMPLETED, len(sent))
    counts = dlq.counts()
    assert (counts.visible, counts.in_flight) == (0, 0)
    assert {m.body: dict(m.attributes) for m in drain(source)} == sent


def test_message_move_without_destination_returns_to_the_source_queue(
    queue_factory: QueueFactory,
) -> None:
    dlq, source = dead_letter_pair(queue_factory)
    source.send("failed twice", {"correlation_id": "c-7"})
    for _ in range(2):
        source.receive(visibility_timeout=0)
    assert source.receive() == []  # this receive moved it to the DLQ

    task = finished(queue_factory, queue_factory.start_message_move(dlq.name))

    assert (task.status, task.moved) == (MoveStatus.COMPLETED, 1)
    [back] = source.receive(wait_seconds=5)
    assert (back.body, dict(back.attributes)) == ("failed twice", {"correlation_id": "c-7"})
    assert back.receive_count == 1  # back in the source, the message starts afresh
    assert dlq.receive() == []


def test_message_move_honours_the_rate(queue_factory: QueueFactory) -> None:
    dlq = queue_factory.create(unique("dlq"), settings())
    destination = queue_factory.create(unique("dest"), settings())
    dlq.send_batch([OutgoingMessage(f"m{i}") for i in range(4)])

    started = time.monotonic()
    task = finished(queue_factory, queue_factory.start_message_move(dlq.name, destination.name, 2))
    elapsed = time.monotonic() - started

    assert (task.status, task.moved) == (MoveStatus.COMPLETED, 4)
    assert elapsed >= 0.9  # four messages at two a second: the second pair waits a second
    assert sorted(m.body for m in drain(destination)) == [f"m{i}" for i in range(4)]


def test_message_move_splits_batches_over_the_size_limit(queue_factory: QueueFactory) -> None:
    dlq = queue_factory.create(unique("dlq"), settings())
    destination = queue_factory.create(unique("dest"), settings())
    bodies = [str(i) * 100_000 for i in range(3)]  # one batch of all three would be too large
    for body in bodies:
        dlq.send(body)

    task = finished(queue_factory, queue_factory.start_message_move(dlq.name, destination.name))

    assert (task.status, task.moved) == (MoveStatus.COMPLETED, 3)
    assert sorted(m.body for m in drain(destination)) == bodies


def test_message_move_refuses_bad_requests(queue_factory: QueueFactory) -> None:
    dlq = queue_factory.create(unique("dlq"), settings())
    other = queue_factory.create(unique("other"), settings())
    dlq.send("stays")

    with pytest.raises(QueueNotFound):
        queue_factory.start_message_move(unique("missing"), other.name)
    with pytest.raises(QueueNotFound):
        queue_factory.start_message_move(dlq.name, unique("missing"))
    with pytest.raises(ConfigError):
        queue_factory.start_message_move(dlq.name, dlq.name)
    with pytest.raises(ConfigError):
        queue_factory.start_message_move(dlq.name, other.name, max_per_second=0)
    with pytest.raises(ConfigError):
        queue_factory.start_message_move(dlq.name)  # no queue names it as its DLQ

    assert [m.body for m in dlq.receive()] == ["stays"]


# SQS only: what the interface cannot express -------------------------------------------------


def _fresh_sqs_client(endpoint_url: str, max_attempts: int = 8) -> Any:
    """A client of its own, for tests that stub it or point it nowhere."""
    import boto3
    from botocore.config import Config

    from tests.moto_server import REGION

    config = Config(retries={"max_attempts": max_attempts, "mode": "standard"})
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name=REGION, config=config)


@pytest.mark.aws
def test_sqs_open_takes_a_queue_url(moto_endpoint: str, tmp_path: Path) -> None:
    from sluice.backends.queue.sqs import SqsQueueFactory

    factory = make_factory("sqs", tmp_path, moto_endpoint)
    assert isinstance(factory, SqsQueueFactory)
    queue = factory.create(unique("q"), settings())

    by_url = factory.open(queue.url)
    by_url.send("m")

    assert (by_url.name, by_url.url) == (queue.name, queue.url)
    assert [m.body for m in queue.receive()] == ["m"]
    with pytest.raises(QueueNotFound):
        factory.open(queue.url.rsplit("/", 1)[0] + "/" + unique("missing"))
    with pytest.raises(ConfigError):
        factory.create(unique("q"), settings(retention=59))  # SQS's minimum is 60 s


@pytest.mark.aws
def test_sqs_batch_reports_sqs_refusals_by_entry(moto_endpoint: str) -> None:
    from botocore.stub import Stubber

    from sluice.backends.queue.sqs import SqsQueue

    client = _fresh_sqs_client(moto_endpoint)
    queue = SqsQueue(client, "q", f"{moto_endpoint}/123456789012/q")
    answer = {
        "Successful": [{"Id": "a", "MessageId": "m-a", "MD5OfMessageBody": "-"}],
        "Failed": [
            {"Id": "b", "SenderFault": False, "Code": "InternalError", "Message": "try again"},
            {"Id": "c", "SenderFault": True, "Code": "InvalidParameterValue", "Message": "no"},
        ],
    }
    bodies = {"a": "1", "b": "2", "c": "3", "d": ""}  # "d" is refused before the request
    entries = [OutgoingMessage(body, entry_id=entry_id) for entry_id, body in bodies.items()]

    with Stubber(client) as stub:
        stub.add_response("send_message_batch", answer)
        result = queue.send_batch(entries)

    assert result.sent == {"a": "m-a"}
    assert set(result.failed) == {"b", "c", "d"}
    assert "try again" in result.failed["b"] and "sending again may work" in result.failed["b"]
    assert "sending again" not in result.failed["c"]


@pytest.mark.aws
@pytest.mark.parametrize(
    ("code", "status", "raised"),
    [
        ("AWS.SimpleQueueService.NonExistentQueue", 400, QueueNotFound),
        ("ThrottlingException", 400, BackendBusy),
        ("InternalError", 500, TransientError),
        ("InvalidParameterValue", 400, ConfigError),
        ("ReceiptHandleIsInvalid", 400, ReceiptHandleInvalid),
        ("AWS.SimpleQueueService.MessageNotInflight", 400, ReceiptHandleInvalid),
    ],
)
def test_sqs_errors_become_sluice_errors(
    moto_endpoint: str, code: str, status: int, raised: type[Exception]
) -> None:
    from botocore.stub import Stubber

    from sluice.backends.queue.sqs import SqsQueue

    client = _fresh_sqs_client(moto_endpoint, max_attempts=1)
    queue = SqsQueue(client, "q", f"{moto_endpoint}/123456789012/q")
    with Stubber(client) as stub:
        stub.add_client_error("change_message_visibility", code, "SQS says no", status)
        with pytest.raises(raised) as caught:
            queue.change_visibility("handle", 0)
    assert isinstance(caught.value, SluiceError)
    if raised is not QueueNotFound:  # which says which queue instead
        assert "SQS says no" in caught.value.message


@pytest.mark.aws
def test_sqs_unreachable_endpoint_is_transient(moto_endpoint: str) -> None:
    from sluice.backends.queue.sqs import SqsQueueFactory

    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = _fresh_sqs_client(f"http://127.0.0.1:{port}", max_attempts=1)
    with pytest.raises(TransientError):
        SqsQueueFactory(client).open("q")
