"""`sluice verify` on the command line: exit codes, --json, samples with -v, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from sluice.cli.app import main
from sluice.env import Env
from sluice.layout import ObjectUri
from tests.ops.test_verify import DAY, LOCK, build_lake, output_of


@pytest.fixture
def lake(env: Env) -> dict[str, ObjectUri]:
    return build_lake(env)


def sluice(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns the exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(env.config.data_dir), *args])
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def findings(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    return {
        (r["table"], r["check"], f["name"]): f["verdict"]
        for r in report["results"]
        for f in r["findings"]
    }


def test_a_whole_lake_exits_0_with_the_whole_report(
    env: Env, lake: dict[str, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sluice(env, capsys, "verify", "--date", DAY, "--type", "lock", "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) == {
        "day",
        "tables",
        "checks",
        "verdict",
        "has_data",
        "results",
        "seconds",
    }
    assert (report["day"], report["tables"], report["has_data"]) == (DAY, [LOCK], True)
    assert report["checks"] == ["duplicates", "counts", "quality"]
    assert set(report["results"][0]) == {"check", "table", "verdict", "findings"}
    assert set(report["results"][0]["findings"][0]) == {
        "name",
        "verdict",
        "message",
        "numbers",
        "samples",
        "hint",
    }
    assert {k: v for k, v in findings(report).items() if v != "PASS"} == {
        (LOCK, "counts", "compacted"): "WARN"
    }


def test_a_pipeline_duplicate_exits_1(
    env: Env, lake: dict[str, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    original = output_of(env, lake["a"])
    copy = original.key.replace(".parquet", "-copy.parquet")
    env.store.copy(original.bucket, original.key, original.bucket, copy)

    code, out, _ = sluice(
        env, capsys, "--json", "verify", "--date", DAY, "--check-duplicates", "--samples", "1"
    )

    assert code == 1
    report = json.loads(out)
    assert report["verdict"] == "FAIL" and report["checks"] == ["duplicates"]
    assert findings(report)[(LOCK, "duplicates", "pipeline_duplicates")] == "FAIL"
    [result] = [r for r in report["results"] if r["table"] == LOCK]
    [sample] = result["findings"][0]["samples"]
    assert sample["source_ref"] == str(lake["a"]) and sample["line"] == 1
    assert {f["uri"].rsplit("/", 1)[1]: f["in_ledger"] for f in sample["files"]} == {
        original.key.rsplit("/", 1)[1]: True,
        copy.rsplit("/", 1)[1]: False,
    }


def test_text_output_shows_samples_with_v(env: Env, lake: dict[str, ObjectUri]) -> None:
    original = output_of(env, lake["a"])
    copy = original.key.replace(".parquet", "-copy.parquet")
    env.store.copy(original.bucket, original.key, original.bucket, copy)
    environ = {k: v for k, v in os.environ.items() if k not in ("SLUICE_DATA_DIR", "SLUICE_CONFIG")}
    command = [sys.executable, "-m", "sluice.cli", "--data-dir", str(env.config.data_dir)]
    command += ["verify", "--date", DAY, "--type", "lock", "--check-duplicates"]
    plain = subprocess.run(
        command, capture_output=True, text=True, env=environ | {"COLUMNS": "250"}, timeout=60
    )
    verbose = subprocess.run(
        [*command, "-v"], capture_output=True, text=True, env=environ | {"COLUMNS": "250"}
    )
    assert plain.returncode == verbose.returncode == 1
    assert "pipeline_duplicates" in plain.stdout and "FAIL" in plain.stdout
    assert "-v shows samples" in plain.stdout and copy not in plain.stdout
    assert f"sluice redrive --source-ref-day {DAY} --type lock --wait" in plain.stdout
    assert f"sluice redrive --parquet-uri s3://{original.bucket}/{copy} --wait" in verbose.stdout
    assert copy in verbose.stdout and str(lake["a"]) in verbose.stdout


def test_a_day_without_data_says_so(
    env: Env, lake: dict[str, ObjectUri], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = sluice(env, capsys, "verify", "--date", "2025-11-20", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["has_data"] is False and report["verdict"] == "WARN"
    code, out, _ = sluice(env, capsys, "verify", "--date", "2025-11-20")
    assert code == 0 and "no data" in out


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--date", "2025-11-31"], "YYYY-MM-DD"),
        (["--date", "yesterday"], "YYYY-MM-DD"),
        (["--date", DAY, "--type", "toaster"], "unknown type"),
        (["--date", DAY, "--type", "lock", "--all-tables"], "exclude each other"),
        (["--date", DAY, "--thresholds", "/nonexistent.toml"], "cannot read"),
        (["--date", DAY, "--samples", "-1"], "--samples"),
    ],
)
def test_bad_inputs_exit_1_with_a_reason(
    env: Env, capsys: pytest.CaptureFixture[str], args: list[str], text: str
) -> None:
    code, out, err = sluice(env, capsys, "verify", *args)
    assert code == 1
    assert text in err and "Traceback" not in err
    code, out, _ = sluice(env, capsys, "--json", "verify", *args)
    assert code == 1 and json.loads(out)["error"] == "ConfigError"


def test_the_date_is_required(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = sluice(env, capsys, "verify")
    assert code == 2 and "--date" in err
