"""`sluice dlq` on the embedded backend: poison objects through the real worker, then list,
inspect, explain, redrive (with faults injected), purge and restore. The scenario functions are
shared with the AWS tests (test_dlq_aws.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from sluice.backends.queue.base import OutgoingMessage, Queue, SendBatchResult
from sluice.env import Env
from sluice.errors import ConfigError, ProtectedEnvironment
from sluice.layout import ObjectUri, raw_key
from sluice.messages import process_raw_file
from sluice.ops.dlq import (
    Category,
    DlqPair,
    explain,
    inspect_message,
    list_messages,
    open_pair,
    purge,
    read_backup,
    redrive_all,
    redrive_message,
    restore,
)
from sluice.ops.dlq.metrics import metrics_path, read_counters
from sluice.process.worker import run_worker
from tests.conftest import ARRIVED, line, make_event, put_raw

CORRUPT = b"\x1f\x8b\x08\x00garbage"


@dataclass(frozen=True)
class Poisoned:
    corrupt: ObjectUri
    missing: ObjectUri
    no_correlation: str  # message ids of the two invalid messages
    not_json: str


def snapshot(queue: Queue) -> set[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """Every message of the queue (id, body, attributes), received and released at once."""
    seen: dict[str, tuple[str, str, tuple[tuple[str, str], ...]]] = {}
    handles = []
    for _ in range(20):
        batch = queue.receive(10, visibility_timeout=30, wait_seconds=0)
        if not batch:
            break
        for m in batch:
            seen[m.message_id] = (m.message_id, m.body, tuple(sorted(m.attributes.items())))
            handles.append(m.receipt_handle)
    for handle in handles:
        queue.change_visibility(handle, 0)
    return set(seen.values())


def contents(queue: Queue) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Bodies and attributes, without ids (which a move or a restore changes)."""
    return sorted((body, attrs) for _, body, attrs in snapshot(queue))


def poison(env: Env) -> Poisoned:
    """A corrupt gzip and a missing object go through the real worker into the DLQ; two
    invalid messages (no correlation id, a non-JSON body) are put there directly."""
    corrupt = put_raw(env, [], raw=CORRUPT)
    missing = ObjectUri(env.config.buckets.raw, raw_key(ARRIVED))
    for uri in (corrupt, missing):
        message = process_raw_file(uri)
        env.processing_queue.send(message.body, message.attributes)
    stats = run_worker(env, until_idle=True)
    assert stats.dead_lettered == 2, stats.errors
    dlq = env.processing_dlq
    body = process_raw_file(put_raw(env, [line(make_event("e-ok"))])).body
    no_correlation = dlq.send(body, {"origin": "hand-made"})
    not_json = dlq.send("this is not json", {"correlation_id": "c-not-json"})
    return Poisoned(corrupt, missing, no_correlation, not_json)


def fix(env: Env, poisoned: Poisoned) -> None:
    """The causes fixed: the corrupt object rewritten, the missing one put back."""
    for uri in (poisoned.corrupt, poisoned.missing):
        put_raw(env, [line(make_event(f"e-{uri.key[-8:]}"))], key=uri.key)


def check_reading_leaves_the_queue_as_it_was(env: Env, poisoned: Poisoned) -> None:
    pair = open_pair(env)
    before_counts, before = pair.dlq.counts(), snapshot(pair.dlq)
    assert len(before) == before_counts.visible == 4

    listing = list_messages(env, pair)
    by_source = {m.sources[0]: m for m in listing.messages if m.sources}
    corrupt, missing = by_source[str(poisoned.corrupt)], by_source[str(poisoned.missing)]
    assert corrupt.category is Category.CORRUPT_RAW_OBJECT and "CorruptObject" in corrupt.reason
    assert missing.category is Category.MISSING_RAW_OBJECT and "ObjectNotFound" in missing.reason
    assert corrupt.failure is not None and corrupt.failure.correlation_id == corrupt.correlation_id
    assert corrupt.kind == "process_raw_file" and corrupt.receive_count >= 1
    assert 0 < corrupt.expires_in_seconds <= env.config.dlq_retention_seconds
    assert listing.cost.messages_received == 4
    assert pair.dlq.counts().visible == before_counts.visible
    assert snapshot(pair.dlq) == before  # an immediate receive still gets every one

    found = inspect_message(env, pair, corrupt.message_id)
    assert found.body and found.attributes["correlation_id"] == corrupt.correlation_id
    assert found.validation.valid
    [history] = found.history.values()
    assert [e.error_class for e in history] == ["CorruptObject"]
    assert found.cost.messages_received >= 1
    assert pair.dlq.counts().visible == before_counts.visible
    assert snapshot(pair.dlq) == before

    explained = explain(env, pair)
    groups = {g.category: g for g in explained.groups}
    assert explained.total == 4 and explained.complete
    assert groups[Category.CORRUPT_RAW_OBJECT].message_ids == [corrupt.message_id]
    assert groups[Category.MISSING_RAW_OBJECT].message_ids == [missing.message_id]
    assert groups[Category.MISSING_CORRELATION_ID].message_ids == [poisoned.no_correlation]
    assert groups[Category.INVALID_MESSAGE].message_ids == [poisoned.not_json]
    assert all("sluice" in g.action for g in explained.groups)
    assert snapshot(pair.dlq) == before


