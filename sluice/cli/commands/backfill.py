"""`sluice backfill`: plan historical work in chunks, run them in parallel, rerun the failed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, err_console, key_values, print_json

if TYPE_CHECKING:
    from sluice.ops.backfill import ChunkResult, PlanResult, RunResult, RunStatus

backfill_app = typer.Typer(
    help="Backfills in chunks: plan, run in parallel, follow, rerun the failed chunks.",
    no_args_is_help=True,
)
plan_app = typer.Typer(help="Plan a backfill run; prints its id.", no_args_is_help=True)
backfill_app.add_typer(plan_app, name="plan")
app.add_typer(backfill_app, name="backfill")

ChunkSize = Annotated[int | None, typer.Option("--chunk-size", help="Units per chunk.")]
Concurrency = Annotated[
    int, typer.Option("--max-concurrency", help="Chunks at once (lowered while throttled).")
]


def _show_plan(result: PlanResult, as_json: bool) -> None:
    if as_json:
        print_json(result.as_json())
        return
    rows: list[tuple[str, object]] = [
        ("kind", result.kind.value),
        ("chunks", f"{result.total_chunks:,}"),
        ("partitions" if result.kind.value == "partitions" else "type-days", f"{result.items:,}"),
    ]
    if result.keys_scanned:
        rows += [("keys scanned", f"{result.keys_scanned:,}"), ("stray keys", result.stray_keys)]
    rows.append(("files", result.location))
    console.print(key_values(f"backfill run {result.run_id}", rows))
    console.print(result.run_id)
    console.print(f"next: sluice backfill run {result.run_id}")


@plan_app.command("partitions")
def plan_partitions(
    ctx: typer.Context,
    table: Annotated[str, typer.Option("--table", help="Table whose partitions to register.")],
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="verified: a verified table's Parquet files; raw: a raw table in the catalog.",
        ),
    ] = "verified",
    prefix: Annotated[
        str, typer.Option("--prefix", help="Only keys under this prefix of the table.")
    ] = "",
    chunk_size: ChunkSize = None,
    json_output: JsonFlag = False,
) -> None:
    """Scan a table's objects and plan registering every partition that holds a file.

    Memory holds one chunk at a time, whatever the size of the table. Nothing is registered
    until `sluice backfill run RUN_ID`.
    """
    from sluice.ops.backfill.plan import DEFAULT_PARTITIONS_PER_CHUNK
    from sluice.ops.backfill.plan import plan_partitions as plan

    as_json = wants_json(ctx, json_output)
    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("keys scanned", total=None)
        result = plan(
            env,
            table,
            source=source,
            prefix=prefix,
            chunk_size=DEFAULT_PARTITIONS_PER_CHUNK if chunk_size is None else chunk_size,
            on_progress=lambda scanned, _: progress.update(task, completed=scanned),
        )
    _show_plan(result, as_json)


@plan_app.command("refine-15m")
def plan_refine(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--start", help="First day (YYYY-MM-DD, UTC).")],
    end: Annotated[str, typer.Option("--end", help="Last day, included.")],
    chunk_size: ChunkSize = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", help="Only this type (repeatable).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Plan building the 15-minute rollups of a range of days, `--chunk-size` days a chunk."""
    from sluice.ops.backfill.plan import DEFAULT_DAYS_PER_CHUNK
    from sluice.ops.backfill.plan import plan_refine as plan

    result = plan(
        options(ctx).open(),
        start,
        end,
        chunk_size=DEFAULT_DAYS_PER_CHUNK if chunk_size is None else chunk_size,
        types=type_,
    )
    _show_plan(result, wants_json(ctx, json_output))


def _execute(
    ctx: typer.Context,
    run_id: str,
    *,
    max_concurrency: int,
    force: bool,
    chunk_keys: list[str] | None,
    failed_only: bool,
    as_json: bool,
) -> None:
    from sluice.ops.backfill import run_backfill

    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("chunks", total=None)

        def update(done: int, total: int, outcome: ChunkResult) -> None:
            progress.update(task, completed=done, total=total)
            if outcome.error is not None and not as_json:
                message = str(outcome.error.get("message"))
                progress.console.print(f"[red]failed[/] {outcome.chunk}: {escape(message)}")

        result = run_backfill(
            env,
            run_id,
            max_concurrency=max_concurrency,
            force=force,
            chunk_keys=chunk_keys,
            failed_only=failed_only,
            on_progress=update,
        )
    _show_run(result, as_json)


