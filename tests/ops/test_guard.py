"""The protected-environment guard: destructive commands plan, then refuse without --yes."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice.backends.ledger.base import SourceRef
from sluice.backends.ledger.sqlite import SqliteLedger
from sluice.cli.app import main
from sluice.config import load_config
from sluice.env import Env, open_env
from sluice.errors import CorruptObject, ProtectedEnvironment
from sluice.ops.guard import confirm_destructive
from sluice.process.processor import process_object
from tests.conftest import line, make_event, put_raw

COMMANDS = {
    "reset-stuck": ("ledger", "reset-stuck", "--older-than", "0s"),
    "retry-failed": ("ledger", "retry-failed", "--older-than", "0s"),
    "cleanup": ("ledger", "cleanup", "--older-than", "30d"),
}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    # Rich wraps long lines at the terminal's width; compare words, not line breaks.
    return int(exited.value.code or 0), " ".join(out.split()), " ".join(err.split())


@pytest.fixture
def prod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, Path]:
    """A protected environment holding one record for each destructive command to change: a
    stuck claim, a failed object, a completed record 40 days old."""
    monkeypatch.delenv("SLUICE_DATA_DIR", raising=False)
    config_file = tmp_path / "sluice.toml"
    config_file.write_text(
        f'[env.prod]\nprotected = true\ndata_dir = "{tmp_path / "data"}"\n'
        "visibility_timeout_seconds = 2\nlease_seconds = 2\n"
    )
    env = open_env(load_config("prod", config_file=config_file))
    stuck = put_raw(env, [line(make_event("e-stuck"))])
    etag = env.store.head(stuck.bucket, stuck.key).etag
    env.ledger.claim(SourceRef(stuck.bucket, stuck.key, etag), "dead", 0.01)
    with contextlib.suppress(CorruptObject):
        process_object(env, put_raw(env, [], raw=b"\x1f\x8b\x08\x00garbage"))
    old_clock = SqliteLedger(
        env.config.data_dir / "ledger.sqlite",
        clock=lambda: datetime.now(UTC) - timedelta(days=40),
    )
    process_object(replace(env, ledger=old_clock), put_raw(env, [line(make_event("e-old"))]))
    time.sleep(0.02)  # the stuck claim's lease runs out
    return env, config_file


def state(env: Env) -> tuple[Any, ...]:
    records = [(r.key, r.status, r.updated_at, r.owner) for r in env.ledger.list()]
    queues = [
        (q.counts().visible, q.counts().in_flight)
        for q in (env.processing_queue, env.processing_dlq)
    ]
    return tuple(records), tuple(queues)


def test_guard_decisions(env: Env) -> None:
    assert confirm_destructive(env, "plan", yes=False, dry_run=False) is True
    assert confirm_destructive(env, "plan", yes=True, dry_run=True) is False
    protected = replace(env, config=replace(env.config, protected=True, name="prod"))
    assert confirm_destructive(protected, "plan", yes=True, dry_run=False) is True
    assert confirm_destructive(protected, "plan", yes=False, dry_run=True) is False
    with pytest.raises(ProtectedEnvironment) as refused:
        confirm_destructive(
            protected,
            "forget 3 records",
            yes=False,
            dry_run=False,
            command="sluice --env prod ledger cleanup --older-than 30d",
        )
    error = refused.value
    assert "'prod' is protected" in error.message and "forget 3 records" in error.message
    assert error.hint is not None
    assert "sluice --env prod ledger cleanup --older-than 30d --yes" in error.hint
    assert "sluice --env prod ledger cleanup --older-than 30d --dry-run" in error.hint
    assert error.context["plan"] == "forget 3 records"
    with pytest.raises(ProtectedEnvironment) as refused:
        confirm_destructive(protected, "plan", yes=False, dry_run=False)
    assert "--yes" in (refused.value.hint or "") and "--dry-run" in (refused.value.hint or "")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_protected_environment_refuses_without_yes_and_changes_nothing(
    prod: tuple[Env, Path], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    env, config_file = prod
    base = ("--env", "prod", "--config", str(config_file))
    command = COMMANDS[name]
    before = state(env)

    code, _, err = cli(capsys, *base, *command)
    assert code == 1 and "'prod' is protected" in err and "1 record(s)" in err
    typed = " ".join(("sluice", *base, *command))
    assert f"next: {typed} --yes" in err and f"{typed} --dry-run" in err
    assert state(env) == before
    code, out, _ = cli(capsys, *base, *command, "--json")
    refusal = json.loads(out)
    assert code == 1 and refusal["error"] == "ProtectedEnvironment" and name in refusal["plan"]
    assert state(env) == before

    code, out, _ = cli(capsys, *base, *command, "--dry-run")
    assert code == 0 and "dry run: nothing changed" in out and f"{name}:" in out
    assert state(env) == before

    code, out, _ = cli(capsys, *base, *command, "--yes", "--json")
    result = json.loads(out)
    assert code == 0 and (result["planned"], result["done"], result["dry_run"]) == (1, 1, False)
    assert state(env) != before
