"""`sluice compact`: deduplicated daily Iceberg tables and their 15-minute rollups."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, print_json
from sluice.compact.daily import CompactStatus
from sluice.compact.rollup import RollupStatus
from sluice.compact.run import CompactRun
from sluice.errors import ConfigError
from sluice.layout import check_day, check_type

SHOWN = 50  # units listed on screen; --json lists all


@app.command("compact")
def compact_command(
    ctx: typer.Context,
    date: Annotated[
        str | None, typer.Option("--date", help="The day to rebuild, YYYY-MM-DD (UTC).")
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="A type to compact (repeatable; default: every type)."),
    ] = None,
    changed: Annotated[
        bool,
        typer.Option(
            "--changed",
            help="Rebuild every day whose verified files changed since it was last compacted.",
        ),
    ] = False,
    rollups: Annotated[
        bool,
        typer.Option("--rollups/--no-rollups", help="Also rebuild the 15-minute rollups."),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the days to rebuild; change nothing.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Rebuild the deduplicated daily Iceberg tables and their 15-minute rollups.

    int_<type>_compacted_daily keeps one row per (event_id, ordinal) of a day:
    the newest parser version, then the latest received_at.
    telemetry_<type>_refined_15m counts and aggregates it per device, event kind and 15 minutes.
    A day is replaced in one commit: readers see the old day or the new one, never a mix.
    --date D rebuilds that day (of every type, or of each --type).
    --changed finds, from the file registry, every day whose verified files changed since it
    was last compacted (new files, late events, redrives), and rebuilds only those.
    Safe to repeat: a second --changed finds nothing to do.
    """
    from sluice.compact.run import compact

    as_json = wants_json(ctx, json_output)
    # Checked before the environment is opened: a typo creates nothing.
    if (date is None) == (not changed):
        raise ConfigError(
            "give exactly one of --date or --changed",
            hint="sluice compact --date YYYY-MM-DD, or sluice compact --changed",
        )
    if date is not None:
        date = check_day(date)
    for type_ in types or []:
        check_type(type_)
    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("planning", total=None)

        def on_progress(done: int, total: int, what: str) -> None:
            progress.update(task, description=f"compacted {what}", completed=done, total=total)

        run = compact(
            env,
            day=date,
            types=types,
            changed=changed,
            rollups=rollups,
            dry_run=dry_run,
            on_progress=on_progress,
        )
    if as_json:
        print_json(run)
        return
    _render(run)


def _render(run: CompactRun) -> None:
    if not run.planned:
        console.print(
            "nothing changed since the last compaction"
            if run.mode == "changed"
            else "nothing to compact"
        )
        return
    if run.dry_run:
        plan = Table(title="days to rebuild (dry run)", title_justify="left")
        for column in ("type", "day", "why", "raw objects"):
            plan.add_column(column)
        for unit in run.planned[:SHOWN]:
            plan.add_row(unit.type, unit.day, unit.reason.value, f"{unit.sources:,}")
        console.print(plan)
        _more(len(run.planned))
        console.print("next: the same command without --dry-run")
        return
    out = Table(title="compacted", title_justify="left")
    out.add_column("type")
    out.add_column("day", no_wrap=True)
    out.add_column("status")
    for column in ("rows in", "rows", "dupes", "15m rows"):
        out.add_column(column, justify="right")
    rollups = {(r.type, r.day): r for r in run.rollups}
    for result in run.compacted[:SHOWN]:
        rollup = rollups.get((result.type, result.day))
        built = rollup is not None and rollup.status is RollupStatus.BUILT
        out.add_row(
            escape(result.type),
            result.day,
            result.status.value,
            f"{result.input_rows:,}",
            f"{result.rows:,}",
            f"{result.duplicates_removed:,}",
            f"{rollup.rows:,}" if built and rollup else "-",
        )
    console.print(out)
    _more(len(run.compacted))
    empty = [r for r in run.compacted if r.status is CompactStatus.EMPTY]
    if empty:
        console.print(
            f"{len(empty)} day(s) hold no verified rows in registered partitions "
            "(next: sluice catalog repair, if files are there)"
        )


def _more(count: int) -> None:
    if count > SHOWN:
        console.print(f"… and {count - SHOWN} more (--json lists all)")
