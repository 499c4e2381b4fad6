"""The FIFO part of the queue contract: every implementation passes these too.

Same fixtures and implementations as test_queue.py (the sqs one on the session's moto server).
What moto does not do as SQS does is named in `Impl` and checked only where it holds.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from sluice.backends.queue.base import (
    MAX_BATCH,
    MoveStatus,
    OutgoingMessage,
    Queue,
    QueueFactory,
    QueueSettings,
    RedrivePolicy,
)
from sluice.backends.queue.move import resend
from sluice.errors import ConfigError
from tests.contract import test_queue as contract
from tests.contract.test_queue import Impl, drain, finished, settings, unique

# The contract's fixtures, shared rather than copied.
impl = contract.impl
endpoint_url = contract.endpoint_url
queue_factory = contract.queue_factory
queue = contract.queue  # a standard queue


def fifo_settings(
    *, content_based: bool = False, redrive: RedrivePolicy | None = None
) -> QueueSettings:
    return QueueSettings(30, 3600, redrive, fifo=True, content_based_deduplication=content_based)


def fifo_name(prefix: str) -> str:
    return unique(prefix) + ".fifo"


@pytest.fixture
def fifo(queue_factory: QueueFactory) -> Queue:
    return queue_factory.create(fifo_name("f"), fifo_settings())


def by_group(bodies: list[str]) -> dict[str, list[str]]:
    """Bodies "group-n" in the order given, per group."""
    out: dict[str, list[str]] = {}
    for body in bodies:
        out.setdefault(body.split("-")[0], []).append(body)
    return out


# Sending and receiving -------------------------------------------------------------------------


def test_group_and_deduplication_ids_round_trip(fifo: Queue) -> None:
    one = fifo.send("one", {"correlation_id": "c-1"}, group_id="g-1", deduplication_id="d-1")
    batch = fifo.send_batch(
        [OutgoingMessage(f"b{i}", {"i": str(i)}, f"e{i}", "g-2", f"d-b{i}") for i in range(2)]
    )

    received = {m.message_id: m for m in fifo.receive(MAX_BATCH)}

    assert set(received) == {one, *batch.sent.values()}
    first = received[one]
    assert (first.body, dict(first.attributes)) == ("one", {"correlation_id": "c-1"})
    assert (first.group_id, first.deduplication_id) == ("g-1", "d-1")
    for i in range(2):
        message = received[batch.sent[f"e{i}"]]
        assert (message.group_id, message.deduplication_id) == ("g-2", f"d-b{i}")
    assert fifo.settings() == fifo_settings()


def test_a_group_is_delivered_in_send_order(fifo: Queue) -> None:
    entries = [
        OutgoingMessage(f"{group}-{n}", group_id=group, deduplication_id=f"{group}-{n}")
        for n in range(3)
        for group in ("a", "b", "c")
    ]
    fifo.send_batch(entries)

    order: list[str] = []
    while messages := fifo.receive(2):
        order += [m.body for m in messages]
        for message in messages:
            fifo.delete(message.receipt_handle)

    assert by_group(order) == {g: [f"{g}-0", f"{g}-1", f"{g}-2"] for g in ("a", "b", "c")}


def test_a_group_waits_while_one_of_its_messages_is_in_flight(fifo: Queue) -> None:
    for body, group in (("a-1", "a"), ("a-2", "a"), ("b-1", "b")):
        fifo.send(body, group_id=group, deduplication_id=body)

    [first] = fifo.receive()
    assert first.body in ("a-1", "b-1")  # the head of a group
    others = fifo.receive(MAX_BATCH)
    assert others and all(m.group_id != first.group_id for m in others)

    fifo.change_visibility(first.receipt_handle, 0)  # back in the queue, still its group's head
    [again] = fifo.receive()
    assert (again.message_id, again.receive_count) == (first.message_id, 2)
    for message in (again, *others):
        fifo.delete(message.receipt_handle)
    rest = drain(fifo)
    assert sorted(m.body for m in (again, *others, *rest)) == ["a-1", "a-2", "b-1"]


def test_a_deduplication_id_sent_again_within_the_window_is_not_enqueued(
    fifo: Queue,
    impl: Impl,
) -> None:
    first = fifo.send("one", group_id="g", deduplication_id="d-1")
    again = fifo.send("two", group_id="g", deduplication_id="d-1")
    batch = fifo.send_batch(
        [
            OutgoingMessage("three", group_id="g", deduplication_id="d-1"),
            OutgoingMessage("four", group_id="g", deduplication_id="d-2"),
            OutgoingMessage("five", group_id="g", deduplication_id="d-2"),
        ]
    )

    assert set(batch.sent) == {"0", "1", "2"} and batch.failed == {}  # all accepted
    assert [m.body for m in drain(fifo)] == ["one", "four"]
    if impl.duplicate_returns_first_id:
        assert again == batch.sent["0"] == first
        assert batch.sent["2"] == batch.sent["1"]
    if impl.deduplicates_after_delete:
        fifo.send("six", group_id="g", deduplication_id="d-1")
        assert fifo.receive() == []


def test_content_based_deduplication_hashes_the_body(queue_factory: QueueFactory) -> None:
    hashing = queue_factory.create(fifo_name("cb"), fifo_settings(content_based=True))

    hashing.send("same", group_id="g")
    hashing.send("same", group_id="h")  # the window is the queue's, across groups
    hashing.send("other", group_id="g")
    hashing.send("same", group_id="g", deduplication_id="explicit")  # a given id wins

    received = drain(hashing)
    assert sorted(m.body for m in received) == ["other", "same", "same"]
    same = hashlib.sha256(b"same").hexdigest()
    assert sorted(str(m.deduplication_id) for m in received) == sorted(
        ["explicit", same, hashlib.sha256(b"other").hexdigest()]
    )
    assert hashing.settings() == fifo_settings(content_based=True)


# Bad inputs ------------------------------------------------------------------------------------


def test_messages_a_queue_type_refuses(
    fifo: Queue,
    queue: Queue,
) -> None:
    for bad in (
        {},  # no group id
        {"group_id": "g"},  # no deduplication id, and the queue does not hash bodies
        {"group_id": "x" * 129, "deduplication_id": "d"},
        {"group_id": "g", "deduplication_id": "y" * 129},
        {"group_id": "with space", "deduplication_id": "d"},
        {"group_id": "g", "deduplication_id": "dé"},
        {"group_id": "", "deduplication_id": "d"},
    ):
        with pytest.raises(ConfigError) as refused:
            fifo.send("m", **bad)
        assert refused.value.hint, bad
    for bad in ({"group_id": "g"}, {"deduplication_id": "d"}):
        with pytest.raises(ConfigError, match="standard"):
            queue.send("m", **bad)

    punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    fifo.send("longest", group_id="x" * 128, deduplication_id=punctuation)
    result = fifo.send_batch(
        [
            OutgoingMessage("ok", entry_id="ok", group_id="g", deduplication_id="d-ok"),
            OutgoingMessage("no group", entry_id="no-group", deduplication_id="d-1"),
            OutgoingMessage("bad", entry_id="bad", group_id="g g", deduplication_id="d-2"),
        ]
    )
    assert set(result.sent) == {"ok"} and set(result.failed) == {"no-group", "bad"}
    assert "group id" in result.failed["no-group"]
    assert sorted(m.body for m in drain(fifo)) == ["longest", "ok"]
    assert queue.receive() == []


def test_queue_settings_a_fifo_queue_refuses(queue_factory: QueueFactory) -> None:
    standard_dlq = queue_factory.create(unique("dlq"), settings())
    fifo_dlq = queue_factory.create(fifo_name("dlq"), fifo_settings())
    too_long = (unique("n") + "x" * 80)[:76] + ".fifo"
    for name, bad in (
        (fifo_name("q"), settings()),  # a .fifo name for a standard queue
        (unique("q"), fifo_settings()),  # a FIFO queue without the suffix
        (unique("q"), QueueSettings(30, 3600, content_based_deduplication=True)),
        (too_long, fifo_settings()),
        (fifo_name("q"), fifo_settings(redrive=RedrivePolicy(standard_dlq.name, 2))),
        (unique("q"), settings(redrive=RedrivePolicy(fifo_dlq.name, 2))),
    ):
        with pytest.raises(ConfigError):
            queue_factory.create(name, bad)

    longest = queue_factory.create(too_long[1:], fifo_settings(content_based=True))
    queue_factory.create(longest.name, fifo_settings())  # an update may turn hashing off
    assert queue_factory.open(longest.name).settings() == fifo_settings()


# Dead letters and moves ------------------------------------------------------------------------


def test_a_message_dead_lettered_from_a_fifo_queue_keeps_its_group(
    queue_factory: QueueFactory,
    impl: Impl,
) -> None:
    dlq = queue_factory.create(fifo_name("dlq"), fifo_settings())
    source = queue_factory.create(
        fifo_name("src"), fifo_settings(redrive=RedrivePolicy(dlq.name, 1))
    )
    sent = source.send("m", {"correlation_id": "c-1"}, group_id="g", deduplication_id="d-1")

    source.receive(visibility_timeout=0)
    assert source.receive() == []  # this receive moved it to the DLQ

    [dead] = dlq.receive(wait_seconds=5)
    assert (dead.message_id, dead.body, dict(dead.attributes)) == (
        sent,
        "m",
        {"correlation_id": "c-1"},
    )
    assert dead.group_id == "g"
    replaced = impl.dlq_replaces_deduplication_id
    assert dead.deduplication_id == (dead.message_id if replaced else "d-1")


def test_a_move_between_fifo_queues_keeps_groups_order_and_ids(
    queue_factory: QueueFactory,
) -> None:
    dlq = queue_factory.create(fifo_name("dlq"), fifo_settings())
    destination = queue_factory.create(fifo_name("dest"), fifo_settings())
    sent = {f"{group}-{n}": {"correlation_id": f"c-{group}{n}"} for n in range(3) for group in "ab"}
    dlq.send_batch(
        [
            OutgoingMessage(body, attributes, group_id=body[0], deduplication_id=f"d-{body}")
            for body, attributes in sent.items()
        ]
    )

    task = finished(queue_factory, queue_factory.start_message_move(dlq.name, destination.name))

    assert (task.status, task.moved) == (MoveStatus.COMPLETED, len(sent))
    moved = drain(destination)
    assert {m.body: dict(m.attributes) for m in moved} == sent
    assert all((m.group_id, m.deduplication_id) == (m.body[0], f"d-{m.body}") for m in moved)
    assert by_group([m.body for m in moved]) == {g: [f"{g}-{n}" for n in range(3)] for g in "ab"}
    assert dlq.receive() == []


def test_a_move_retried_after_a_crash_does_not_enqueue_twice(
    queue_factory: QueueFactory,
) -> None:
    dlq = queue_factory.create(fifo_name("dlq"), fifo_settings())
    destination = queue_factory.create(fifo_name("dest"), fifo_settings())
    dlq.send("m", group_id="g", deduplication_id="d-1")
    # The first mover sent the message, then died before deleting it from the DLQ.
    [held] = dlq.receive(visibility_timeout=60)
    assert destination.send_batch([resend(held, "0", into_fifo=True)]).sent
    dlq.change_visibility(held.receipt_handle, 0)

    task = finished(queue_factory, queue_factory.start_message_move(dlq.name, destination.name))

    assert task.status is MoveStatus.COMPLETED
    assert [m.body for m in drain(destination)] == ["m"]
    assert dlq.receive() == []


def test_a_move_between_a_fifo_and_a_standard_queue_is_refused(
    queue_factory: QueueFactory,
) -> None:
    fifo_queue = queue_factory.create(fifo_name("f"), fifo_settings())
    standard = queue_factory.create(unique("s"), settings())
    fifo_queue.send("f", group_id="g", deduplication_id="d")
    standard.send("s")

    for source, destination in ((fifo_queue, standard), (standard, fifo_queue)):
        with pytest.raises(ConfigError, match="FIFO") as refused:
            queue_factory.start_message_move(source.name, destination.name)
        assert refused.value.hint

    assert [m.body for m in drain(fifo_queue)] == ["f"]
    assert [m.body for m in drain(standard)] == ["s"]


# The embedded queue only -----------------------------------------------------------------------

# The queue database as it was before FIFO queues.
_OLD_SCHEMA = """
CREATE TABLE queues (name TEXT PRIMARY KEY, visibility_timeout INTEGER NOT NULL,
    retention_seconds INTEGER NOT NULL, dead_letter_queue TEXT, max_receive_count INTEGER);