def _show_run(result: RunResult, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "runId": result.run_id,
                "kind": result.kind.value,
                "selected": result.selected,
                "skipped": result.skipped,
                "succeeded": result.succeeded,
                "failed": result.failed,
                "tally": result.tally,
                "throttles": result.throttles,
                "lowestConcurrency": result.lowest_concurrency,
                "seconds": result.seconds,
                "status": None if result.status is None else result.status.as_json(),
            }
        )
    else:
        rows: list[tuple[str, object]] = [
            ("chunks run", len(result.selected)),
            ("already succeeded (skipped)", result.skipped),
            ("succeeded", len(result.succeeded)),
            ("failed", len(result.failed)),
            *((f"  {name}", f"{count:,}") for name, count in sorted(result.tally.items())),
            ("throttled calls (retried)", result.throttles),
            ("lowest concurrency", f"{result.lowest_concurrency} of {result.max_concurrency}"),
            ("seconds", result.seconds),
        ]
        console.print(key_values(f"backfill run {result.run_id}", rows))
        if not result.selected:
            console.print("nothing to do")
        if result.failed:
            err_console.print(
                f"[yellow]next:[/] sluice backfill rerun {result.run_id} --failed"
                "   (after fixing the cause; sluice backfill status shows the errors)"
            )
    if not result.ok:
        raise typer.Exit(1)


@backfill_app.command("run")
def run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The id `backfill plan` printed.")],
    max_concurrency: Concurrency = 4,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild rollups of days already built.")
    ] = False,
    chunk_keys: Annotated[
        list[str] | None,
        typer.Option("--chunk-keys", help="Only these chunks (e.g. chunk-00003), even if done."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Run a planned backfill's chunks in parallel; rerunning resumes it.

    Chunks that succeeded before are skipped (unless named with --chunk-keys), so a killed
    run picks up where it stopped. Each chunk's outcome is kept in the run's results/.
    """
    _execute(
        ctx,
        run_id,
        max_concurrency=max_concurrency,
        force=force,
        chunk_keys=chunk_keys,
        failed_only=False,
        as_json=wants_json(ctx, json_output),
    )


@backfill_app.command()
def rerun(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run whose failed chunks to run again.")],
    failed: Annotated[bool, typer.Option("--failed", help="Only the failed chunks.")] = False,
    max_concurrency: Concurrency = 4,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild rollups of days already built.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Run the failed chunks of a run again, without planning again."""
    from sluice.errors import ConfigError

    if not failed:
        raise ConfigError(
            "rerun needs --failed",
            hint=f"sluice backfill rerun {run_id} --failed   (or: sluice backfill run {run_id})",
        )
    _execute(
        ctx,
        run_id,
        max_concurrency=max_concurrency,
        force=force,
        chunk_keys=None,
        failed_only=True,
        as_json=wants_json(ctx, json_output),
    )


@backfill_app.command()
def status(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run to report on.")],
    json_output: JsonFlag = False,
) -> None:
    """Chunks by last outcome (succeeded, failed, pending), the failed ones, time spent."""
    from sluice.ops.backfill import run_status

    result: RunStatus = run_status(options(ctx).open(), run_id)
    if wants_json(ctx, json_output):
        print_json(result.as_json())
        return
    rows: list[tuple[str, object]] = [
        ("kind", result.kind.value),
        ("total chunks", result.total_chunks),
        ("succeeded", result.succeeded_chunks),
        ("failed", result.failed_chunks),
        ("pending", result.pending_chunks),
        ("time spent in chunks (s)", result.seconds_spent),
        ("first started", result.first_started_at or "-"),
        ("last finished", result.last_finished_at or "-"),
        ("files", result.location),
    ]
    console.print(key_values(f"backfill run {result.run_id}", rows))
    for key, message in result.errors.items():
        err_console.print(f"[red]failed[/] {key}: {escape(message)}")
    if result.failed_chunks:
        console.print(f"next: sluice backfill rerun {result.run_id} --failed")
    elif result.pending_chunks:
        console.print(f"next: sluice backfill run {result.run_id}")
    else:
        console.print("done")
