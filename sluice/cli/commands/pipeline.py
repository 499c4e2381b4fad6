"""Commands that move data: generate, ingest, worker, query, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import (
    arrow_table,
    console,
    counts_table,
    err_console,
    key_values,
    print_json,
)
from sluice.errors import ConfigError


def _spinner(disabled: bool) -> Progress:
    return progress_bar(disabled)


@app.command()
def generate(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="NDJSON file to write.")] = Path(
        "telemetry.ndjson"
    ),
    events: Annotated[int, typer.Option(help="Good events to generate.")] = 10_000,
    days: Annotated[int, typer.Option(help="Days of event time, ending an hour ago.")] = 3,
    bad_fraction: Annotated[
        float, typer.Option(help="Fraction of bad lines of every kind.")
    ] = 0.02,
    resend_fraction: Annotated[float, typer.Option(help="Fraction of device resends.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same events).")] = 7,
    huge_lines: Annotated[bool, typer.Option(help="Include lines of several MB.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Write synthetic telemetry (all types, fan-out, resends, bad lines) as NDJSON."""
    from sluice.generate import generate as run

    result = run(
        output,
        events=events,
        days=days,
        bad_fraction=bad_fraction,
        resend_fraction=resend_fraction,
        seed=seed,
        huge_lines=huge_lines,
    )
    if wants_json(ctx, json_output):
        print_json(result)
        return
    console.print(f"wrote {result.lines:,} lines to {output}")
    console.print(counts_table("expected verified rows", ("table", "rows"), result.rows))
    console.print(counts_table("bad lines", ("kind", "lines"), result.bad_lines))