def check_redrive_after_the_fix(env: Env, poisoned: Poisoned) -> None:
    fix(env, poisoned)
    pair = open_pair(env)
    dry = redrive_all(env, pair, dry_run=True)
    assert dry.valid == 2 and not dry.redriven and pair.dlq.counts().visible == 4

    result = redrive_all(env, pair)
    assert len(result.redriven) == 2 and result.ok
    refused = {r.message_id: r.category for r in result.refused}
    assert refused == {
        poisoned.no_correlation: Category.MISSING_CORRELATION_ID,
        poisoned.not_json: Category.INVALID_MESSAGE,
    }
    assert pair.dlq.counts().visible == 2
    assert {m[0] for m in snapshot(pair.dlq)} == set(refused)

    stats = run_worker(env, until_idle=True)
    assert stats.completed == 2 and stats.dead_lettered == 0, stats.errors
    for uri in (poisoned.corrupt, poisoned.missing):
        record = env.ledger.get(uri.bucket, uri.key)
        # A rewritten object is a new input: its attempts restart, and one attempt was made.
        assert record is not None and record.status.value == "completed"
        assert record.attempts == 1
    assert run_worker(env, until_idle=True).messages == 0


def check_purge_and_restore(env: Env, tmp: Path) -> None:
    pair = open_pair(env)
    before = contents(pair.dlq)
    backup = tmp / "dlq.jsonl"
    result = purge(env, pair, backup)
    assert result.ok and result.backed_up == result.deleted == len(before)
    assert pair.dlq.counts().visible == 0
    saved = read_backup(backup)
    assert sorted((m.body, tuple(sorted(m.attributes.items()))) for m in saved) == before
    assert all(m.sha256 and m.receive_count >= 1 for m in saved)

    restored = restore(env, backup, pair.dlq)
    assert restored.ok and len(restored.sent) == len(before)
    assert contents(pair.dlq) == before


# Tests ------------------------------------------------------------------------------------------


def test_list_inspect_and_explain_leave_the_dlq_as_it_was(env: Env) -> None:
    check_reading_leaves_the_queue_as_it_was(env, poison(env))


def test_redrive_all_moves_the_valid_ones_once_the_cause_is_fixed(env: Env) -> None:
    check_redrive_after_the_fix(env, poison(env))


def test_purge_with_backup_then_restore_gives_back_every_message(env: Env, tmp_path: Path) -> None:
    poison(env)
    check_purge_and_restore(env, tmp_path)


class FlakyQueue:
    """The target queue, failing a random part of each batch's entries (fault injection)."""

    def __init__(self, inner: Queue, seed: int, failure_rate: float = 0.4) -> None:
        self._inner = inner
        self.name = inner.name
        self._random = random.Random(seed)
        self._rate = failure_rate

    def send_batch(self, entries: Sequence[OutgoingMessage]) -> SendBatchResult:
        failing = [e for e in entries if self._random.random() < self._rate]
        passing = [e for e in entries if e not in failing]
        sent = self._inner.send_batch(passing).sent if passing else {}
        failed = {e.entry_id: "InternalError: injected (sending again may work)" for e in failing}
        return SendBatchResult(sent=dict(sent), failed=failed)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_with_sends_failing_at_random_no_message_is_lost(env: Env) -> None:
    check_no_message_lost(env, total=25)


def check_no_message_lost(env: Env, total: int) -> None:
    dlq, target = env.processing_dlq, env.processing_queue
    for i in range(total):
        message = process_raw_file(ObjectUri("raw", f"raw/x/{i}.gz"))
        dlq.send(message.body, message.attributes)
    expected = contents(dlq)
    first = redrive_all(env, DlqPair(dlq, target), max_messages=5)  # the batch limit holds
    assert len(first.redriven) == 5 and target.counts().visible == 5
    for run in range(12):
        pair = DlqPair(dlq, FlakyQueue(target, seed=run))  # type: ignore[arg-type]
        result = redrive_all(env, pair)
        assert not result.refused
        # Every message is in exactly one place after each run: lost = 0, doubled = 0.
        assert dlq.counts().visible + target.counts().visible == total
        if dlq.counts().visible == 0:
            break
        assert result.failed and all("injected" in r for r in result.failed.values())
    assert dlq.counts().visible == 0 and contents(target) == expected


