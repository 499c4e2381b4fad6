"""`sluice redrive`: reprocess raw objects in bulk, without gaps or duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    TaskID,
)

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, key_values, print_json
from sluice.ops.queues import parse_duration
from sluice.ops.redrive.model import (
    DEFAULT_MONITOR_LIMIT,
    FollowSettings,
    OnEvent,
    Pacing,
    RedriveEvent,
    RedriveRequest,
    RedriveResult,
    Target,
)

SHOWN = 50  # items of a list shown on screen (`--json` prints every one)


@contextmanager
def _progress(disabled: bool, dry_run: bool) -> Iterator[OnEvent]:
    with progress_bar(disabled) as progress:
        tasks: dict[str, TaskID] = {}

        def task(name: str, total: int | None) -> TaskID:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            return tasks[name]

        def say(text: str) -> None:
            if not disabled:  # --json: stdout holds the result, stderr stays quiet
                progress.console.print(text)

        def on_event(event: RedriveEvent) -> None:
            kind = event.kind
            if kind == "planning":
                progress.update(
                    task("planning", None), description=f"planning {escape(event.detail)}"
                )
            elif kind == "planned":
                if "planning" in tasks:
                    progress.remove_task(tasks.pop("planning"))
                if not dry_run:  # a dry run shows the whole plan at the end
                    say(escape(event.detail))
            elif kind in ("sent", "paused", "resumed"):
                sending = task("sending", event.total)
                label = "sending"
                if kind == "paused":
                    label = f"paused: queue holds {escape(event.detail)}"
                progress.update(sending, completed=event.done, description=label)
                if kind == "resumed":
                    say(f"[cyan]resumed[/] {escape(event.detail)}")
            elif kind == "deleted":
                progress.update(task("deleting first", event.total), completed=event.done)
            elif kind == "progress":
                progress.update(task("reprocessed", event.total), completed=event.done)
            elif kind in ("failed", "retrying"):
                style = "red" if kind == "failed" else "yellow"
                text = escape(f"{event.source}: {event.detail}")
                say(f"[{style}]{kind}[/] {text}")
            elif kind in ("orphans", "repair", "verify"):
                say(f"[cyan]>[/] {kind} {escape(event.detail)}")

        yield on_event


def _command(env_name: str, request: RedriveRequest) -> str:
    """The command line the guard's hint repeats (with --yes or --dry-run added)."""
    base = f"sluice --env {env_name} redrive"
    if request.resume is not None:
        return f"{base} --resume {request.resume}" + (" --wait" if request.wait else "")
    assert request.target is not None
    flags = [request.target.describe()]
    flags += ["--delete-parquet"] if request.delete_parquet else []
    flags += ["--skip-missing-sources"] if request.skip_missing_sources else []
    flags += [f"--limit {request.limit}"] if request.limit is not None else []
    flags += ["--wait"] if request.wait else []
    return f"{base} {' '.join(flags)}"


def _lines(title: str, items: list[str], total: int, style: str) -> None:
    if not total:
        return
    console.print(f"[bold]{escape(title)}[/] ({total:,})")
    for item in items[:SHOWN]:
        console.print(f"  [{style}]{escape(item)}[/]", soft_wrap=True)
    if total > min(len(items), SHOWN):
        where = "--json lists all" if len(items) >= total else "the run's files list all"
        console.print(f"  … and {total - min(len(items), SHOWN):,} more ({where})")


def _render(result: RedriveResult) -> None:
    verb = "would " if result.dry_run else ""
    send, delete = ("to send", "to delete first") if result.dry_run else ("sent", "deleted first")
    title = "redrive (dry run)" if result.dry_run else f"redrive run {result.run_id}"
    rows: list[tuple[str, object]] = [("target", result.target.describe())]
    if result.location:
        rows.append(("run files", result.location))
    rows += [
        (f"sources {send}", f"{result.sources:,}"),
        ("files rewritten in place", f"{result.replaced_in_place:,}"),
        (f"files {delete}", f"{result.to_delete:,}"),
        ("orphans (removed once reprocessed)", f"{result.orphans:,}"),
        ("files kept as they are", f"{result.kept_count:,}"),
        ("sources excluded: raw missing", f"{result.missing_count:,}"),
        ("sources excluded: --limit", f"{result.excluded_by_limit:,}"),
    ]
    s = result.sending
    if not result.dry_run:
        before = f" ({s.already_sent:,} sent before the resume)" if result.resumed else ""
        rows.append(("messages sent", f"{s.sent:,}{before}"))
        rows.append(("send rate", f"{s.messages_per_second:,.0f} messages/s"))
        if s.pauses:
            rows.append(("paused for backpressure", f"{s.pauses}x, {s.paused_seconds:.1f}s"))
    console.print(key_values(title, rows))
    _lines(f"{verb}delete first", result.delete, result.to_delete, "red")
    _lines(f"{verb}send", result.send, result.sources, "green")
    orphans = [
        f"{o.uri}  (rows of {', '.join(o.sources) or 'no source'})" for o in result.orphan_list
    ]
    _lines("orphans", orphans, result.orphans, "yellow")
    _lines("kept", [f"{k.uri}: {k.reason}" for k in result.kept], result.kept_count, "dim")
    _lines("excluded, raw object missing", result.missing, result.missing_count, "yellow")
    if result.follow is not None:
        f = result.follow
        console.print(
            f"reprocessed {f.done:,} of {f.total:,} source(s) in {f.seconds:.1f}s;"
            f" {f.failed_count:,} failed, {f.pending:,} pending"
            + (" (timed out)" if f.timed_out else "")
        )
        _lines("failed", f.failed, f.failed_count, "red")
    if result.finish is not None:
        fin = result.finish
        console.print(
            f"orphans removed: {fin.orphans_removed:,}; partitions added"
            f" {fin.partitions_added}, dropped {fin.partitions_dropped}"
        )
        _lines(
            "orphans kept",
            [f"{k.uri}: {k.reason}" for k in fin.orphans_kept],
            len(fin.orphans_kept),
            "yellow",
        )
        for v in fin.verify:
            style = "red" if v["verdict"] == "FAIL" else "green"
            console.print(
                f"verify {v['day']} ({', '.join(v['types'])}): [{style}]{v['verdict']}[/]"
            )
            for failure in v["failures"][:SHOWN]:
                console.print(f"  [red]{escape(failure)}[/]")
    if result.dry_run:
        console.print("dry run: nothing changed; run again without --dry-run to go ahead")
    elif result.follow is None and result.run_id:
        console.print(
            f"next: sluice redrive --resume {result.run_id} --wait   (follow it, remove the"
            " orphans, repair, verify)"
        )
    elif result.follow is not None and result.follow.timed_out:
        console.print(f"next: sluice redrive --resume {result.run_id} --wait")


