"""`sluice catalog repair|reconcile` through the command line (in process, for speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sluice.backends.catalog.base import Partition
from sluice.cli.app import main
from sluice.env import Env
from tests.catalog.conftest import LOCK, build_lake, part, partitions


def sluice(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out.out, out.err


def broken(env: Env) -> list[str]:
    """A lake with one partition missing from the catalog and one empty one registered."""
    build_lake(env)
    good = partitions(env, LOCK)
    env.catalog.drop_partitions(LOCK, [part(good[0])])
    env.catalog.add_partitions(LOCK, [Partition(("2025-01-01", "00"))])
    return good


def test_repair_dry_run_then_repair_then_nothing_to_do(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    good = broken(env)
    data = str(env.config.data_dir)
    before = partitions(env, LOCK)
    code, out, _ = sluice(capsys, "--data-dir", data, "catalog", "repair", "--dry-run")
    assert code == 0 and "would add" in out and "would drop" in out and "dry run" in out
    assert partitions(env, LOCK) == before

    code, out, _ = sluice(capsys, "--data-dir", data, "catalog", "repair", "--json")
    assert code == 0
    result = json.loads(out)
    (lock,) = [t for t in result["tables"] if t["table"] == LOCK]
    assert (lock["to_add"], lock["to_drop"]) == ([good[0]], ["day=2025-01-01/hour=00"])
    assert (lock["added"], lock["dropped"], result["dry_run"]) == (1, 1, False)
    assert partitions(env, LOCK) == good

    code, out, _ = sluice(capsys, "--data-dir", data, "catalog", "repair")
    assert code == 0 and "nothing to do" in out


def test_protected_environment_needs_yes_to_drop(
    env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = broken(env)
    toml = tmp_path / "sluice.toml"
    toml.write_text(f'[env.prod]\ndata_dir = "{env.config.data_dir}"\nprotected = true\n')
    base = ("--config", str(toml), "--env", "prod", "catalog", "repair")
    code, _, err = sluice(capsys, *base)
    assert code == 1 and "protected" in err and "--yes" in err
    assert partitions(env, LOCK) == ["day=2025-01-01/hour=00", *good]  # added, none dropped

    code, out, _ = sluice(capsys, *base, "--json")
    assert code == 1 and json.loads(out)["drops_refused"] is True

    code, _, _ = sluice(capsys, *base, "--dry-run")
    assert code == 0
    code, _, _ = sluice(capsys, *base, "--yes")
    assert code == 0 and partitions(env, LOCK) == good


@pytest.mark.parametrize("table", ["telemetry_nope_flat", "../../etc/passwd", "[bold]x[/]"])
def test_bad_table_fails_with_the_known_tables(
    env: Env, capsys: pytest.CaptureFixture[str], table: str
) -> None:
    data = str(env.config.data_dir)
    code, _, err = sluice(capsys, "--data-dir", data, "catalog", "repair", "--table", table)
    assert code == 1 and "unknown table" in err and LOCK in err
    code, out, _ = sluice(
        capsys, "--data-dir", data, "catalog", "repair", "--table", table, "--json"
    )
    assert code == 1 and json.loads(out)["table"] == table


def test_reconcile_reports_and_fixes(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lake = build_lake(env, now_arrival=True)
    bucket = env.config.buckets.verified
    env.store.delete_batch(bucket, [lake.lock_23])
    data = str(env.config.data_dir)
    code, out, _ = sluice(capsys, "--data-dir", data, "catalog", "reconcile", "--dry-run")
    assert code == 0 and "missing" in out and lake.lock_23 in out

    code, out, _ = sluice(capsys, "--data-dir", data, "catalog", "reconcile", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["redriven"] == [str(lake.sources[1])]
    assert result["missing_outputs"] == [f"s3://{bucket}/{lake.lock_23}"]

    code, _, err = sluice(
        capsys, "--data-dir", data, "catalog", "reconcile", "--lookback-hours", "-2"
    )
    assert code == 1 and "lookback" in err
