"""`sluice demo`: generate → ingest → worker → compact → verify → query, with a summary."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from sluice.compact import compact
from sluice.env import Env
from sluice.generate import GenerateResult, generate
from sluice.ingest.buffer import IngestResult, ingest_files
from sluice.layout import TYPES, parse_uri, table_name
from sluice.ops.verify import verify
from sluice.process.worker import WorkerStats, run_worker
from sluice.query import run_query

SAMPLE_QUERY = (
    "SELECT envelope__type AS type, day, count(*) AS rows, "
    "count(DISTINCT envelope__device_id) AS devices, "
    "sum(CASE WHEN payload__assertion__passed = false THEN 1 ELSE 0 END) AS failed_assertions "
    "FROM telemetry_lock_flat GROUP BY ALL ORDER BY day"
)


@dataclass
class DemoResult:
    data_dir: str
    generated: GenerateResult
    ingested: IngestResult
    worker: WorkerStats
    compacted: dict[str, int] = field(default_factory=dict)  # table -> rows after dedup
    verified_days: dict[str, str] = field(default_factory=dict)  # day -> verify's verdict
    rows_by_table: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    sample_sql: str = SAMPLE_QUERY
    sample: pa.Table | None = None
    matches_generator: bool = False


def run_demo(
    env: Env,
    *,
    events: int = 20_000,
    bad_fraction: float = 0.02,
    days: int = 3,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    step = on_step or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="sluice-demo-") as tmp:
        path = Path(tmp) / "telemetry.ndjson"
        step(f"generating {events:,} events ({bad_fraction:.0%} bad lines)")
        generated = generate(path, events=events, days=days, bad_fraction=bad_fraction)
        step("ingesting into raw objects")
        ingested = ingest_files(env, [path], max_object_bytes=2 * 1024 * 1024)
    step(f"processing {len(ingested.objects)} raw objects")
    stats = run_worker(env, until_idle=True)
    step("compacting the changed days into deduplicated Iceberg tables")
    run = compact(env, changed=True)
    compacted: dict[str, int] = {}
    for done in run.compacted:
        compacted[done.table] = compacted.get(done.table, 0) + done.rows
    step("verifying every day: duplicates, counts, quality")
    touched = sorted({unit.day for unit in run.planned})
    verdicts = {day: verify(env, day).verdict.value for day in touched}
    step("querying")
    reasons: Counter[str] = Counter()
    for uri in ingested.objects:
        ref = parse_uri(uri)
        record = env.ledger.get(ref.bucket, ref.key)
        if record is not None and record.counts is not None:
            reasons.update(record.counts.quarantine_reasons)
    rows = {}
    for type_ in TYPES:
        table = table_name(type_)
        rows[table] = int(run_query(env, f"SELECT count(*) AS n FROM {table}")["n"][0].as_py())
    return DemoResult(
        data_dir=str(env.config.data_dir),
        generated=generated,
        ingested=ingested,
        worker=stats,
        compacted=compacted,
        verified_days=verdicts,
        rows_by_table=rows,
        quarantine_reasons=dict(reasons),
        sample=run_query(env, SAMPLE_QUERY),
        matches_generator=(
            stats.rows == sum(generated.rows.values())
            and stats.quarantined_lines == sum(generated.bad_lines.values())
            and all(v != "FAIL" for v in verdicts.values())
        ),
    )
