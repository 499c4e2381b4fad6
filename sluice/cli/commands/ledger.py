"""`sluice ledger`: what the ledger holds, and putting stuck, failed and old records right."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, counts_table, err_console, key_values, print_json
from sluice.ops.ledger import CLEANUP_RULE, STATUSES, LedgerOpResult, OnProgress
from sluice.ops.queues import format_duration

ledger_app = typer.Typer(
    help="The ledger of raw objects: counts, listings, stuck claims, failures, old records.",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")

ERROR_CHARS = 80  # of a last error, in the table (`--json` has all of it)

DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", help="Go ahead in a protected environment.")]


def command_line(ctx: typer.Context) -> str:
    """The command as the operator ran it, without --dry-run, --yes and --json: the guard's
    hint appends the flag to use. Options left at their default are left out."""
    opts = options(ctx)
    parts = ["sluice"]
    if opts.env_name != "local":
        parts += ["--env", opts.env_name]
    if opts.config_file is not None:
        parts += ["--config", str(opts.config_file)]
    if opts.data_dir is not None:
        parts += ["--data-dir", str(opts.data_dir)]
    parts += ctx.command_path.split()[1:]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in ("dry_run", "yes", "json_output") or value in (None, param.default):
            continue
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


@contextmanager
def _progress(disabled: bool, what: str) -> Iterator[OnProgress]:
    with progress_bar(disabled) as progress:
        task = progress.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


@ledger_app.command()
def stats(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Records by status (stuck ones counted apart) and by day of their last update (UTC).

    Reads the whole ledger once.
    """
    from sluice.ops.ledger import ledger_stats

    as_json = wants_json(ctx, json_output)
    env = options(ctx).open()
    with _progress(as_json, "records read") as on_progress:
        result = ledger_stats(env, on_progress=lambda n: on_progress(n, 0))
    if as_json:
        print_json(result)
        return
    console.print(counts_table("records by status", ("status", "records"), result.by_status))
    if result.stuck:
        console.print(
            f"[yellow]{result.stuck:,} processing record(s) are stuck (lease expired)[/]:"
            " sluice ledger reset-stuck --dry-run"
        )
    days = Table(title="records by day of last update (UTC)", title_justify="left")
    days.add_column("day")
    statuses = list(result.by_status)
    for name in [*statuses, "total"]:
        days.add_column(name, justify="right")
    for day, counts in result.by_day.items():
        cells = [f"{counts.get(s, 0):,}" for s in statuses]
        days.add_row(day, *cells, f"{sum(counts.values()):,}")
    console.print(days)
    console.print(f"{result.total:,} record(s)")


@ledger_app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option("--status", help=f"One of: {', '.join(STATUSES)}.")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only records last updated longer ago (15m, 2d)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many records.")] = 100,
    json_output: JsonFlag = False,
) -> None:
    """Records by status and age, oldest update first: object, status, attempts, last error.

    `--status stuck` lists processing records whose lease has run out.
    `--json` prints the full records (outputs, counts, lease, owner).
    """
    from sluice.ops.ledger import list_records, parse_status
    from sluice.ops.queues import parse_duration

    wanted = None if status is None else parse_status(status)
    age = None if older_than is None else parse_duration(older_than, what="--older-than")
    listing = list_records(options(ctx).open(), status=wanted, older_than=age, limit=limit)
    if wants_json(ctx, json_output):
        print_json(listing)
        return
    table = Table(title=f"ledger records ({wanted or 'any status'})", title_justify="left")
    for column in ("object", "status", "attempts", "last error", "age"):
        right = column in ("attempts", "age")
        table.add_column(column, overflow="fold", justify="right" if right else "left")
    for r in listing.records:
        error = (r.last_error or "")[:ERROR_CHARS]
        if r.error_class:
            error = f"{r.error_class}: {error}"
        table.add_row(
            escape(r.uri),
            r.status.value + (" (stuck)" if r.is_stuck(listing.now) else ""),
            str(r.attempts),
            escape(error),
            format_duration((listing.now - r.updated_at).total_seconds()),
        )
    console.print(table)
    if listing.more:
        console.print(f"more records match: raise --limit (now {limit}) or filter further")
    elif not listing.records:
        console.print("no records match")