CREATE TABLE queue_messages (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, attributes TEXT NOT NULL,
    sent_at REAL NOT NULL, visible_at REAL NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE);
CREATE INDEX queue_messages_by_age ON queue_messages (queue, sent_at, visible_at);
INSERT INTO queues VALUES ('old', 30, 3600, NULL, NULL);
"""


def test_sqlite_opens_a_queue_database_from_before_fifo_queues(tmp_path: Path) -> None:
    from sluice.backends.queue.sqlite import SqliteQueueFactory

    path = tmp_path / "queues.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SCHEMA)
        conn.execute(
            "INSERT INTO queue_messages (queue, message_id, body, attributes, sent_at,"
            " visible_at) VALUES ('old', 'm-1', 'kept', '{\"k\": \"v\"}', ?, 0)",
            (time.time(),),
        )
    conn.close()

    factory = SqliteQueueFactory(path)
    SqliteQueueFactory(path)  # a second opening finds the columns there

    old = factory.open("old")
    assert old.settings() == settings(retention=3600)
    [kept] = old.receive()
    assert (kept.message_id, kept.body, dict(kept.attributes), kept.group_id) == (
        "m-1",
        "kept",
        {"k": "v"},
        None,
    )
    fifo = factory.create(fifo_name("new"), fifo_settings())
    fifo.send("new", group_id="g", deduplication_id="d")
    assert [m.group_id for m in fifo.receive()] == ["g"]


def test_sqlite_deduplication_window_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.backends.queue import sqlite

    # Five minutes is too long to wait for here.
    monkeypatch.setattr(sqlite, "DEDUPLICATION_WINDOW_SECONDS", 0.3)
    fifo = sqlite.SqliteQueueFactory(tmp_path / "q.sqlite").create("q.fifo", fifo_settings())
    first = fifo.send("one", group_id="g", deduplication_id="d")
    assert fifo.send("again", group_id="g", deduplication_id="d") == first

    time.sleep(0.4)

    assert fifo.send("later", group_id="g", deduplication_id="d") != first
    assert [m.body for m in drain(fifo)] == ["one", "later"]
