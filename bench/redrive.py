"""Redrive benchmark (DESIGN §9): planning and sending a surgical day redrive, against sending
the same messages one per request.

A day of `telemetry_lock_flat` fed by N raw objects (10,000 on the embedded backends, 1,000 on a
moto server: moto answers about a hundred requests a second and slows as its queue grows) is
built cheaply: one real event is processed once, and its verified rows are rewritten with each
source's `envelope__source_ref` into each source's verified file (the key the parser would give
it), beside a tiny raw object per source; the day's 24 partitions are registered in the catalog.
On the embedded backends each source also gets a completed ledger record, as after processing.

- sluice, end to end: `redrive(env, --source-ref-day DAY --type lock)`, the library call behind
  the command: the day's distinct source_refs through the query engine, the day's partitions
  listed, every raw object checked to exist, the run's chunk files written, then
  `redrive_raw_file` messages sent ten to a `send_batch`, each chunk's result recorded;
- sluice, sending alone: the planned run's chunks sent again by the same `Sender`;
- reference: the same N messages, one `send` per message.

Every measurement starts from an empty queue and must leave exactly N messages in it. The
sending rounds alternate the two sides (median of `--rounds`); the ratio that compares like with
like is the sending one, the end-to-end one counts sluice's planning too.

    .venv/bin/python bench/redrive.py                       # both backends (~1-2 min)
    .venv/bin/python bench/redrive.py --backend embedded --sources 2000 --repeat 3

The embedded lake is cached in bench/work/redrive-<N>/; results go to bench/results/redrive.json.
Exit status is 0 when the figures were measured and the message counts were right.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))

from machine import machine_info  # noqa: E402  (bench/machine.py)

from sluice.backends.catalog.base import Partition  # noqa: E402
from sluice.backends.ledger.base import Counts, Output, SourceRef  # noqa: E402
from sluice.config import Buckets, EnvConfig, QueueNames  # noqa: E402
from sluice.env import Env, open_env  # noqa: E402
from sluice.layout import table_name, verified_key  # noqa: E402
from sluice.messages import redrive_raw_file  # noqa: E402
from sluice.ops.redrive import RedriveEvent, RedriveRequest, Target, redrive  # noqa: E402

WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results" / "redrive.json"
DAY = "2025-11-24"
TYPE = "lock"
INPUT_VERSION = 1  # bump when the built lake changes


# -- the lake -----------------------------------------------------------------------------------


def _template(scratch: Path) -> Any:
    """The verified rows of one real event (two assertion rows), as the parser writes them."""
    import pyarrow.parquet as pq

    from sluice.process.processor import process_object

    env = open_env(EnvConfig(data_dir=scratch))
    event = {
        "envelope": {
            "event_id": "template",
            "type": TYPE,
            "event_kind": "assertion",
            "device_id": "dev-1",
            "occurred_at": f"{DAY}T12:00:00Z",
            "schema_version": 1,
        },
        "payload": {"battery_pct": 80, "assertions": [{"component_name": "motor"}] * 2},
    }
    env.store.put("raw", "template.gz", gzip.compress(json.dumps(event).encode() + b"\n"))
    (output,) = process_object(env, "s3://raw/template.gz").outputs[:1]
    fs, root = env.store.arrow_filesystem()
    return pq.read_table(f"{root}{output.bucket}/{output.key}", filesystem=fs), event


def raw_uri(env: Env, i: int) -> str:
    return (
        f"s3://{env.config.buckets.raw}/raw/json_telemetry/year=2025/month=11/day=25/hour=00/"
        f"ingest-2025-11-25-00-00-05-{i:08d}-0000-4000-8000-000000000000.gz"
    )


def build_lake(env: Env, sources: int, scratch: Path, *, ledger: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sluice.layout import parse_uri

    template, event = _template(scratch)
    column = template.schema.get_field_index("envelope__source_ref")
    raw_bytes = gzip.compress(json.dumps(event).encode() + b"\n")
    verified = env.config.buckets.verified
    started = time.monotonic()
    for i in range(sources):
        uri = raw_uri(env, i)
        ref = parse_uri(uri)
        env.store.put(ref.bucket, ref.key, raw_bytes)
        hour = f"{i % 24:02d}"
        rows = template.set_column(
            column, template.schema.field(column), pa.array([uri] * template.num_rows)
        )
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, compression="zstd")
        key = verified_key(uri, TYPE, DAY, hour)
        env.store.put(verified, key, buffer.getvalue())
        if ledger:
            info = env.store.head(ref.bucket, ref.key)
            claim = env.ledger.claim(SourceRef(ref.bucket, ref.key, info.etag), "bench", 60).claim
            assert claim is not None
            output = Output(verified, key, table_name(TYPE), DAY, hour, template.num_rows)
            counts = Counts(lines=1, good_lines=1, rows=template.num_rows)
            env.ledger.complete(claim, [output], counts)
        if (i + 1) % 1000 == 0:
            print(f"  built {i + 1:,} sources ({time.monotonic() - started:.0f}s)", flush=True)
    partitions = [Partition((DAY, f"{h:02d}")) for h in range(min(24, sources))]
    env.catalog.add_partitions(table_name(TYPE), partitions)


def embedded_env(sources: int, rebuild: bool) -> Env:
    root = WORK / f"redrive-{sources}"
    marker = root / "built.json"
    if rebuild or not marker.exists() or json.loads(marker.read_text()) != INPUT_VERSION:
        shutil.rmtree(root, ignore_errors=True)
        print(f"building an embedded lake of {sources:,} sources in {root}", flush=True)
        env = open_env(EnvConfig(data_dir=root / "data"))
        build_lake(env, sources, root / "template", ledger=True)
        marker.write_text(json.dumps(INPUT_VERSION))
    return open_env(EnvConfig(data_dir=root / "data"))


def moto_env(endpoint: str) -> Env:
    tag = datetime.now(UTC).strftime("%H%M%S")
    config = EnvConfig(
        name="moto",
        backend="aws",
        region="us-east-1",
        endpoint_url=endpoint,
        buckets=Buckets(f"raw-{tag}", f"verified-{tag}", f"quarantine-{tag}", f"lake-{tag}"),
        queues=QueueNames(f"processing-{tag}", f"processing-dlq-{tag}"),
        ledger_table=f"ledger-{tag}",
        glue_database=f"sluice_{tag}",
    )
    return open_env(config, setup=True)


# -- the measurements ---------------------------------------------------------------------------


class RotatingQueue:
    """A queue that moves on to a new, empty queue every `every` messages.

    moto's SQS spends time in proportion to the messages a queue already holds on every send
    (a send to a queue of 800 messages takes about 40 times as long as to an empty one), which
    would measure moto instead of the requests. Both sides send through the same rotation, so
    each pays the same queue creations; on the embedded queue (indexed) `every` is unbounded.
    """

    def __init__(self, env: Env, label: str, every: int | None) -> None:
        self.env = env
        self.label = f"{label}-{time.monotonic_ns() % 10**9}"
        self.every = every
        self.queues: list[Any] = []
        self.held = 0
        self.name = self.label
        self._next()

    def _next(self) -> None:
        from sluice.backends.queue.base import QueueSettings

        config = self.env.config
        settings = QueueSettings(config.visibility_timeout_seconds, config.retention_seconds)
        name = f"{config.queues.processing}-{self.label}-{len(self.queues)}"
        self.queues.append(self.env.queues.create(name, settings))
        self.held = 0

    def _for(self, count: int) -> Any:
        if self.every is not None and self.held + count > self.every:
            self._next()
        self.held += count
        return self.queues[-1]

    def send(self, body: str, attributes: Any = None) -> str:
        message_id: str = self._for(1).send(body, attributes)
        return message_id

    def send_batch(self, entries: Any) -> Any:
        return self._for(len(entries)).send_batch(entries)

    def counts(self) -> Any:
        from sluice.backends.queue.base import QueueCounts

        counts = [q.counts() for q in self.queues]
        return QueueCounts(sum(c.visible for c in counts), sum(c.in_flight for c in counts))


def fresh_queue(env: Env, label: str, every: int | None) -> None:
    """Point the environment at a new, empty processing queue, so both sides start alike (SQS
    allows one purge a minute; an embedded queue database that kept every message of the
    earlier runs would make each run slower than the one before)."""
    if env.config.backend == "embedded":
        from sluice.backends.queue.sqlite import SqliteQueueFactory

        path = WORK / "redrive-queues" / f"{label}.sqlite"
        for old in path.parent.glob(f"{label}.sqlite*"):
            old.unlink()
        env.queues = SqliteQueueFactory(path)
    env.__dict__["processing_queue"] = RotatingQueue(env, label, every)


def run_sluice(env: Env, sources: int, rotate: int | None) -> dict[str, Any]:
    fresh_queue(env, "sluice", rotate)
    marks: dict[str, float] = {}

    def on_event(event: RedriveEvent) -> None:
        marks.setdefault(event.kind, time.monotonic())

    started = time.monotonic()
    result = redrive(
        env, RedriveRequest(Target.of(source_ref_day=DAY, type_=TYPE)), on_event=on_event
    )
    total = time.monotonic() - started
    plan = marks["planned"] - started
    queued = env.processing_queue.counts().visible
    return {
        "sources": result.sources,
        "run_id": result.run_id,
        "plan_seconds": round(plan, 3),
        "send_seconds": round(result.sending.seconds, 3),
        "total_seconds": round(total, 3),
        "batches": result.sending.batches,
        "messages_per_second_sending": round(result.sending.messages_per_second, 1),
        "sources_per_second_end_to_end": round(result.sources / total, 1),
        "queued": queued,
        "ok": result.sources == result.sending.sent == queued == sources,
    }


def run_reference(env: Env, sources: int, rotate: int | None) -> dict[str, Any]:
    from sluice.layout import parse_uri

    fresh_queue(env, "reference", rotate)
    queue = env.processing_queue
    messages = [
        redrive_raw_file(parse_uri(raw_uri(env, i)), f"reference.{i:07d}") for i in range(sources)
    ]
    started = time.monotonic()
    for message in messages:
        queue.send(message.body, message.attributes)
    seconds = time.monotonic() - started
    queued = queue.counts().visible
    return {
        "messages": sources,
        "send_seconds": round(seconds, 3),
        "messages_per_second": round(sources / seconds, 1),
        "queued": queued,
        "ok": queued == sources,
    }


def run_replay(env: Env, run_id: str, rotate: int | None) -> dict[str, Any]:
    """sluice's sending alone: the planned run's chunks copied to a new run, sent by `Sender`
    (batches of ten, each chunk's result written) to an empty queue."""
    from sluice.ops.redrive.model import Pacing, SendStats
    from sluice.ops.redrive.runfiles import RunFiles, new_run_id
    from sluice.ops.redrive.send import Sender

    planned = RunFiles(env, run_id)
    manifest = planned.get("manifest.json")
    assert manifest is not None
    replay = RunFiles(env, new_run_id())
    for number in range(manifest["chunks"]):
        replay.put_chunk("chunks", number, planned.get_chunk("chunks", number))
    fresh_queue(env, "replay", rotate)
    stats = SendStats()
    sender = Sender(env.processing_queue, replay, Pacing(), stats)
    started = time.monotonic()
    sender.send_run(manifest["chunks"])
    seconds = time.monotonic() - started
    queued = env.processing_queue.counts().visible
    return {
        "send_seconds": round(seconds, 3),
        "messages_per_second": round(stats.sent / seconds, 1),
        "queued": queued,
        "ok": queued == stats.sent == manifest["sources"],
    }


def measure(
    env: Env, sources: int, repeat: int, rounds: int, rotate: int | None = None
) -> dict[str, Any]:
    runs = []
    for i in range(repeat):
        print(f"  end to end {i + 1}/{repeat}: plan and send", flush=True)
        runs.append(run_sluice(env, sources, rotate))
    end_to_end = _median(runs, "total_seconds")
    sending, reference = [], []
    for i in range(rounds):  # alternate the sides, so drift on the machine hits both
        print(f"  sending {i + 1}/{rounds}: batches of ten, then one message per request")
        sending.append(run_replay(env, end_to_end["run_id"], rotate))
        reference.append(run_reference(env, sources, rotate))
    batched = _median(sending, "send_seconds")
    single = _median(reference, "send_seconds")
    return {
        "sources": sources,
        "queue_rotated_every": rotate,
        "end_to_end": end_to_end,
        "sending": batched,
        "reference": single,
        "ratio_sending": round(batched["messages_per_second"] / single["messages_per_second"], 2),
        "ratio_end_to_end": round(
            end_to_end["sources_per_second_end_to_end"] / single["messages_per_second"], 2
        ),
        "all_end_to_end_seconds": [r["total_seconds"] for r in runs],
        "all_sending_seconds": [r["send_seconds"] for r in sending],
        "all_reference_seconds": [r["send_seconds"] for r in reference],
        "ok": all(r["ok"] for r in runs + sending + reference),
    }


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    middle = statistics.median_low(r[key] for r in runs)
    return next(r for r in runs if r[key] == middle)


def main(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "benchmark": "redrive",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "day": DAY,
        "type": TYPE,
        "backends": {},
    }
    if args.backend in ("embedded", "both"):
        env = embedded_env(args.sources, args.rebuild)
        report["backends"]["embedded"] = measure(env, args.sources, args.repeat, args.rounds)
    if args.backend in ("moto", "both"):
        from tests.moto_server import aws_test_environment, moto_server

        os.environ.update(aws_test_environment())
        with moto_server() as endpoint:
            env = moto_env(endpoint)
            print(f"building a lake of {args.moto_sources:,} sources on moto", flush=True)
            scratch = WORK / "redrive-moto-template"
            shutil.rmtree(scratch, ignore_errors=True)
            build_lake(env, args.moto_sources, scratch, ledger=False)
            report["backends"]["moto"] = measure(
                env, args.moto_sources, args.moto_repeat, args.moto_rounds, args.moto_rotate
            )
    print()
    for name, figures in report["backends"].items():
        e, b, r = figures["end_to_end"], figures["sending"], figures["reference"]
        print(
            f"{name}, {figures['sources']:,} sources: sending {b['messages_per_second']:,.0f}"
            f" msg/s in batches of ten vs {r['messages_per_second']:,.0f} msg/s one per request"
            f" = {figures['ratio_sending']}x; end to end (plan {e['plan_seconds']:.1f}s + send"
            f" {e['send_seconds']:.1f}s) {e['sources_per_second_end_to_end']:,.0f} sources/s"
            f" = {figures['ratio_end_to_end']}x"
            + ("" if figures["ok"] else "  MESSAGE COUNTS WRONG")
        )
    if args.write:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        # A run of one backend keeps the other backend's last figures.
        merged = {**previous.get("backends", {}), **report["backends"]}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({**report, "backends": merged}, indent=2) + "\n")
        print(f"results in {RESULTS}")
    return 0 if all(f["ok"] for f in report["backends"].values()) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backend", choices=("embedded", "moto", "both"), default="both")
    parser.add_argument("--sources", type=int, default=10_000, help="embedded sources")
    parser.add_argument("--moto-sources", type=int, default=1_000, help="sources on moto")
    parser.add_argument("--repeat", type=int, default=3, help="end-to-end runs (embedded)")
    parser.add_argument("--rounds", type=int, default=5, help="sending rounds (embedded)")
    parser.add_argument("--moto-repeat", type=int, default=1, help="end-to-end runs (moto)")
    parser.add_argument("--moto-rounds", type=int, default=3, help="sending rounds (moto)")
    parser.add_argument(
        "--moto-rotate", type=int, default=100, help="messages per moto queue (see RotatingQueue)"
    )
    parser.add_argument("--rebuild", action="store_true", help="build the embedded lake again")
    parser.add_argument(
        "--no-write", dest="write", action="store_false", help="do not write the results file"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
