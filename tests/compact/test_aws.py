"""Compaction on the AWS backends (moto server): the real pipeline writes verified files to S3,
compaction writes Iceberg tables registered in Glue with their data in the lake bucket."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sluice.compact.daily import compacted_rows
from sluice.compact.rollup import RollupStatus
from sluice.compact.run import compact, plan_changed
from sluice.compact.state import compacted_table, rollup_table
from sluice.env import Env
from sluice.generate import generate
from sluice.ingest.buffer import ingest_files
from sluice.layout import parse_verified_key, table_name
from sluice.process.worker import run_worker
from tests.e2e.conftest import NOW

pytestmark = pytest.mark.aws


def verified_keys(env: Env, type_: str) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(type, day) → (event_id, ordinal) of every verified row, read from S3 with pyarrow."""
    fs, root = env.store.arrow_filesystem()
    out: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for obj in env.store.list(env.config.buckets.verified, f"telemetry_flat/type={type_}/"):
        parsed = parse_verified_key(obj.key)
        assert parsed is not None
        table = pq.read_table(
            f"{root}{obj.bucket}/{obj.key}",
            filesystem=fs,
            columns=["envelope__event_id", "envelope__ordinal"],
        )
        out[(parsed.type, parsed.day)] += list(zip(*table.to_pydict().values(), strict=True))
    return dict(out)


def test_compaction_on_glue_and_s3(aws_env: Env, tmp_path: Path) -> None:
    source = tmp_path / "t.ndjson"
    generated = generate(
        source, events=300, days=1, bad_fraction=0.0, resend_fraction=0.05, now=NOW
    )
    ingest_files(aws_env, [source], max_object_bytes=64 * 1024)
    assert run_worker(aws_env, until_idle=True).dead_lettered == 0
    # One type keeps the test short on the moto server; the embedded tests cover them all.
    verified = verified_keys(aws_env, "lock")
    run = compact(aws_env, changed=True, types=["lock"])
    assert {(c.type, c.day) for c in run.compacted} == set(verified)
    assert {r.status for r in run.rollups} == {RollupStatus.BUILT}
    fs, root = aws_env.store.arrow_filesystem()
    for (type_, day), keys in verified.items():
        table = compacted_table(type_)
        scanned = aws_env.lake.scan(table, day=day).read_all()
        assert scanned.num_rows == len(set(keys)) == compacted_rows(aws_env, type_, day)
        # Independently: the data files in the lake bucket, read with pyarrow's S3 filesystem.
        files = aws_env.lake.files(table, day=day)
        assert all(
            f.uri.startswith(f"s3://{aws_env.config.buckets.lake}/lake/{table}/") for f in files
        )
        read: Counter[tuple[str, int]] = Counter()
        for f in files:
            rows = pq.read_table(
                root + f.uri.removeprefix("s3://"),
                filesystem=fs,
                columns=["envelope__event_id", "envelope__ordinal"],
            )
            read.update(zip(*rows.to_pydict().values(), strict=True))
        assert read == Counter(set(keys))
    total = sum(c.rows for c in run.compacted)
    assert total == generated.distinct_events[table_name("lock")]

    # The lake's tables are Iceberg tables in the environment's Glue database, beside the
    # verified tables, which the sluice catalog still lists alone.
    glue = aws_env.aws.client("glue")  # type: ignore[union-attr]
    found = {
        t["Name"]: t.get("Parameters", {}).get("table_type")
        for page in glue.get_paginator("get_tables").paginate(
            DatabaseName=aws_env.config.glue_database
        )
        for t in page["TableList"]
    }
    assert found[compacted_table("lock")] == found[rollup_table("lock")] == "ICEBERG"
    assert {t.name for t in aws_env.catalog.list_tables()} == {
        table_name(t) for t in ("lock", "bridge", "video_doorbell")
    }

    assert plan_changed(aws_env, ["lock"]) == []
    (type_, day) = sorted(verified)[0]
    before = aws_env.lake.snapshots(compacted_table(type_))
    again = compact(aws_env, day=day, types=[type_], rollups=False)
    assert again.compacted[0].rows == len(set(verified[(type_, day)]))
    after = aws_env.lake.snapshots(compacted_table(type_))
    assert len(after) == len(before) + 1 and after[-1].operation == "overwrite"