def _show(result: LedgerOpResult, as_json: bool, next_step: str) -> None:
    if as_json:
        print_json(result)
    else:
        rows: list[tuple[str, object]] = [
            ("older than", format_duration(result.older_than_seconds)),
            ("planned", f"{result.planned:,}"),
        ]
        if result.planned and not result.dry_run:
            rows += [("done", f"{result.done:,}"), ("skipped (changed meanwhile)", result.skipped)]
            if result.queue is not None:
                rows.append((f"messages sent to {result.queue}", f"{result.messages_sent:,}"))
            rows.append(("failed", len(result.failed)))
        title = f"ledger {result.operation}" + (" (dry run)" if result.dry_run else "")
        console.print(key_values(title, rows))
        if result.redrive_id is not None:
            console.print(f"redrive id: {escape(result.redrive_id)}")
        if result.dry_run and result.planned:
            console.print(escape(result.plan))
            console.print("dry run: nothing changed")
        elif not result.planned:
            console.print("nothing to do")
        elif result.ok and next_step:
            console.print(f"next: {next_step}")
        for uri, reason in result.failed.items():
            err_console.print(f"[red]failed[/] {escape(uri)}: {escape(reason)}")
    if result.failed:
        if not as_json:
            err_console.print(
                "[yellow]next:[/] sluice redrive --s3-uri URI   (for each failed object)"
            )
        raise typer.Exit(1)


def _requeue(
    ctx: typer.Context,
    run: Any,
    older_than: str,
    dry_run: bool,
    yes: bool,
    json_output: bool,
    unit: str,
) -> None:
    """The shared body of the commands that send ledger records back through the queue."""
    from sluice.ops.queues import parse_duration

    as_json = wants_json(ctx, json_output)
    age = parse_duration(older_than, what="--older-than")
    env = options(ctx).open()
    with _progress(as_json, unit) as on_progress:
        result = run(
            env,
            older_than=age,
            dry_run=dry_run,
            yes=yes,
            command=command_line(ctx),
            on_progress=on_progress,
        )
    _show(result, as_json, "sluice worker --until-idle   (or: sluice queue wait)")


@ledger_app.command("reset-stuck")
def reset_stuck(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Lease expired at least this long ago.")
    ] = "15m",
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Release claims whose lease expired --older-than ago and enqueue their objects again.

    A processing record whose lease ran out belongs to a worker that died (a live one extends
    its lease every third of it). Each is reset to pending and sent a process_raw_file
    message; records that came back to life meanwhile are skipped. Safe to repeat.
    """
    from sluice.ops.ledger import reset_stuck as run

    _requeue(ctx, run, older_than, dry_run, yes, json_output, "records reset")


@ledger_app.command("retry-failed")
def retry_failed(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Failed at least this long ago.")
    ] = "1h",
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Enqueue failed objects again as redrive_raw_file messages (one fresh redrive id).

    Fix the cause first (a parser release, a rewritten object): an object that fails the same
    way goes to the DLQ again. --older-than keeps clear of failures the queue is still
    retrying by itself. Messages go in batches of 10.
    """
    from sluice.ops.ledger import retry_failed as run

    _requeue(ctx, run, older_than, dry_run, yes, json_output, "messages sent")


@ledger_app.command(
    help="Forget completed records last updated more than --older-than ago.\n\n"
    "Only completed records are deleted, with their failure history; receipts stay.\n\n"
    + CLEANUP_RULE
    + " Shorter ages are refused.",
)
def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Last updated at least this long ago (e.g. 30d)."),
    ],
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    from sluice.ops.ledger import cleanup as run
    from sluice.ops.queues import parse_duration

    as_json = wants_json(ctx, json_output)
    age = parse_duration(older_than, what="--older-than")
    env = options(ctx).open()
    with _progress(as_json, "records forgotten") as on_progress:
        result = run(
            env,
            older_than=age,
            dry_run=dry_run,
            yes=yes,
            command=command_line(ctx),
            on_progress=on_progress,
        )
    _show(result, as_json, "")