@app.command()
def redrive(
    ctx: typer.Context,
    s3_uri: Annotated[str | None, typer.Option("--s3-uri", help="One raw object.")] = None,
    s3_prefix: Annotated[
        str | None, typer.Option("--s3-prefix", help="Every raw object under a prefix.")
    ] = None,
    parquet_uri: Annotated[
        str | None,
        typer.Option("--parquet-uri", help="A verified file: the sources of its rows."),
    ] = None,
    source_ref_day: Annotated[
        str | None,
        typer.Option("--source-ref-day", help="Every source of a table's day (YYYY-MM-DD)."),
    ] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="The table of --source-ref-day.")
    ] = None,
    delete_parquet: Annotated[
        bool,
        typer.Option(
            "--delete-parquet/--no-delete-parquet",
            help="Delete the targeted files first (queries see a gap). Default: replace in place.",
        ),
    ] = False,
    skip_missing_sources: Annotated[
        bool,
        typer.Option(
            "--skip-missing-sources",
            help="Leave out sources whose raw object is gone (their files are kept).",
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N sources.")] = None,
    monitor: Annotated[
        bool, typer.Option("--monitor", help="Pause while the processing queue is full.")
    ] = False,
    max_queue_visible: Annotated[
        int | None,
        typer.Option(
            "--max-queue-visible",
            help=f"Visible messages at which --monitor pauses (default {DEFAULT_MONITOR_LIMIT}).",
        ),
    ] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="At most R messages/s.")] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow to the end; remove orphans, repair, verify."),
    ] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait waits.")] = "2h",
    poll: Annotated[
        str, typer.Option("--poll", help="How often --wait and --monitor look.")
    ] = "5s",
    settle: Annotated[
        str,
        typer.Option("--settle", help="Queue empty this long: sources not done have failed."),
    ] = "60s",
    resume: Annotated[
        str | None, typer.Option("--resume", help="Finish an interrupted run.")
    ] = None,
    finish: Annotated[
        bool,
        typer.Option("--finish", help="With --resume: remove orphans, repair, verify now."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be deleted and sent; no change.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Go ahead in a protected environment.")] = (
        False
    ),
    json_output: JsonFlag = False,
) -> None:
    """Reprocess raw objects: one (--s3-uri), a prefix, a verified file's sources, or a day.

    Sends one redrive_raw_file message per source, in batches of ten.
    By default the worker replaces each source's files in place: no gap, no duplicates.
    Files of the targeted partitions that belong to no source of the run are orphans
    (copies, files of other tools): removed once their sources are reprocessed.
    --delete-parquet deletes the targeted files first instead (queries see a gap).
    Every source's raw object must exist before anything is deleted or sent
    (--skip-missing-sources leaves the missing ones and their files out).
    A run keeps its progress under redrive/runs/RUN_ID/ in the lake bucket:
    --resume RUN_ID finishes an interrupted run without sending twice what was sent.
    --wait follows the run to its end, removes the orphans, repairs the catalog and
    verifies the days touched (later: --resume RUN_ID --finish); workers must be running.
    Exits 1 if a source failed or verification fails. A protected environment needs --yes.
    """
    from sluice.ops.redrive import redrive as run

    as_json = wants_json(ctx, json_output)
    target = None
    modes = (s3_uri, s3_prefix, parquet_uri, source_ref_day, type_)
    if resume is None or any(v is not None for v in modes):
        target = Target.of(
            s3_uri=s3_uri,
            s3_prefix=s3_prefix,
            parquet_uri=parquet_uri,
            source_ref_day=source_ref_day,
            type_=type_,
        )
    every = parse_duration(poll, what="--poll").total_seconds()
    if max_queue_visible is None and monitor:
        max_queue_visible = DEFAULT_MONITOR_LIMIT
    request = RedriveRequest(
        target=target,
        resume=resume,
        delete_parquet=delete_parquet,
        skip_missing_sources=skip_missing_sources,
        limit=limit,
        dry_run=dry_run,
        yes=yes,
        wait=wait,
        finish=finish,
        pacing=Pacing(rate=rate, max_queue_visible=max_queue_visible, poll_seconds=every),
        follow=FollowSettings(
            timeout_seconds=parse_duration(timeout, what="--timeout").total_seconds(),
            poll_seconds=every,
            settle_seconds=parse_duration(settle, what="--settle").total_seconds(),
        ),
    )
    opts = options(ctx)
    request = replace(request, command=_command(opts.env_name, request))
    env = opts.open()
    with _progress(as_json, dry_run) as on_event:
        result = run(env, request, on_event)
    if as_json:
        print_json(result)
    else:
        _render(result)
    if result.failed:
        raise typer.Exit(1)