@app.command()
def ingest(
    ctx: typer.Context,
    files: Annotated[list[str], typer.Argument(help="NDJSON files; - reads standard input.")],
    stream: Annotated[str, typer.Option(help="Stream name in the raw object keys.")] = "ingest",
    max_object_mb: Annotated[
        float | None, typer.Option(help="Close a raw object at this many MB (uncompressed).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Send NDJSON events through the ingest path (raw objects + queue messages), without HTTP."""
    from sluice.ingest.buffer import check_inputs, ingest_files

    as_json = wants_json(ctx, json_output)
    if max_object_mb is not None and max_object_mb <= 0:
        raise ConfigError("--max-object-mb must be positive")
    check_inputs(files)  # before the environment is opened: a typo creates nothing
    env = options(ctx).open()
    max_bytes = int(max_object_mb * 1024 * 1024) if max_object_mb else None
    with _spinner(as_json) as progress:
        task = progress.add_task("raw objects written", total=None)
        result = ingest_files(
            env,
            files,
            stream=stream,
            max_object_bytes=max_bytes,
            on_object=lambda _: progress.advance(task),
        )
    if as_json:
        print_json(result)
        return
    console.print(
        f"ingested {result.lines:,} lines ({result.bytes:,} bytes) from {result.inputs} input(s) "
        f"into {len(result.objects)} raw object(s); {result.messages_sent} message(s) queued"
    )
    console.print("next: sluice worker --until-idle")


@app.command()
def worker(
    ctx: typer.Context,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Return once nothing is visible or in flight.")
    ] = False,
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    json_output: JsonFlag = False,
) -> None:
    """Process the processing queue (SIGTERM/SIGINT finish the object in hand, then exit)."""
    from sluice.process.worker import WorkerEvent, run_workers

    as_json = wants_json(ctx, json_output)
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, not {processes}")
    config = options(ctx).config()
    with _spinner(as_json) as progress:
        task = progress.add_task("objects processed", total=None)

        def on_event(event: WorkerEvent) -> None:
            if event.kind in ("completed", "skipped"):
                progress.advance(task)
            elif event.kind in ("retried", "dead_lettered") and not as_json:
                detail = escape(f"{event.source}: {event.detail}")
                err_console.print(f"[yellow]{event.kind}[/] {detail}")

        stats = run_workers(config, processes, until_idle=until_idle, on_event=on_event)
    if as_json:
        print_json(stats)
        return
    console.print(
        key_values(
            "worker",
            [
                ("messages", stats.messages),
                ("objects completed", stats.completed),
                ("skipped (already done)", stats.skipped),
                ("rows written", f"{stats.rows:,}"),
                ("lines quarantined", stats.quarantined_lines),
                ("files written", stats.files_written),
                ("retried", stats.retried),
                ("sent to DLQ", stats.dead_lettered),
            ],
        )
    )
    if stats.dead_lettered:
        console.print(
            "next: sluice ledger list --status failed   (reasons of what went to the DLQ)"
        )


@app.command()
def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One SQL statement.")],
    json_output: JsonFlag = False,
) -> None:
    """Run SQL over the verified tables (telemetry_<type>_flat) on the environment's engine."""
    from sluice.query import run_query

    table = run_query(options(ctx).open(), sql)
    if wants_json(ctx, json_output):
        print_json(table)
        return
    console.print(arrow_table(table))


@app.command()
def demo(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="Good events to generate.")] = 20_000,
    bad_fraction: Annotated[float, typer.Option(help="Fraction of bad lines.")] = 0.02,
    json_output: JsonFlag = False,
) -> None:
    """Generate telemetry, ingest it, process it, compact and verify it, query it, and print
    what happened."""
    from sluice.demo import run_demo

    as_json = wants_json(ctx, json_output)
    env = options(ctx).open()
    result = run_demo(
        env,
        events=events,
        bad_fraction=bad_fraction,
        on_step=None if as_json else (lambda s: err_console.print(f"[cyan]>[/] {escape(s)}")),
    )
    if as_json:
        print_json(result)
        return
    gen, stats = result.generated, result.worker
    console.print(
        key_values(
            "sluice demo",
            [
                ("data dir", result.data_dir),
                (
                    "lines generated",
                    f"{gen.lines:,} ({gen.good_lines:,} good, {gen.blank_lines} blank, "
                    f"{sum(gen.bad_lines.values())} bad)",
                ),
                ("raw objects", len(result.ingested.objects)),
                ("verified rows written", f"{stats.rows:,} (expected {sum(gen.rows.values()):,})"),
                (
                    "lines quarantined",
                    f"{stats.quarantined_lines} (expected {sum(gen.bad_lines.values())})",
                ),
                ("files written", stats.files_written),
                ("compacted rows (deduplicated)", f"{sum(result.compacted.values()):,}"),
                (
                    "days verified",
                    ", ".join(f"{d} {v}" for d, v in result.verified_days.items()) or "none",
                ),
                ("matches the generator", "yes" if result.matches_generator else "NO"),
            ],
        )
    )
    console.print(
        counts_table("rows per table (whole lake)", ("table", "rows"), result.rows_by_table)
    )
    console.print(
        counts_table("quarantined lines by reason", ("reason", "lines"), result.quarantine_reasons)
    )
    if result.sample is not None:
        console.print(f"[dim]{result.sample_sql}[/]")
        console.print(arrow_table(result.sample))
    console.print(
        f"try: sluice --data-dir {result.data_dir} query "
        '"SELECT count(*) FROM telemetry_bridge_flat"'
    )
    if not result.matches_generator:
        raise typer.Exit(1)


@app.command()
def setup(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Create what the environment needs and lacks: queues, tables (and, on AWS, buckets and
    the ledger table, where the SAM template did not deploy them). Safe to repeat."""
    from sluice.env import open_env

    config = options(ctx).config()
    env = open_env(config, setup=True)
    summary = {
        "environment": config.name,
        "backend": config.backend,
        "buckets": vars(config.buckets),
        "queues": [env.processing_queue.name, env.processing_dlq.name],
        "tables": [t.name for t in env.catalog.list_tables()],
    }
    if wants_json(ctx, json_output):
        print_json(summary)
        return
    console.print(key_values(f"environment {config.name} is set up", list(summary.items())))
