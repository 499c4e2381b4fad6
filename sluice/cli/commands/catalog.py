"""`sluice catalog`: keep the catalog's partitions and the file registry in step with the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.catalog.repair import OnProgress
from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, err_console, key_values, print_json

catalog_app = typer.Typer(
    help="The catalog: partitions of the verified tables, and drift between registry and store.",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")

# A plan longer than this is summarised on screen (`--json` prints all of it).
SHOWN = 50


@contextmanager
def _progress(disabled: bool) -> Iterator[OnProgress]:
    with progress_bar(disabled) as progress:
        task = progress.add_task("starting", total=None)

        def update(what: str, count: int) -> None:
            progress.update(task, description=what, completed=count)

        yield update


def _lines(title: str, items: list[str], style: str) -> None:
    if not items:
        return
    console.print(f"[bold]{escape(title)}[/] ({len(items)})")
    for item in items[:SHOWN]:
        # Never folded: operators copy these URIs into the next command.
        console.print(f"  [{style}]{escape(item)}[/]", soft_wrap=True)
    if len(items) > SHOWN:
        console.print(f"  … and {len(items) - SHOWN} more (--json lists all)")


@catalog_app.command()
def repair(
    ctx: typer.Context,
    table: Annotated[
        str | None, typer.Option("--table", help="One verified table (default: all).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="Allow dropping partitions in a protected environment.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Register every partition that holds Parquet files and drop every one that holds none.

    Lists each table's location once; never runs MSCK REPAIR TABLE (which only adds).
    Prints the plan, then applies it in batches; --dry-run only prints it.
    Keys that are not verified files are reported, never registered.
    A protected environment drops partitions only with --yes (adding is always safe).
    Safe to repeat: a second run finds nothing to do.
    """
    from sluice.catalog.repair import repair as run

    as_json = wants_json(ctx, json_output)
    env = options(ctx).open()
    with _progress(as_json) as on_progress:
        result = run(env, table=table, dry_run=dry_run, yes=yes, on_progress=on_progress)
    if as_json:
        print_json(result)
    else:
        summary = Table(title="catalog repair" + (" (dry run)" if dry_run else ""))
        summary.add_column("table", no_wrap=True)
        for column in ("files", "registered", "add", "drop", "stray"):
            summary.add_column(column, justify="right")
        for t in result.tables:
            summary.add_row(
                t.table,
                f"{t.parquet_files:,}",
                f"{t.registered:,}",
                f"{len(t.to_add):,}",
                f"{len(t.to_drop):,}",
                f"{t.stray_count:,}",
            )
        console.print(summary)
        verb = "would " if dry_run else ""
        for t in result.tables:
            _lines(f"{t.table}: {verb}add", t.to_add, "green")
            _lines(f"{t.table}: {verb}drop", t.to_drop, "red")
            _lines(f"{t.table}: kept (a file appeared since the listing)", t.kept, "yellow")
            _lines(
                f"{t.table}: stray keys, not registered ({t.stray_count} in all)",
                t.stray_keys,
                "yellow",
            )
        if not result.planned:
            console.print("nothing to do: the catalog matches the store")
        elif dry_run:
            console.print("dry run: nothing changed; run again without --dry-run to apply")
    if result.drops_refused:
        err_console.print(
            f"[bold red]error:[/] environment {escape(env.config.name)} is protected: "
            "partitions were added but none dropped"
        )
        err_console.print(
            f"[yellow]next:[/] sluice --env {escape(env.config.name)} catalog repair --yes"
        )
        raise typer.Exit(1)


@catalog_app.command()
def reconcile(
    ctx: typer.Context,
    lookback_hours: Annotated[
        int, typer.Option("--lookback-hours", help="Hours of raw arrivals to look at.")
    ] = 3,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what is found; change nothing.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Compare raw arrivals, the file registry, the store and the catalog; repair the drift.

    For the raw objects that arrived in the window:
    enqueues those never processed; redrives those whose outputs were deleted;
    registers the partitions of their outputs that the catalog lacks;
    reports orphan verified files that no record lists (never deletes them).
    The scheduled reconciler runs the same code every 15 minutes. Safe to repeat.
    """
    from sluice.catalog.reconcile import reconcile as run

    as_json = wants_json(ctx, json_output)
    env = options(ctx).open()
    with _progress(as_json) as on_progress:
        result = run(env, lookback_hours=lookback_hours, dry_run=dry_run, on_progress=on_progress)
    if as_json:
        print_json(result)
        return
    verb = "would be " if dry_run else ""
    console.print(
        key_values(
            f"catalog reconcile, last {lookback_hours} h" + (" (dry run)" if dry_run else ""),
            [
                ("raw objects seen", f"{result.raw_objects_seen:,}"),
                (f"{verb}enqueued (not processed)", len(result.enqueued)),
                ("failed terminally (in the DLQ)", len(result.failed_terminal)),
                ("outputs checked", f"{result.outputs_checked:,}"),
                ("files listed", f"{result.files_listed:,}"),
                ("outputs missing from the store", len(result.missing_outputs)),
                (f"sources {verb}redriven", len(result.redriven)),
                ("orphan files", len(result.orphan_files)),
                (f"partitions {verb}added", sum(result.partitions_added.values())),
            ],
        )
    )
    _lines(f"{verb}enqueued", result.enqueued, "green")
    _lines("missing outputs", result.missing_outputs, "red")
    _lines(f"{verb}redriven", result.redriven, "green")
    _lines("orphan files (no record lists them; not deleted)", result.orphan_files, "yellow")
    _lines("failed terminally", result.failed_terminal, "yellow")
    if result.failed_terminal:
        console.print("next: sluice dlq list   (why they failed: sluice dlq inspect)")
    if result.orphan_files:
        console.print(
            "next: sluice redrive --parquet-uri URI --wait   (rebuilds the source and removes "
            "orphans)"
        )
