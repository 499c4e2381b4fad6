"""`sluice backfill` for partitions: an emptied catalog registered again by plan + run, failing
chunks rerun, a killed run resumed, throttling, and the bad inputs (library and command line)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pytest

from sluice.backends.catalog.base import Catalog, Partition, TableDef
from sluice.cli.app import main
from sluice.env import Env
from sluice.errors import BackendBusy, ConfigError, TerminalError
from sluice.layout import parse_verified_key
from sluice.ops.backfill import (
    Backoff,
    Limiter,
    UnknownBackfillRun,
    plan_partitions,
    run_backfill,
    run_status,
)
from sluice.process.processor import process_object
from tests.conftest import line, make_event, put_raw

DAYS = ("2025-11-22", "2025-11-23", "2025-11-24")
HOURS = (1, 5, 9, 13, 17, 21)
MINUTES = (3, 20, 47)
LOCK = "telemetry_lock_flat"
BRIDGE = "telemetry_bridge_flat"
# Retries in milliseconds; concurrency grows back only after a calm longer than any test.
FAST = Backoff(attempts=5, base_seconds=0.01, max_seconds=0.05, calm_seconds=60)


def build_lake(env: Env, types: Sequence[str] = ("lock", "bridge")) -> None:
    """One raw object per day, each with events of `types` in every hour of HOURS, processed by
    the real pipeline: 3 days x 6 hours = 18 partitions per type."""
    for day in DAYS:
        events = []
        for type_ in types:
            for hour in HOURS:
                for i, minute in enumerate(MINUTES):
                    event = make_event(
                        f"{type_}-{day}-{hour}-{minute}",
                        type_,
                        occurred_at=f"{day}T{hour:02d}:{minute:02d}:10Z",
                        assertions=i,
                        **({"battery_pct": 40 + hour + i} if type_ == "lock" else {}),
                    )
                    event["envelope"]["device_id"] = f"dev-{i % 2}"
                    events.append(line(event))
        uri = put_raw(env, events)
        assert process_object(env, uri).counts is not None


def files_partitions(env: Env, table: str) -> list[Partition]:
    """The partitions holding a verified file, from a listing of the whole verified bucket."""
    found = set()
    for info in env.store.list(env.config.buckets.verified):
        parsed = parse_verified_key(info.key)
        if parsed is not None and parsed.table == table:
            found.add(Partition((parsed.day, parsed.hour)))
    return sorted(found)


def registered(env: Env, table: str) -> list[Partition]:
    return sorted(env.catalog.list_partitions(table))


def empty_catalog(env: Env) -> None:
    for table in env.catalog.list_tables():
        env.catalog.drop_partitions(table.name, list(env.catalog.list_partitions(table.name)))
        assert registered(env, table.name) == []


class FaultyCatalog:
    """The environment's catalog, with faults injected into `add_partitions`: a terminal error
    for partitions of `fail_day`, `busy` throttled calls first, a KeyboardInterrupt on call
    number `interrupt_at` (once). Records every call that succeeded and how many ran at once."""

    def __init__(
        self,
        inner: Catalog,
        *,
        fail_day: str | None = None,
        busy: int = 0,
        interrupt_at: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.inner = inner
        self.fail_day = fail_day
        self.busy = busy
        self.interrupt_at = interrupt_at
        self.delay = delay
        self.calls = 0
        self.done: list[tuple[Partition, ...]] = []
        self.in_flight: list[int] = []  # calls running when each call started
        self._active = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_partitions(self, table: str, partitions: Sequence[Partition]) -> int:
        with self._lock:
            self.calls += 1
            call = self.calls
            self._active += 1
            self.in_flight.append(self._active)
            throttle = self.busy > 0
            self.busy -= throttle
        try:
            if throttle:
                raise BackendBusy("injected throttling", hint="retry later")
            if call == self.interrupt_at:
                raise KeyboardInterrupt
            if any(p.values[0] == self.fail_day for p in partitions):
                raise TerminalError(f"injected failure for {self.fail_day}")
            time.sleep(self.delay)
            added = self.inner.add_partitions(table, partitions)
            with self._lock:
                self.done.append(tuple(partitions))
            return added
        finally:
            with self._lock:
                self._active -= 1


def with_catalog(env: Env, catalog: FaultyCatalog) -> Env:
    return replace(env, catalog=catalog)  # type: ignore[arg-type]


@pytest.fixture
def lake(env: Env) -> Env:
    build_lake(env)
    empty_catalog(env)
    return env


def test_an_emptied_catalog_is_registered_again_by_plan_and_run(lake: Env) -> None:
    for table in (LOCK, BRIDGE):
        plan = plan_partitions(lake, table, chunk_size=5)
        assert (plan.items, plan.total_chunks, plan.stray_keys) == (18, 4, 0)
        result = run_backfill(lake, plan.run_id, max_concurrency=3)
        assert result.ok and len(result.succeeded) == 4
        assert result.tally == {"partitions": 18, "added": 18}
        assert result.status is not None and result.status.done
        assert registered(lake, table) == files_partitions(lake, table)
    # The run's files are in DESIGN §3's layout, in the lake bucket.
    keys = [i.key for i in lake.store.list(lake.config.buckets.lake, "backfill/partitions/runs/")]
    run_dir = f"backfill/partitions/runs/{plan.run_id}/"
    assert f"{run_dir}manifest.json" in keys
    assert f"{run_dir}chunks/chunk-00003.json" in keys
    assert f"{run_dir}results/chunk-00003.json" in keys

    # Running it again does nothing: every chunk already succeeded.
    again = run_backfill(lake, plan.run_id)
    assert (again.selected, again.skipped) == ([], 4)


def test_a_prefix_narrows_the_plan(lake: Env) -> None:
    plan = plan_partitions(lake, LOCK, prefix="day=2025-11-23/", chunk_size=100)
    assert (plan.items, plan.total_chunks) == (6, 1)
    run_backfill(lake, plan.run_id)
    assert registered(lake, LOCK) == [
        p for p in files_partitions(lake, LOCK) if p.values[0] == DAYS[1]
    ]


def test_failing_chunks_are_reported_and_rerun_failed_completes_the_run(lake: Env) -> None:
    plan = plan_partitions(lake, LOCK, chunk_size=4)
    faulty = FaultyCatalog(lake.catalog, fail_day=DAYS[1])
    result = run_backfill(with_catalog(lake, faulty), plan.run_id, max_concurrency=2)

    # Expected independently: the sorted partitions in groups of 4; those touching the day.
    groups = [files_partitions(lake, LOCK)[i : i + 4] for i in range(0, 18, 4)]
    expected = [
        f"chunk-{n:05d}" for n, g in enumerate(groups) if any(p.values[0] == DAYS[1] for p in g)
    ]
    assert expected == ["chunk-00001", "chunk-00002"]
    assert sorted(result.failed) == expected and not result.ok
    status = run_status(lake, plan.run_id)
    assert status.failed_chunk_keys == expected
    assert (status.total_chunks, status.succeeded_chunks, status.failed_chunks) == (5, 3, 2)
    assert all("injected failure" in status.errors[k] for k in expected)

    healthy = FaultyCatalog(lake.catalog)
    rerun = run_backfill(with_catalog(lake, healthy), plan.run_id, failed_only=True)
    assert rerun.selected == expected and rerun.ok
    assert len(healthy.done) == 2  # only the failed chunks ran again
    assert run_status(lake, plan.run_id).failed_chunk_keys == []
    assert registered(lake, LOCK) == files_partitions(lake, LOCK)


def test_a_killed_run_resumes_and_does_each_chunk_once(lake: Env) -> None:
    plan = plan_partitions(lake, LOCK, chunk_size=2)
    assert plan.total_chunks == 9
    faulty = FaultyCatalog(lake.catalog, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(with_catalog(lake, faulty), plan.run_id, max_concurrency=1)
    status = run_status(lake, plan.run_id)
    assert status.succeeded_chunks >= 3 and status.pending_chunks >= 1
    assert status.failed_chunks == 0  # an interruption is not the chunk's failure

    resumed = run_backfill(with_catalog(lake, faulty), plan.run_id, max_concurrency=3)
    assert resumed.skipped == status.succeeded_chunks and resumed.ok
    assert run_status(lake, plan.run_id).done
    done = Counter(faulty.done)
    assert len(done) == 9 and set(done.values()) == {1}  # each chunk done exactly once
    assert registered(lake, LOCK) == files_partitions(lake, LOCK)


def test_throttling_is_retried_and_lowers_concurrency(lake: Env) -> None:
    plan = plan_partitions(lake, LOCK, chunk_size=1)
    faulty = FaultyCatalog(lake.catalog, busy=3, delay=0.02)
    result = run_backfill(with_catalog(lake, faulty), plan.run_id, max_concurrency=4, backoff=FAST)
    assert result.ok and (result.throttles, result.lowest_concurrency) == (3, 1)
    assert len(faulty.done) == 18
    # Once throttled down to one, calls run one at a time (the calm period is not over).
    assert max(faulty.in_flight[8:]) == 1
    assert registered(lake, LOCK) == files_partitions(lake, LOCK)


def test_throttling_that_lasts_fails_the_chunk_with_the_last_error(lake: Env) -> None:
    plan = plan_partitions(lake, LOCK, chunk_size=18)
    faulty = FaultyCatalog(lake.catalog, busy=100)
    result = run_backfill(with_catalog(lake, faulty), plan.run_id, backoff=FAST)
    assert list(result.failed) == ["chunk-00000"] and "throttling" in result.failed["chunk-00000"]
    assert faulty.calls == FAST.attempts


def test_the_limiter_halves_on_throttling_and_grows_back_after_a_calm() -> None:
    limiter = Limiter(8, Backoff(calm_seconds=0.05))
    limiter.throttled()
    limiter.throttled()
    assert (limiter.limit, limiter.lowest, limiter.throttles) == (2, 2, 2)
    limiter.succeeded()
    assert limiter.limit == 2  # not calm yet
    time.sleep(0.06)
    limiter.succeeded()
    assert limiter.limit == 3


def test_raw_source_plans_a_raw_tables_arrival_partitions(lake: Env) -> None:
    with pytest.raises(ConfigError, match="no table 'raw_json_telemetry'"):
        plan_partitions(lake, "raw_json_telemetry", source="raw")
    with pytest.raises(ConfigError, match="not a raw table"):
        plan_partitions(lake, LOCK, source="raw")
    raw = TableDef(
        "raw_json_telemetry",
        f"s3://{lake.config.buckets.raw}/raw/json_telemetry/",
        pa.schema([("line", pa.string())]),
        ("year", "month", "day", "hour"),
    )
    lake.catalog.ensure_table(raw)
    plan = plan_partitions(lake, raw.name, source="raw")
    assert (plan.items, plan.keys_scanned) == (1, 3)  # three raw objects, one arrival hour
    assert run_backfill(lake, plan.run_id).ok
    assert registered(lake, raw.name) == [Partition(("2025", "11", "25", "00"))]


def test_bad_inputs_are_refused(lake: Env) -> None:
    with pytest.raises(ConfigError, match="unknown table"):
        plan_partitions(lake, "telemetry_nope_flat")
    with pytest.raises(ConfigError, match="chunk-size"):
        plan_partitions(lake, LOCK, chunk_size=0)
    with pytest.raises(ConfigError, match="--source"):
        plan_partitions(lake, LOCK, source="gold")
    with pytest.raises(ConfigError, match="no partition"):
        plan_partitions(lake, LOCK, prefix="day=1999-01-01/")
    with pytest.raises(ConfigError, match="not inside"):
        plan_partitions(lake, LOCK, prefix="s3://elsewhere/x/")
    with pytest.raises(UnknownBackfillRun):
        run_backfill(lake, "20251124T000000Z-abcdef")
    with pytest.raises(UnknownBackfillRun):
        run_status(lake, "../../etc")
    plan = plan_partitions(lake, LOCK)
    with pytest.raises(ConfigError, match="max-concurrency"):
        run_backfill(lake, plan.run_id, max_concurrency=0)
    with pytest.raises(ConfigError, match="no chunk 'chunk-00009'"):
        run_backfill(lake, plan.run_id, chunk_keys=["chunk-00009"])
    with pytest.raises(ConfigError, match="not both"):
        run_backfill(lake, plan.run_id, chunk_keys=["chunk-00000"], failed_only=True)
    assert registered(lake, LOCK) == []  # nothing refused ran


def sluice(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


def test_the_command_line(lake: Env, capsys: pytest.CaptureFixture[str]) -> None:
    data = ("--data-dir", str(lake.config.data_dir))
    code, out, _ = sluice(
        capsys,
        *data,
        "backfill",
        "plan",
        "partitions",
        "--table",
        LOCK,
        "--chunk-size",
        "7",
        "--json",
    )
    assert code == 0
    run_id = json.loads(out)["runId"]

    code, out, _ = sluice(capsys, *data, "backfill", "status", run_id, "--json")
    status = json.loads(out)
    assert code == 0
    assert {k: status[k] for k in ("totalChunks", "succeededChunks", "failedChunks")} == {
        "totalChunks": 3,
        "succeededChunks": 0,
        "failedChunks": 0,
    }
    assert status["failedChunkKeys"] == []

    code, out, _ = sluice(capsys, *data, "backfill", "run", run_id, "--chunk-keys", "chunk-00001")
    assert code == 0
    code, out, _ = sluice(capsys, *data, "backfill", "status", run_id)
    assert code == 0 and "pending" in out and f"sluice backfill run {run_id}" in out
    code, out, _ = sluice(capsys, *data, "backfill", "run", run_id, "--max-concurrency", "2")
    assert code == 0 and "succeeded" in out
    assert registered(lake, LOCK) == files_partitions(lake, LOCK)
    code, out, _ = sluice(capsys, *data, "backfill", "rerun", run_id, "--failed", "--json")
    assert code == 0 and json.loads(out)["selected"] == []

    code, _, err = sluice(capsys, *data, "backfill", "status", "nope")
    assert code == 1 and "no backfill run 'nope'" in err and "next:" in err
    code, _, err = sluice(capsys, *data, "backfill", "run", run_id, "--max-concurrency", "0")
    assert code == 1 and "at least 1" in err
    code, _, err = sluice(capsys, *data, "backfill", "rerun", run_id)
    assert code == 1 and "--failed" in err
    code, _, err = sluice(capsys, *data, "backfill", "plan", "partitions", "--table", "nope")
    assert code == 1 and "unknown table" in err
    code, out, _ = sluice(
        capsys,
        *data,
        "backfill",
        "plan",
        "refine-15m",
        "--start",
        "2025-11-24",
        "--end",
        "2025-11-22",
        "--json",
    )
    assert code == 1 and "before" in json.loads(out)["message"]
