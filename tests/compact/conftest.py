"""A small lake built by the real pipeline (generate → ingest → worker), once per session, and
helpers that read compacted days back *independently* of the code under test: verified files
through pyarrow, lake data files through DuckDB."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from sluice.backends.lake.base import Lake
from sluice.layout import parse_verified_key

# The AWS environment on the moto server, for the tests that run on both backends.
from tests.aws.conftest import aws_config, aws_env  # noqa: F401
from tests.e2e.conftest import NOW, Run, copy_run, run_pipeline, verified_files

Key = tuple[str, int]  # (event_id, ordinal)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """2,000 events over the 24 hours before the last noon (UTC: 13 hours of one day, 11 of the
    next, whatever the time the tests run; resends and bad lines included), processed; not
    compacted."""
    noon = NOW.replace(hour=12)
    if noon > NOW:
        noon -= timedelta(days=1)
    return run_pipeline(
        tmp_path_factory.mktemp("lake"), events=2_000, days=1, bad_fraction=0.02, now=noon
    )


@pytest.fixture
def run(base_run: Run, tmp_path: Path) -> Run:
    """A private copy of the base lake, for tests that change it."""
    return copy_run(base_run, tmp_path)


def verified_keys(run: Run) -> dict[tuple[str, str], list[Key]]:
    """(type, day) → every (event_id, ordinal) of the verified files, duplicates included."""
    out: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key, path in verified_files(run.config).items():
        parsed = parse_verified_key(key)
        assert parsed is not None, key
        table = pq.read_table(path, columns=["envelope__event_id", "envelope__ordinal"])
        out[(parsed.type, parsed.day)] += list(
            zip(
                table.column("envelope__event_id").to_pylist(),
                table.column("envelope__ordinal").to_pylist(),
                strict=True,
            )
        )
    return dict(out)


def local_paths(lake: Lake, table: str, day: str | None = None) -> list[str]:
    """The table's current data files as local paths (embedded lake: file:// URIs)."""
    files = lake.files(table, day=day)
    assert all(f.uri.startswith("file://") for f in files)
    return [f.uri.removeprefix("file://") for f in files]


def duckdb_keys(paths: list[str]) -> list[Key]:
    """(event_id, ordinal) of every row of the Parquet files, read by DuckDB alone."""
    if not paths:
        return []
    rows = duckdb.execute(
        "SELECT envelope__event_id, envelope__ordinal FROM read_parquet($paths)",
        {"paths": paths},
    ).fetchall()
    return [(str(e), int(o)) for e, o in rows]
