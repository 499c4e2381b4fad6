"""The command line: every command documented, `--json` everywhere, clear failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.cli.app import app, main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SLUICE_DATA_DIR", "SLUICE_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def leaf_commands() -> list[list[str]]:
    """Every runnable command path, e.g. ["query"], ["catalog", "repair"]."""
    import typer.main

    def walk(command: Any, path: list[str]) -> list[list[str]]:
        children = getattr(command, "commands", None)
        if not children:
            return [path]
        return [p for name, child in sorted(children.items()) for p in walk(child, [*path, name])]

    return walk(typer.main.get_command(app), [])


def test_every_command_has_help_and_json() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    commands = leaf_commands()
    assert {"demo", "generate", "ingest", "worker", "query", "setup"} <= {c[0] for c in commands}
    assert run("--help").returncode == 0  # the installed entry point starts
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert "--json" in result.output, f"{' '.join(path)} has no --json"
        text = result.output.split("Options")[0]
        assert len(text.strip().splitlines()) >= 3, f"{' '.join(path)} has no description"


def test_generate_ingest_worker_query_as_json(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    gen = run("--json", "generate", "-o", str(tmp_path / "t.ndjson"), "--events", "300")
    assert gen.returncode == 0, gen.stderr
    expected = json.loads(gen.stdout)
    ing = run("--data-dir", data, "ingest", str(tmp_path / "t.ndjson"), "--json")
    assert ing.returncode == 0, ing.stderr
    assert json.loads(ing.stdout)["lines"] == expected["lines"]
    work = run("--data-dir", data, "worker", "--until-idle", "--json")
    assert work.returncode == 0, work.stderr
    stats = json.loads(work.stdout)
    assert stats["rows"] == sum(expected["rows"].values())
    assert stats["quarantined_lines"] == sum(expected["bad_lines"].values())
    q = run("--data-dir", data, "query", "SELECT count(*) AS n FROM telemetry_lock_flat", "--json")
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"n": expected["rows"]["telemetry_lock_flat"]}]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["ingest", "/nonexistent/file.ndjson"], "does not exist"),
        (["query", "SELEC nonsense"], "syntax"),
        (["query", "SELECT * FROM no_such_table"], "no_such_table"),
        (["query", "   "], "empty SQL"),
        (["--env", "nowhere", "query", "SELECT 1"], "unknown environment"),
        (["worker", "--processes", "0"], "at least 1"),
        (["generate", "--events", "-5"], "events"),
        (["ingest", "x", "--max-object-mb", "-1"], "positive"),
    ],
)
def test_failures_exit_nonzero_with_a_clear_message(
    tmp_path: Path, args: list[str], text: str
) -> None:
    result = run("--data-dir", str(tmp_path / "data"), *args)
    assert result.returncode != 0
    assert text.lower() in (result.stderr + result.stdout).lower()
    as_json = run("--data-dir", str(tmp_path / "data"), "--json", *args)
    assert as_json.returncode != 0
    assert "error" in json.loads(as_json.stdout)


def test_unknown_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run("worker", "--until-idel")
    assert result.returncode == 2
    assert "--until-idel" in result.stderr


def test_bad_config_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "sluice.toml").write_text("[env.local]\nvisibility_timeout = 3\n")
    result = run("query", "SELECT 1", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown key" in result.stderr and "visibility_timeout" in result.stderr


def test_main_entry_point_returns_usage_for_no_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code in (0, 2)
    assert "Usage" in capsys.readouterr().out + capsys.readouterr().err


def test_demo_runs_the_whole_pipeline_and_checks_itself(tmp_path: Path) -> None:
    result = run("--data-dir", str(tmp_path / "data"), "demo", "--events", "1500", "--json")
    assert result.returncode == 0, result.stderr
    demo = json.loads(result.stdout)
    assert demo["matches_generator"] is True
    assert demo["worker"]["rows"] == sum(demo["generated"]["rows"].values())
    # A fresh lake: the compacted tables hold exactly the distinct (event_id, ordinal).
    assert demo["compacted"] == {
        table.replace("telemetry_", "int_").replace("_flat", "_compacted_daily"): n
        for table, n in demo["generated"]["distinct_events"].items()
    }
    assert demo["verified_days"] and set(demo["verified_days"].values()) == {"PASS"}