def test_redrive_one_message_and_refuse_an_invalid_one(env: Env) -> None:
    poisoned = poison(env)
    fix(env, poisoned)
    pair = open_pair(env)
    listing = list_messages(env, pair)
    corrupt = next(m for m in listing.messages if str(poisoned.corrupt) in m.sources)
    moved = redrive_message(env, pair, corrupt.message_id)
    assert list(moved.redriven) == [corrupt.message_id] and not moved.refused
    refused = redrive_message(env, pair, poisoned.no_correlation)
    assert not refused.redriven and refused.refused[0].category == "missing_correlation_id"
    assert pair.dlq.counts().visible == 3 and env.processing_queue.counts().visible == 1
    [sent] = snapshot(env.processing_queue)
    assert dict(sent[2])["correlation_id"] == corrupt.correlation_id  # attributes kept


def test_protected_environment_and_dry_run_change_nothing(env: Env, tmp_path: Path) -> None:
    poisoned = poison(env)
    fix(env, poisoned)
    prod = replace(env, config=replace(env.config, name="prod", protected=True))
    pair = open_pair(prod)
    before = snapshot(pair.dlq)
    with pytest.raises(ProtectedEnvironment) as refused:
        redrive_all(prod, pair, command="sluice --env prod dlq redrive-all")
    assert refused.value.hint and "--yes" in refused.value.hint
    with pytest.raises(ProtectedEnvironment):
        purge(prod, pair, tmp_path / "b.jsonl")
    with pytest.raises(ProtectedEnvironment):
        redrive_message(prod, pair, poisoned.not_json)
    assert purge(prod, pair, tmp_path / "b.jsonl", dry_run=True).backed_up == 0
    assert not (tmp_path / "b.jsonl").exists() and snapshot(pair.dlq) == before
    assert env.processing_queue.counts().visible == 0
    assert len(redrive_all(prod, pair, yes=True).redriven) == 2


def test_bad_inputs_are_refused_with_a_hint(env: Env, tmp_path: Path) -> None:
    from sluice.errors import QueueNotFound

    poison(env)
    pair = open_pair(env)
    with pytest.raises(ConfigError, match="no message") as unknown:
        inspect_message(env, pair, "no-such-id")
    assert unknown.value.hint and "dlq list" in unknown.value.hint
    with pytest.raises(ConfigError, match="no message"):
        redrive_message(env, pair, "no-such-id")
    for bad in (0, 51):
        with pytest.raises(ConfigError):
            list_messages(env, pair, max_messages=bad)
    assert len(list_messages(env, pair, max_messages=51, everything=True).messages) == 4
    for limit, rate in ((0, None), (10_001, None), (10, 0), (10, 501)):
        with pytest.raises(ConfigError):
            redrive_all(env, pair, max_messages=limit, rate=rate)
    with pytest.raises(QueueNotFound):
        open_pair(env, "https://sqs.example/123/nowhere")
    with pytest.raises(QueueNotFound):
        open_pair(env, target="no-such-queue")
    with pytest.raises(ConfigError, match="itself"):
        open_pair(env, env.config.queues.processing_dlq, env.config.queues.processing_dlq)
    other = env.queues.create("lonely-dlq", env.processing_dlq.settings())
    with pytest.raises(ConfigError, match="go back to") as no_target:
        redrive_all(env, open_pair(env, other.name))
    assert no_target.value.hint and "--target-url" in no_target.value.hint
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"oneOf": []}))
    for name in ("bad.json", "odd.json", "absent.json"):
        with pytest.raises(ConfigError):
            open_pair(env, schema_path=tmp_path / name)
    backup = tmp_path / "exists.jsonl"
    backup.write_text("")
    with pytest.raises(ConfigError, match="never overwritten"):
        purge(env, pair, backup)
    backup.write_text('{"message_id": "x"}\n')
    with pytest.raises(ConfigError, match="not a backup line"):
        restore(env, backup, pair.dlq)
    assert pair.dlq.counts().visible == 4


def test_metrics_count_each_operation(env: Env) -> None:
    poison(env)
    pair = open_pair(env)
    list_messages(env, pair)
    list_messages(env, pair)
    redrive_all(env, pair)
    counters = read_counters(metrics_path(env))
    base = f'env="local",queue="{pair.dlq.name}"'
    assert counters[f'{base},operation="list",outcome="listed"'] == 8
    # Messages whose object is still broken are valid: they move (and would fail again).
    assert counters[f'{base},operation="redrive",outcome="refused"'] == 2
    assert counters[f'{base},operation="redrive",outcome="redriven"'] == 2
    assert counters[f'{base},operation="redrive",outcome="failed"'] == 0
    text = metrics_path(env).read_text()
    assert text.startswith("# HELP sluice_dlq_messages_total")
