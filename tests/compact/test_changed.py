"""`sluice compact --changed`: the days to rebuild come from the file registry, exactly."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice.cli.app import main
from sluice.compact.daily import CompactStatus, compacted_rows
from sluice.compact.run import Reason, compact, plan_changed
from sluice.env import Env
from sluice.errors import ConfigError
from sluice.layout import ObjectUri, parse_uri, raw_key, table_name
from sluice.messages import process_raw_file, redrive_raw_file
from sluice.process.worker import run_worker
from tests.compact.conftest import verified_keys
from tests.conftest import ARRIVED, line, make_event, put_raw
from tests.e2e.conftest import Run


def cli(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, Any]:
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(data_dir), "compact", "--json", *args])
    out = capsys.readouterr().out
    return int(info.value.code or 0), json.loads(out)


def units(planned: list[Any]) -> set[tuple[str, str]]:
    return {(p.type, p.day) for p in planned}


def test_changed_compacts_every_day_once_then_nothing(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    every = set(verified_keys(run))
    dry = compact(run.env, changed=True, dry_run=True)
    assert units(dry.planned) == every
    assert {p.reason for p in dry.planned} == {Reason.NEVER_COMPACTED}
    assert dry.compacted == [] and run.env.lake.list_tables() == []  # a plan changes nothing
    code, first = cli(capsys, run.data_dir, "--changed", "--type", "lock")
    assert code == 0
    every = {u for u in every if u[0] == "lock"}
    assert code == 0
    assert {(c["type"], c["day"]) for c in first["compacted"]} == every
    assert {c["status"] for c in first["compacted"]} == {"compacted"}
    assert {r["status"] for r in first["rollups"]} == {"built"}
    code, second = cli(capsys, run.data_dir, "--changed", "--type", "lock")
    assert code == 0 and second["planned"] == [] and second["compacted"] == []
    assert units(plan_changed(run.env)) == set(verified_keys(run)) - every


def test_redrive_recompacts_exactly_the_days_of_its_object(run: Run) -> None:
    compact(run.env, changed=True, rollups=False)
    tables = {table_name(t): t for t in ("lock", "bridge", "video_doorbell")}

    def days_of(uri: str) -> set[tuple[str, str]]:
        ref = parse_uri(uri)
        record = run.env.ledger.get(ref.bucket, ref.key)
        assert record is not None
        return {(tables[o.table], o.day) for o in record.outputs if o.table in tables}

    # The object that touches the fewest (type, day) units: fewer than the lake holds.
    uri = min(run.ingested.objects, key=lambda u: len(days_of(u)))
    source = parse_uri(uri)
    expected = days_of(uri)
    assert 0 < len(expected) < len(verified_keys(run))
    rows_before = {u: compacted_rows(run.env, *u) for u in expected}
    run.env.processing_queue.send_batch([redrive_raw_file(source, str(uuid.uuid4()))])
    assert run_worker(run.env, until_idle=True).completed == 1
    planned = plan_changed(run.env)
    assert units(planned) == expected
    assert {p.reason for p in planned} == {Reason.FILES_CHANGED}
    rebuilt = compact(run.env, changed=True, rollups=False)
    assert {(c.type, c.day) for c in rebuilt.compacted} == expected
    assert {u: compacted_rows(run.env, *u) for u in expected} == rows_before
    assert plan_changed(run.env) == []


def test_a_late_event_marks_its_old_day(run: Run) -> None:
    compact(run.env, changed=True, rollups=False)
    (type_, day) = sorted(verified_keys(run))[0]
    late = make_event("late-1", type_=type_, occurred_at=f"{day}T12:00:00Z", assertions=0)
    arrived = ARRIVED.replace(year=int(day[:4]), month=int(day[5:7]), day=int(day[8:]))
    uri = put_raw(run.env, [line(late)], key=raw_key(arrived + timedelta(hours=13)))
    _process(run.env, uri)
    assert units(plan_changed(run.env)) == {(type_, day)}
    assert units(plan_changed(run.env, ["bridge" if type_ != "bridge" else "lock"])) == set()


def _process(env: Env, *uris: ObjectUri) -> None:
    env.processing_queue.send_batch([process_raw_file(uri) for uri in uris])
    assert run_worker(env, until_idle=True).dead_lettered == 0


def test_an_object_that_no_longer_writes_a_day_marks_that_day(env: Env) -> None:
    key = raw_key(ARRIVED)
    uri = put_raw(env, [line(make_event("e-1", occurred_at="2025-11-24T21:00:00Z"))], key=key)
    _process(env, uri)
    assert [(c.day, c.rows) for c in compact(env, changed=True).compacted] == [("2025-11-24", 2)]
    # The object changes (a new ETag): its event now falls on the day before.
    put_raw(env, [line(make_event("e-1", occurred_at="2025-11-23T21:00:00Z"))], key=key)
    _process(env, uri)
    planned = {(p.day, p.reason) for p in plan_changed(env)}
    assert planned == {
        ("2025-11-23", Reason.NEVER_COMPACTED),
        ("2025-11-24", Reason.FILES_GONE),
    }
    rebuilt = {c.day: c for c in compact(env, changed=True).compacted}
    assert rebuilt["2025-11-24"].status is CompactStatus.EMPTY
    assert compacted_rows(env, "lock", "2025-11-24") == 0
    assert compacted_rows(env, "lock", "2025-11-23") == 2
    assert plan_changed(env) == []


def test_date_compacts_every_type_of_the_day(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    day = sorted(verified_keys(run))[0][1]
    code, out = cli(capsys, run.data_dir, "--date", day, "--no-rollups")
    assert code == 0
    assert [(c["type"], c["status"]) for c in out["compacted"]] == [
        ("lock", "compacted"),
        ("bridge", "compacted"),
        ("video_doorbell", "compacted"),
    ]
    assert out["rollups"] == []
    assert units(plan_changed(run.env)) == {u for u in verified_keys(run) if u[1] != day}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of"),
        (["--date", "2025-11-24", "--changed"], "exactly one of"),
        (["--date", "24/11/2025"], "not a day"),
        (["--date", "2025-11-24", "--type", "thermostat"], "unknown type"),
    ],
)
def test_bad_arguments_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out = cli(capsys, tmp_path / "data", *args)
    assert code == 1
    assert out["error"] == "ConfigError" and message in out["message"]
    assert not (tmp_path / "data").exists()  # refused before the environment was opened


def test_library_refuses_neither_day_nor_changed(env: Env) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        compact(env)
