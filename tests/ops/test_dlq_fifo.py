"""`sluice dlq` on FIFO queues: redrive keeps group ids (and attributes and each group's order),
purge and restore round-trip them, and a FIFO/standard mismatch is refused before anything moves.
The scenarios run on the embedded backend and on the AWS one (a moto server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from sluice.backends.queue.base import Message, Queue, QueueSettings, RedrivePolicy
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri
from sluice.messages import process_raw_file
from sluice.ops.dlq import (
    DlqPair,
    list_messages,
    open_pair,
    purge,
    read_backup,
    redrive_all,
    redrive_message,
    restore,
)
from tests.aws.conftest import aws_config, aws_env  # noqa: F401 (fixtures)
from tests.contract.test_queue import drain
from tests.ops.test_dlq import snapshot
from tests.ops.test_dlq_cli import cli

GROUPS = ("device-a", "device-b")


def fifo_queues(env: Env) -> tuple[Queue, Queue]:
    """A FIFO DLQ and the FIFO queue whose redrive policy names it."""
    tag = uuid.uuid4().hex[:8]
    dlq = env.queues.create(f"orders-dlq-{tag}.fifo", QueueSettings(30, 3600, fifo=True))
    policy = RedrivePolicy(dlq.name, 3)
    source = env.queues.create(f"orders-{tag}.fifo", QueueSettings(30, 3600, policy, fifo=True))
    return dlq, source


def dead_letter(dlq: Queue, count: int) -> dict[str, tuple[str, dict[str, str]]]:
    """`count` valid messages in the DLQ, alternating between two groups: body → (group,
    attributes)."""
    sent: dict[str, tuple[str, dict[str, str]]] = {}
    for i in range(count):
        message = process_raw_file(ObjectUri("raw", f"raw/fifo/{i}.gz"))
        attributes = {**message.attributes, "n": str(i)}
        group = GROUPS[i % 2]
        dlq.send(message.body, attributes, group_id=group, deduplication_id=f"d-{i}")
        sent[message.body] = (group, attributes)
    return sent


def in_group_order(messages: list[Message]) -> bool:
    """Whether each group's messages come in the order they were sent (attribute `n`)."""
    for group in GROUPS:
        numbers = [int(m.attributes["n"]) for m in messages if m.group_id == group]
        if numbers != sorted(numbers):
            return False
    return True


def check_redrive_all_keeps_groups(env: Env) -> None:
    dlq, source = fifo_queues(env)
    sent = dead_letter(dlq, 6)
    body = next(iter(sent))  # again, without a correlation id: refused, it stays
    refused = dlq.send(body, {"n": "9"}, group_id="x", deduplication_id="x")
    pair = open_pair(env, dlq.name, source.name)
    listed = {m.message_id: m.group_id for m in list_messages(env, pair).messages}
    assert sorted(map(str, listed.values())) == sorted([*GROUPS, *GROUPS, *GROUPS, "x"])

    result = redrive_all(env, pair)

    assert result.ok and len(result.redriven) == 6
    assert [r.message_id for r in result.refused] == [refused]
    moved = drain(source)
    assert {m.body: (m.group_id, dict(m.attributes)) for m in moved} == sent
    assert in_group_order(moved)
    assert sorted(str(m.deduplication_id) for m in moved) == [f"d-{i}" for i in range(6)]
    [left] = drain(dlq)
    assert (left.message_id, left.body, left.group_id) == (refused, body, "x")


def check_purge_then_restore_keeps_groups(env: Env, tmp: Path) -> None:
    dlq, _ = fifo_queues(env)
    # Two groups of 6: the first read holds 10, and both groups wait for a second round.
    sent = dead_letter(dlq, 12)
    backup = tmp / f"{dlq.name}.jsonl"

    purged = purge(env, DlqPair(dlq), backup)

    assert purged.ok and purged.backed_up == purged.deleted == 12
    lines = read_backup(backup)
    assert {m.body: m.group_id for m in lines} == {body: g for body, (g, _) in sent.items()}
    assert sorted(str(m.deduplication_id) for m in lines) == sorted(f"d-{i}" for i in range(12))
    assert dlq.counts().visible == 0
    first = restore(env, backup, dlq)
    again = restore(env, backup, dlq)  # within the deduplication window: sent once
    assert first.ok and again.ok and len(first.sent) == 12
    restored = drain(dlq)
    assert {m.body: (m.group_id, dict(m.attributes)) for m in restored} == sent
    assert in_group_order(restored)


