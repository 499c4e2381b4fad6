"""The ledger contract: every `Ledger` implementation passes these tests.

Written against the interface only. An implementation joins by adding its name to `BACKENDS` and
a branch to `open_ledger` (which must accept an injected clock, so leases expire without sleeping);
one that needs a server adds a branch to the `spec` fixture. A `LedgerSpec` is picklable, so the
multi-process race opens the same ledger in each child.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice.backends.ledger.base import (
    Claim,
    ClaimOutcome,
    Counts,
    FileRecord,
    FileStatus,
    Ledger,
    Output,
    Receipt,
    SourceRef,
)
from sluice.errors import LeaseLost

BACKENDS = ["sqlite", pytest.param("dynamodb", marks=pytest.mark.aws)]
LEASE = 30.0
SRC = SourceRef("raw", "raw/json_telemetry/year=2025/month=11/day=24/hour=21/s-1.gz", '"e1"')
SRC_CHANGED = SourceRef(SRC.bucket, SRC.key, '"e2"')


@dataclass(frozen=True)
class LedgerSpec:
    """Where one test's ledger lives: a directory (sqlite) or a moto table (dynamodb)."""

    kind: str
    root: Path
    endpoint_url: str | None = None
    table: str | None = None


def open_ledger(spec: LedgerSpec, clock: Callable[[], datetime] | None = None) -> Ledger:
    if spec.kind == "sqlite":
        from sluice.backends.ledger.sqlite import SqliteLedger

        if clock is None:
            return SqliteLedger(spec.root / "ledger.db")
        return SqliteLedger(spec.root / "ledger.db", clock=clock)
    if spec.kind == "dynamodb":
        from sluice.backends.ledger.dynamodb import DynamoDbLedger

        assert spec.table is not None and spec.endpoint_url is not None
        client = _dynamodb_client(spec.endpoint_url)
        if clock is None:
            return DynamoDbLedger(client, spec.table)
        return DynamoDbLedger(client, spec.table, clock=clock)
    raise ValueError(f"unknown ledger backend {spec.kind!r}")


def _dynamodb_client(endpoint_url: str) -> Any:
    from sluice.backends.aws import AwsClients
    from sluice.config import EnvConfig
    from tests.moto_server import REGION

    config = EnvConfig(backend="aws", region=REGION, endpoint_url=endpoint_url)
    return AwsClients(config).client("dynamodb")


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2025, 11, 24, 21, 9, 35, 120_001, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@contextlib.contextmanager
def _dynamodb_table(endpoint: str, root: Path) -> Iterator[LedgerSpec]:
    """A fresh table (created as setup would) on the moto server at `endpoint`, then dropped."""
    from sluice.backends.ledger.dynamodb import DynamoDbLedger

    table = f"ledger-{uuid.uuid4().hex[:12]}"
    client = _dynamodb_client(endpoint)
    DynamoDbLedger(client, table).create_table()
    yield LedgerSpec("dynamodb", root, endpoint, table)
    client.delete_table(TableName=table)


@pytest.fixture
def spec(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LedgerSpec]:
    if backend != "dynamodb":
        yield LedgerSpec(backend, tmp_path)
        return
    with _dynamodb_table(request.getfixturevalue("moto_endpoint"), tmp_path) as spec:
        yield spec


_SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="module")
def serial_moto_endpoint(moto_endpoint: str) -> Iterator[str]:
    """A moto server that answers one request at a time, for the multi-process race.

    moto's threaded server checks a ConditionExpression and writes the item without a lock
    (moto 5.2: the server's lock covers only picking the backend), so two concurrent
    conditional writes can both pass, which DynamoDB never allows. Serving one request at a
    time gives per-item atomicity back; the racers still interleave request by request.
    (`moto_endpoint` is requested for the AWS_* variables it sets.)
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERIAL_MOTO, str(port)],
        env={**os.environ, "MOTO_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no moto server"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def race_spec(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LedgerSpec]:
    if backend != "dynamodb":
        yield LedgerSpec(backend, tmp_path)
        return
    with _dynamodb_table(request.getfixturevalue("serial_moto_endpoint"), tmp_path) as spec:
        yield spec


@pytest.fixture
def ledger(spec: LedgerSpec, clock: FakeClock) -> Ledger:
    return open_ledger(spec, clock)


def out(key: str, rows: int = 10, table: str = "telemetry_lock_flat") -> Output:
    return Output("verified", key, table, "2025-11-24", "21", rows)


OUTS = (
    out("telemetry_flat/type=lock/day=2025-11-24/hour=21/a.parquet"),
    out("telemetry_flat/type=bridge/day=2025-11-24/hour=21/a.parquet", 3, "bridge"),
)
COUNTS = Counts(
    lines=14,
    blank_lines=1,
    good_lines=12,
    quarantined_lines=1,
    rows=13,
    quarantine_reasons={"missing envelope.device_id": 1},
)


def claimed(ledger: Ledger, source: SourceRef = SRC, owner: str = "w1", **kw: Any) -> Claim:
    result = ledger.claim(source, owner, LEASE, **kw)
    assert result.outcome is ClaimOutcome.CLAIMED, result
    assert result.claim is not None
    return result.claim


def completed(ledger: Ledger, source: SourceRef = SRC) -> FileRecord:
    return ledger.complete(claimed(ledger, source), OUTS, COUNTS)


def test_claim_complete_get(ledger: Ledger, clock: FakeClock) -> None:
    result = ledger.claim(SRC, "w1", LEASE)
    assert result.outcome is ClaimOutcome.CLAIMED and result.claim is not None
    claim = result.claim
    assert (claim.source, claim.owner, claim.attempt) == (SRC, "w1", 1)
    assert claim.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert result.record is not None and result.record.status is FileStatus.PROCESSING
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None
    assert (record.status, record.owner, record.attempts, record.etag) == (
        FileStatus.PROCESSING,
        "w1",
        1,
        SRC.etag,
    )
    assert record.lease_expires_at == claim.lease_expires_at
    assert record.outputs == () and record.counts is None and record.completed_at is None

    clock.advance(5)
    done = ledger.complete(claim, OUTS, COUNTS)
    assert done == ledger.get(SRC.bucket, SRC.key)
    assert done.status is FileStatus.COMPLETED
    assert done.outputs == OUTS and done.counts == COUNTS
    assert done.completed_at == clock.now and done.updated_at == clock.now
    assert done.created_at == clock.now - timedelta(seconds=5)
    assert done.lease_expires_at is None and done.last_error is None
    assert done.uri == SRC.uri
    for stamp in (done.created_at, done.updated_at, done.completed_at):
        assert stamp.utcoffset() == timedelta(0)


def test_unknown_object(ledger: Ledger) -> None:
    assert ledger.get("raw", "nope") is None
    assert ledger.reset("raw", "nope") is None
    assert ledger.failures("raw", "nope") == []
    assert ledger.get_receipt("raw", "nope") is None
    assert list(ledger.list()) == []


def test_same_etag_already_completed(ledger: Ledger) -> None:
    done = completed(ledger)
    again = ledger.claim(SRC, "w2", LEASE)
    assert again.outcome is ClaimOutcome.ALREADY_COMPLETED and again.claim is None
    assert again.record == done
    assert ledger.get(SRC.bucket, SRC.key) == done


def test_force_reclaims_completed(ledger: Ledger) -> None:
    completed(ledger)
    claim = claimed(ledger, owner="w2", force=True)
    assert claim.attempt == 2
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None
    assert (record.status, record.attempts, record.owner) == (FileStatus.PROCESSING, 2, "w2")
    assert record.outputs == OUTS, "previous outputs stay valid until complete replaces them"
    new_outputs = (out("telemetry_flat/type=lock/day=2025-11-24/hour=22/a.parquet"),)
    done = ledger.complete(claim, new_outputs, Counts(lines=1, good_lines=1, rows=1))
    assert done.outputs == new_outputs and done.attempts == 2


def test_changed_etag_is_a_new_input(ledger: Ledger) -> None:
    completed(ledger)
    claim = claimed(ledger, SRC_CHANGED, owner="w2")
    assert claim.attempt == 1, "attempts count the new input's tries"
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None
    assert (record.etag, record.status) == (SRC_CHANGED.etag, FileStatus.PROCESSING)
    assert record.outputs == OUTS and record.counts == COUNTS
    done = ledger.complete(claim, OUTS[:1], Counts(rows=10))
    assert done.outputs == OUTS[:1] and done.etag == SRC_CHANGED.etag
    assert ledger.claim(SRC_CHANGED, "w3", LEASE).outcome is ClaimOutcome.ALREADY_COMPLETED


def test_busy_while_another_lease_is_held(ledger: Ledger, clock: FakeClock) -> None:
    claimed(ledger)
    before = ledger.get(SRC.bucket, SRC.key)
    clock.advance(LEASE - 0.001)
    for source, owner, force in [
        (SRC, "w2", False),
        (SRC, "w2", True),
        (SRC_CHANGED, "w2", False),
        (SRC, "w1", False),
    ]:
        result = ledger.claim(source, owner, LEASE, force=force)
        assert result.outcome is ClaimOutcome.BUSY and result.claim is None
        assert result.record == before
    assert ledger.get(SRC.bucket, SRC.key) == before


def test_is_stuck_computed_from_lease(ledger: Ledger, clock: FakeClock) -> None:
    claim = claimed(ledger)
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None
    assert not record.is_stuck(clock.now)
    assert not record.is_stuck(claim.lease_expires_at - timedelta(microseconds=1))
    assert record.is_stuck(claim.lease_expires_at)
    clock.advance(LEASE)
    stuck = [r.key for r in ledger.list(status=FileStatus.PROCESSING) if r.is_stuck(clock.now)]
    assert stuck == [SRC.key]
    done = ledger.complete(claim, OUTS, COUNTS)
    assert not done.is_stuck(clock.now + timedelta(days=1))


def test_reclaim_after_expiry_and_old_claim_is_lost(ledger: Ledger, clock: FakeClock) -> None:
    old = claimed(ledger, owner="w1")
    ledger.record_pending_outputs(old, ["a.parquet"])
    clock.advance(LEASE + 1)
    new = claimed(ledger, owner="w2")
    assert new.attempt == 2 and new.token != old.token
    snapshot = ledger.get(SRC.bucket, SRC.key)
    assert snapshot is not None and snapshot.owner == "w2"
    assert snapshot.pending_outputs == ("a.parquet",), "a dead run's pending keys survive"

    clock.advance(1)
    with pytest.raises(LeaseLost):
        ledger.complete(old, OUTS, COUNTS)
    with pytest.raises(LeaseLost):
        ledger.fail(old, "boom", "CorruptObject", terminal=True, correlation_id="c-old")
    with pytest.raises(LeaseLost):
        ledger.extend(old, LEASE)
    with pytest.raises(LeaseLost):
        ledger.record_pending_outputs(old, ["b.parquet"])
    with pytest.raises(LeaseLost):
        ledger.complete(old, OUTS, COUNTS, redrive_id="r-old")
    assert ledger.get(SRC.bucket, SRC.key) == snapshot
    assert ledger.failures(SRC.bucket, SRC.key) == []
    assert ledger.claim(SRC, "w3", LEASE, redrive_id="r-old").outcome is ClaimOutcome.BUSY

    done = ledger.complete(new, OUTS, COUNTS)
    assert done.status is FileStatus.COMPLETED and done.owner == "w2"
    with pytest.raises(LeaseLost):
        ledger.complete(new, (), Counts())
    assert ledger.get(SRC.bucket, SRC.key) == done


def test_expired_lease_nobody_took_is_still_held(ledger: Ledger, clock: FakeClock) -> None:
    claim = claimed(ledger)
    clock.advance(LEASE * 3)
    extended = ledger.extend(claim, LEASE)
    assert extended.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert ledger.complete(extended, OUTS, COUNTS).status is FileStatus.COMPLETED


def test_extend_pushes_the_lease(ledger: Ledger, clock: FakeClock) -> None:
    claim = claimed(ledger)
    clock.advance(20)
    extended = ledger.extend(claim, 60)
    assert extended.token == claim.token and extended.attempt == claim.attempt
    assert extended.lease_expires_at == clock.now + timedelta(seconds=60)
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None and record.lease_expires_at == extended.lease_expires_at
    clock.advance(LEASE)  # past the original lease, within the extended one
    assert ledger.claim(SRC, "w2", LEASE).outcome is ClaimOutcome.BUSY
    # The old Claim object carries the same token: either can finish the work.
    assert ledger.complete(claim, OUTS, COUNTS).status is FileStatus.COMPLETED


def test_fail_keeps_outputs_and_history(ledger: Ledger, clock: FakeClock) -> None:
    completed(ledger)
    claim = claimed(ledger, owner="w2", force=True)
    ledger.record_pending_outputs(claim, ["new.parquet"])
    clock.advance(2)
    failed = ledger.fail(
        claim, "gzip: truncated", "CorruptObject", terminal=False, correlation_id="c-1"
    )
    assert failed == ledger.get(SRC.bucket, SRC.key)
    assert failed.status is FileStatus.FAILED
    assert (failed.last_error, failed.error_class, failed.terminal) == (
        "gzip: truncated",
        "CorruptObject",
        False,
    )
    assert failed.attempts == 2 and failed.lease_expires_at is None
    assert failed.outputs == OUTS and failed.counts == COUNTS
    assert failed.pending_outputs == ("new.parquet",)
    assert not failed.is_stuck(clock.now + timedelta(days=1))

    first_at = clock.now
    clock.advance(2)
    retry = claimed(ledger, owner="w3")  # failed, same ETag, not forced: retried
    assert retry.attempt == 3
    ledger.fail(retry, "still truncated", "CorruptObject", terminal=True, correlation_id="c-2")
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None and record.terminal and record.attempts == 3

    history = ledger.failures(SRC.bucket, SRC.key)
    assert [(f.attempt, f.error, f.error_class, f.terminal, f.correlation_id) for f in history] == [
        (2, "gzip: truncated", "CorruptObject", False, "c-1"),
        (3, "still truncated", "CorruptObject", True, "c-2"),
    ]
    assert [f.at for f in history] == [first_at, clock.now]
    assert {(f.bucket, f.key, f.etag) for f in history} == {(SRC.bucket, SRC.key, SRC.etag)}

    ok = ledger.complete(claimed(ledger), OUTS[:1], COUNTS)
    assert (ok.last_error, ok.error_class, ok.terminal) == (None, None, False)
    assert len(ledger.failures(SRC.bucket, SRC.key)) == 2, "history is kept"


def test_fail_without_correlation_id(ledger: Ledger) -> None:
    ledger.fail(claimed(ledger), "boom", "ValueError", terminal=False)
    (event,) = ledger.failures(SRC.bucket, SRC.key)
    assert event.correlation_id is None and event.attempt == 1


def test_redrive_id_processed_once(ledger: Ledger) -> None:
    completed(ledger)
    claim = claimed(ledger, force=True, redrive_id="r1")
    ledger.complete(claim, OUTS, COUNTS, redrive_id="r1")
    done = ledger.get(SRC.bucket, SRC.key)
    again = ledger.claim(SRC, "w2", LEASE, force=True, redrive_id="r1")
    assert again.outcome is ClaimOutcome.REDRIVE_DONE and again.claim is None
    assert again.record == done == ledger.get(SRC.bucket, SRC.key)

    other = claimed(ledger, owner="w2", force=True, redrive_id="r2")
    assert other.attempt == 3
    # REDRIVE_DONE is checked before BUSY.
    assert (
        ledger.claim(SRC, "w3", LEASE, force=True, redrive_id="r1").outcome
        is ClaimOutcome.REDRIVE_DONE
    )
    ledger.fail(other, "boom", "BackendBusy", terminal=False)
    # A redrive that failed is not done: its redelivery claims again.
    retry = claimed(ledger, owner="w3", force=True, redrive_id="r2")
    ledger.complete(retry, OUTS, COUNTS, redrive_id="r2")
    assert (
        ledger.claim(SRC, "w4", LEASE, force=True, redrive_id="r2").outcome
        is ClaimOutcome.REDRIVE_DONE
    )


def test_redrive_id_is_done_per_object(ledger: Ledger) -> None:
    """One redrive run may send the same id with every object it redrives."""
    other = SourceRef("raw", "raw/other.gz", "e")
    ledger.complete(
        claimed(ledger, force=True, redrive_id="run-1"), OUTS, COUNTS, redrive_id="run-1"
    )
    claim = claimed(ledger, other, force=True, redrive_id="run-1")
    ledger.complete(claim, OUTS, COUNTS, redrive_id="run-1")
    for source in (SRC, other):
        result = ledger.claim(source, "w", LEASE, force=True, redrive_id="run-1")
        assert result.outcome is ClaimOutcome.REDRIVE_DONE


def test_pending_outputs_persist_until_complete(ledger: Ledger, clock: FakeClock) -> None:
    claim = claimed(ledger)
    ledger.record_pending_outputs(claim, ["a.parquet", "b.parquet"])
    ledger.record_pending_outputs(claim, ["b.parquet", "c.parquet"])
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None
    assert record.pending_outputs == ("a.parquet", "b.parquet", "c.parquet")
    ledger.fail(claim, "boom", "OSError", terminal=False)
    retry = claimed(ledger, owner="w2")
    record = ledger.get(SRC.bucket, SRC.key)
    assert record is not None and set(record.pending_outputs) == {
        "a.parquet",
        "b.parquet",
        "c.parquet",
    }
    done = ledger.complete(retry, OUTS, COUNTS)
    assert done.pending_outputs == ()


def test_reset(ledger: Ledger, clock: FakeClock) -> None:
    completed(ledger)
    claim = claimed(ledger, force=True)
    clock.advance(LEASE + 1)
    record = ledger.reset(SRC.bucket, SRC.key)
    assert record is not None and record == ledger.get(SRC.bucket, SRC.key)
    assert record.status is FileStatus.PENDING
    assert record.owner is None and record.lease_expires_at is None
    assert record.outputs == OUTS and record.attempts == 2
    assert record.updated_at == clock.now
    with pytest.raises(LeaseLost):
        ledger.complete(claim, (), Counts())
    assert ledger.get(SRC.bucket, SRC.key) == record
    assert claimed(ledger, owner="w2").attempt == 3, "pending is claimable without force"

    ledger.fail(
        ledger.extend(claimed(ledger, SourceRef("raw", "f", "e"), "w"), 1), "x", "E", terminal=True
    )
    reset_failed = ledger.reset("raw", "f")
    assert reset_failed is not None and reset_failed.status is FileStatus.PENDING


def test_forget_deletes_only_completed_records_old_enough(ledger: Ledger, clock: FakeClock) -> None:
    # A completed record with a long history (failed attempts, a done redrive) and a receipt.
    for attempt in range(27):
        ledger.fail(claimed(ledger), "boom", "E", terminal=False, correlation_id=f"c{attempt}")
    ledger.complete(claimed(ledger, force=True, redrive_id="r1"), OUTS, COUNTS, redrive_id="r1")
    receipt = Receipt(SRC.bucket, SRC.key, lines=14, bytes=99, received_at=clock.now)
    ledger.record_receipt(receipt)
    completed_at = clock.now
    others = [SourceRef("raw", name, "e") for name in ("failed.gz", "held.gz", "pending.gz")]
    ledger.fail(claimed(ledger, others[0]), "boom", "E", terminal=True)
    claimed(ledger, others[1])  # its lease runs out below: stuck, still not forgotten
    ledger.reset("raw", claimed(ledger, others[2]).source.key)
    clock.advance(LEASE * 2)

    assert not ledger.forget(SRC.bucket, SRC.key, updated_before=completed_at), "not before"
    assert not ledger.forget("raw", "unknown.gz")
    for source in others:
        assert not ledger.forget(source.bucket, source.key, updated_before=clock.now)
        assert ledger.get(source.bucket, source.key) is not None
    assert ledger.get(SRC.bucket, SRC.key) is not None and ledger.failures(SRC.bucket, SRC.key)

    assert ledger.forget(SRC.bucket, SRC.key, updated_before=clock.now)
    assert ledger.get(SRC.bucket, SRC.key) is None
    assert ledger.failures(SRC.bucket, SRC.key) == []
    assert ledger.get_receipt(SRC.bucket, SRC.key) == receipt, "what ingest wrote stays"
    assert sorted(r.key for r in ledger.list()) == [s.key for s in others]
    assert not ledger.forget(SRC.bucket, SRC.key), "a second forget finds nothing"

    # Forgotten, the object is a new input: attempts restart, its old redrive id is not done.
    again = ledger.claim(SRC, "w2", LEASE, redrive_id="r1")
    assert again.outcome is ClaimOutcome.CLAIMED and again.claim is not None
    assert again.claim.attempt == 1
    assert not ledger.forget(SRC.bucket, SRC.key), "processing: kept"
    ledger.complete(again.claim, OUTS, COUNTS)
    assert ledger.forget(SRC.bucket, SRC.key), "no age given: any completed record"


def test_list_by_status_age_and_limit(
    ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, so pagination is exercised (implementations that page by PAGE_SIZE).
    module = sys.modules[type(ledger).__module__]
    monkeypatch.setattr(module, "PAGE_SIZE", 2, raising=False)
    stamps: dict[str, datetime] = {}
    for i in range(7):
        clock.advance(1)
        source = SourceRef("raw", f"k{i}", "e")
        claim = claimed(ledger, source)
        if i % 3 == 0:
            ledger.complete(claim, (), Counts())
        elif i % 3 == 1:
            ledger.fail(claim, "boom", "E", terminal=False)
        stamps[source.key] = clock.now
    clock.advance(LEASE)  # k2 was left processing; its lease runs out, another worker takes it
    claimed(ledger, SourceRef("raw", "k2", "e"), owner="w2")
    stamps["k2"] = clock.now

    every = list(ledger.list())
    assert [r.key for r in every] == ["k0", "k1", "k3", "k4", "k5", "k6", "k2"]
    assert [r.updated_at for r in every] == sorted(stamps.values())
    assert [r.key for r in ledger.list(status=FileStatus.COMPLETED)] == ["k0", "k3", "k6"]
    assert [r.key for r in ledger.list(status=FileStatus.FAILED)] == ["k1", "k4"]
    assert [r.key for r in ledger.list(status=FileStatus.PROCESSING)] == ["k5", "k2"]
    assert [r.key for r in ledger.list(updated_before=stamps["k3"])] == ["k0", "k1"]
    assert [
        r.key
        for r in ledger.list(status=FileStatus.COMPLETED, updated_before=stamps["k6"], limit=1)
    ] == ["k0"]
    assert [r.key for r in ledger.list(limit=5)] == ["k0", "k1", "k3", "k4", "k5"]
    assert list(ledger.list(limit=0)) == []
    assert list(ledger.list(status=FileStatus.PENDING)) == []
    lazy = ledger.list()
    assert next(lazy).key == "k0"


def test_receipts_idempotent(ledger: Ledger) -> None:
    at = datetime(2025, 11, 24, 21, 0, 0, 123_456, tzinfo=UTC)
    first = Receipt("raw", "a.gz", lines=100, bytes=4096, received_at=at)
    ledger.record_receipt(first)
    ledger.record_receipt(first)
    ledger.record_receipt(Receipt("raw", "a.gz", lines=100, bytes=4096, received_at=at))
    assert ledger.get_receipt("raw", "a.gz") == first
    second = Receipt("raw", "b.gz", lines=7, bytes=99, received_at=at + timedelta(seconds=1))
    ledger.record_receipt(second)
    assert sorted(ledger.receipts(), key=lambda r: r.key) == [first, second]
    assert sum(r.lines for r in ledger.receipts()) == 107
    assert ledger.get_receipt("raw", "a.gz") is not None


def test_many_receipts_iterate_fully(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[type(ledger).__module__], "PAGE_SIZE", 3, raising=False)
    at = datetime(2025, 11, 24, tzinfo=UTC)
    for i in range(10):
        ledger.record_receipt(Receipt("raw", f"r{i:02}", lines=i, bytes=i, received_at=at))
    assert sorted(r.key for r in ledger.receipts()) == [f"r{i:02}" for i in range(10)]


HOSTILE_KEYS = [
    'it\'s "quoted"; DROP TABLE files; --',
    "../../etc/passwd",
    "raw/./a/../b/..",
    "ключ/日本語/🚀/é\u0301",
    "percent%_under_score*[glob]?",
    "back\\slash\nnew line\ttab",
    "x" * 1024,
    "deep/" * 300 + "end",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_hostile_inputs_round_trip(ledger: Ledger, key: str) -> None:
    source = SourceRef("raw", key, '"it\'s" an etag')
    decoy = SourceRef("raw", key[:-1] + "_", '"decoy"')
    claimed(ledger, decoy)
    claim = claimed(ledger, source, owner="w'\"1")
    outputs = (Output("verified", key + ".parquet", "t'\"", "2025-11-24", "21", 1),)
    ledger.record_pending_outputs(claim, [key])
    assert ledger.get("raw", key) is not None
    failed = ledger.fail(claim, f"bad {key}", "E'\"", terminal=False, correlation_id=key)
    assert failed.last_error == f"bad {key}"
    (event,) = ledger.failures("raw", key)
    assert (event.key, event.etag, event.correlation_id) == (key, source.etag, key)
    done = ledger.complete(claimed(ledger, source), outputs, COUNTS, redrive_id=key)
    assert (done.key, done.etag, done.outputs, done.pending_outputs) == (
        key,
        source.etag,
        outputs,
        (),
    )
    assert ledger.get("raw", key) == done
    assert ledger.claim(source, "w", LEASE, redrive_id=key).outcome is ClaimOutcome.REDRIVE_DONE
    assert {r.key for r in ledger.list()} == {key, decoy.key}
    decoy_record = ledger.get("raw", decoy.key)
    assert decoy_record is not None and decoy_record.status is FileStatus.PROCESSING
    receipt = Receipt("raw", key, lines=1, bytes=2, received_at=datetime(2025, 1, 1, tzinfo=UTC))
    ledger.record_receipt(receipt)
    assert ledger.get_receipt("raw", key) == receipt
    assert ledger.get_receipt("raw", decoy.key) is None


# Fewer rounds on dynamodb: its race runs on a moto server that answers one request at a time.
ROUNDS = {"sqlite": 20, "dynamodb": 10}
RACERS = 4


def _race(spec: LedgerSpec, owner: str, barrier: Any, results: Any) -> None:
    ledger = open_ledger(spec)
    shared = SourceRef("raw", "race/shared.gz", "e")
    for n in range(ROUNDS[spec.kind]):
        barrier.wait(timeout=60)
        fresh = ledger.claim(SourceRef("raw", f"race/{n}.gz", "e"), owner, 60)
        again = ledger.claim(shared, owner, 60, force=True)
        barrier.wait(timeout=60)  # every racer has claimed before the winner lets go
        if again.claim is not None:
            ledger.complete(again.claim, (), Counts())
        results.put((n, fresh.outcome.value, again.outcome.value))


def test_concurrent_claims_have_one_winner(race_spec: LedgerSpec) -> None:
    spec = race_spec
    open_ledger(spec)  # create the schema once, before the race
    rounds = ROUNDS[spec.kind]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(spec, f"w{i}", barrier, results)) for i in range(RACERS)
    ]
    for proc in procs:
        proc.start()
    got: list[tuple[int, str, str]] = []
    deadline = time.monotonic() + 60
    finished = False
    try:
        while len(got) < rounds * RACERS:
            crashed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            assert not crashed and time.monotonic() < deadline, (crashed, len(got))
            with contextlib.suppress(queue.Empty):
                got.append(results.get(timeout=0.5))
        finished = True
    finally:
        for proc in procs:
            proc.join(timeout=30 if finished else 0)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * RACERS
    for n in range(rounds):
        fresh = sorted(f for r, f, _ in got if r == n)
        again = sorted(a for r, _, a in got if r == n)
        expected = ["busy"] * (RACERS - 1) + ["claimed"]
        assert fresh == expected, (n, fresh)
        assert again == expected, (n, again)
    ledger = open_ledger(spec)
    shared = ledger.get("raw", "race/shared.gz")
    assert shared is not None and shared.attempts == rounds
    assert shared.status is FileStatus.COMPLETED
