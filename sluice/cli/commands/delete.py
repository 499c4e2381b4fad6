"""`sluice delete`: bulk delete of verified files by table (and day), prefix or failed-keys file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.commands.ledger import DryRun, Yes, command_line
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, err_console, key_values, print_json
from sluice.errors import ConfigError
from sluice.layout import ALL_TYPES
from sluice.ops.delete import DEFAULT_WORKERS, DeleteProgress


@app.command()
def delete(
    ctx: typer.Context,
    type_: Annotated[
        list[str] | None,
        typer.Option(
            "--type", help=f"A verified table's type ({', '.join(ALL_TYPES)}); repeatable."
        ),
    ] = None,
    all_types: Annotated[bool, typer.Option("--all-types", help="Every verified table.")] = False,
    day: Annotated[
        str | None, typer.Option("--day", help="Only this day (YYYY-MM-DD) of the tables.")
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Every verified file under s3://<verified>/telemetry_flat/…"),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="The keys of a failed-keys file of an earlier delete."),
    ] = None,
    all_versions: Annotated[
        bool,
        typer.Option(
            "--all-versions",
            help="On a versioned bucket, delete every version and delete marker of the files "
            "(without it, S3 only adds delete markers and keeps the history).",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", help="Delete requests (1000 keys each) in flight.")
    ] = DEFAULT_WORKERS,
    allow_missing_sources: Annotated[
        bool,
        typer.Option(
            "--allow-missing-sources",
            help="Also delete files whose source raw object is gone (they cannot be rebuilt).",
        ),
    ] = False,
    failed_keys: Annotated[
        Path | None,
        typer.Option(
            "--failed-keys",
            help="Where keys not deleted are written (default: sluice-delete-failed-<time>.jsonl).",
        ),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete verified Parquet files in bulk: listing and deleting in parallel, 1000 keys a
    request, memory bounded whatever the count.

    A file is deleted only if the raw object it was built from still exists (its source, read
    from the file's footer), so that it can be rebuilt; others are refused unless
    --allow-missing-sources. On a versioned bucket a plain delete leaves every earlier version
    (billed, restorable) behind delete markers; --all-versions removes the history too. Throttled
    requests are retried with fewer workers. Every key (or version) not deleted goes to a
    failed-keys file (JSONL: bucket, key, version id, error) that --from-file takes to finish the
    job; the exit status is non-zero then. Interrupted? Run the same command again: what was
    deleted is no longer listed.
    """
    from sluice.ops.delete import delete as run
    from sluice.ops.delete import next_step

    as_json = wants_json(ctx, json_output)
    if all_types and type_:
        raise ConfigError("--type and --all-types exclude each other", hint="name one of them")
    types = list(ALL_TYPES) if all_types else list(type_ or [])
    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("listing", total=None)

        def on_progress(p: DeleteProgress) -> None:
            text = f"{p.listed:,} listed, {p.deleted:,} deleted, {p.workers} worker(s)"
            if p.refused or p.failed:
                text += f", {p.refused:,} refused, {p.failed:,} failed"
            progress.update(task, description=text)

        result = run(
            env,
            types=types,
            prefix=prefix,
            day=day,
            from_file=from_file,
            all_versions=all_versions,
            workers=workers,
            dry_run=dry_run,
            yes=yes,
            allow_missing_sources=allow_missing_sources,
            failed_keys_file=failed_keys,
            command=command_line(ctx),
            on_progress=on_progress,
        )
    hint = next_step(env, result)
    if as_json:
        print_json({**vars(result), "ok": result.ok, "next": hint})
    else:
        listed = f"{result.listed:,}"
        if result.versions or result.delete_markers:
            listed += f" ({result.versions:,} versions, {result.delete_markers:,} delete markers)"
        rows: list[tuple[str, object]] = [
            ("target", result.target),
            ("listed", listed),
            (
                "would delete" if result.dry_run else "deleted",
                f"{result.would_delete if result.dry_run else result.deleted:,}",
            ),
            ("refused (source gone)", f"{result.refused:,}"),
            ("failed", f"{result.failed:,}"),
            ("workers (lowest while throttled)", f"{result.workers} ({result.lowest_workers})"),
            ("batch retries", result.retries),
            ("seconds", f"{result.seconds:.1f}"),
        ]
        if not result.sources_checked:
            rows.append(("sources checked", "no (--allow-missing-sources)"))
        title = "sluice delete" + (" (dry run)" if result.dry_run else "")
        console.print(key_values(title, rows))
        if result.sample:
            console.print("first keys: " + ", ".join(escape(k) for k in result.sample))
        if result.missing_sources:
            console.print(
                f"[yellow]{result.missing_source_count:,} source raw object(s) are gone[/], e.g. "
                + ", ".join(escape(s) for s in result.missing_sources)
            )
        if result.history:
            console.print(f"[yellow]history kept:[/] {escape(result.history)}")
        if result.dry_run:
            console.print("dry run: nothing changed")
        if result.aborted:
            err_console.print(f"[bold red]stopped:[/] {escape(result.aborted)}")
        if result.failed_keys_file:
            err_console.print(f"keys not deleted: {escape(result.failed_keys_file)}")
        if hint:
            err_console.print(f"[yellow]next:[/] {escape(hint)}")
    if not result.ok and not result.dry_run:
        raise typer.Exit(1)