def check_fifo_and_standard_do_not_mix(env: Env, tmp: Path) -> None:
    fifo_dlq, fifo_source = fifo_queues(env)
    dead_letter(fifo_dlq, 2)
    standard_dlq, standard = env.processing_dlq, env.processing_queue
    message = process_raw_file(ObjectUri("raw", "raw/standard.gz"))
    standard_dlq.send(message.body, message.attributes)
    before = (snapshot(fifo_dlq), snapshot(standard_dlq))

    for pair in (DlqPair(fifo_dlq, standard), DlqPair(standard_dlq, fifo_source)):
        for dry_run in (True, False):
            with pytest.raises(ConfigError, match="FIFO") as refused:
                redrive_all(env, pair, dry_run=dry_run)
            assert refused.value.hint
        with pytest.raises(ConfigError, match="FIFO"):
            redrive_message(env, pair, next(iter(snapshot(pair.dlq)))[0])
    backup = tmp / f"{fifo_dlq.name}.jsonl"
    assert purge(env, DlqPair(fifo_dlq), backup).ok
    with pytest.raises(ConfigError, match="FIFO queue"):
        restore(env, backup, standard)

    assert snapshot(standard_dlq) == before[1]
    assert standard.counts().visible == fifo_source.counts().visible == 0
    assert restore(env, backup, fifo_dlq).ok  # where it belongs
    assert {(body, attrs) for _, body, attrs in snapshot(fifo_dlq)} == {
        (body, attrs) for _, body, attrs in before[0]
    }


# Embedded ---------------------------------------------------------------------------------------


def test_redrive_all_from_a_fifo_dlq_keeps_every_group_id(env: Env) -> None:
    check_redrive_all_keeps_groups(env)


def test_purge_with_backup_then_restore_keeps_group_ids(env: Env, tmp_path: Path) -> None:
    check_purge_then_restore_keeps_groups(env, tmp_path)


def test_fifo_and_standard_queues_are_not_mixed(env: Env, tmp_path: Path) -> None:
    check_fifo_and_standard_do_not_mix(env, tmp_path)


def test_the_cli_shows_group_ids_and_refuses_a_mismatch(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    dlq, _ = fifo_queues(env)
    dead_letter(dlq, 2)

    code, out, _ = cli(capsys, env, "dlq", "list", "--dlq-url", dlq.name)
    assert code == 0 and "group" in out  # a column of its own (the table folds its cells)
    code, out, _ = cli(capsys, env, "--json", "dlq", "list", "--dlq-url", dlq.name)
    messages = json.loads(out)["messages"]
    assert sorted(m["group_id"] for m in messages) == sorted(GROUPS)
    first = messages[0]["message_id"]
    code, out, _ = cli(capsys, env, "dlq", "inspect", "--dlq-url", dlq.name, "--message-id", first)
    assert code == 0 and "group id" in out and "deduplication id" in out
    code, out, _ = cli(
        capsys, env, "--json", "dlq", "inspect", "--dlq-url", dlq.name, "--message-id", first
    )
    assert json.loads(out)["message"]["group_id"] == messages[0]["group_id"]

    target = env.config.queues.processing
    code, _, err = cli(
        capsys, env, "dlq", "redrive-all", "--dlq-url", dlq.name, "--target-url", target
    )
    assert code == 1 and "FIFO" in err and dlq.counts().visible == 2


# AWS (moto) -------------------------------------------------------------------------------------


@pytest.mark.aws
def test_fifo_dlq_on_aws(aws_env: Env, tmp_path: Path) -> None:  # noqa: F811
    check_redrive_all_keeps_groups(aws_env)
    check_purge_then_restore_keeps_groups(aws_env, tmp_path)
    check_fifo_and_standard_do_not_mix(aws_env, tmp_path)
