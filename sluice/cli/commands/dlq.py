"""`sluice dlq`: read, explain, redrive, back up and restore a dead-letter queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.commands.ledger import DryRun, Yes, command_line
from sluice.cli.render import console, err_console, key_values, print_json
from sluice.env import Env
from sluice.ops.dlq import DlqPair, Refused, ScanCost
from sluice.ops.dlq.model import DEFAULT_LIST, DEFAULT_REDRIVE_BATCH
from sluice.ops.queues import format_duration

dlq_app = typer.Typer(
    help="Dead-letter queues: list, inspect and explain without consuming; redrive valid"
    " messages; purge with a verified backup; restore a backup.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

REASON_CHARS = 70  # of a failure reason, in tables (`--json` has all of it)

DlqUrl = Annotated[
    str | None,
    typer.Option("--dlq-url", help="A DLQ by name or URL (default: the environment's DLQ)."),
]
TargetUrl = Annotated[
    str | None,
    typer.Option("--target-url", help="Where redriven messages go (default: the DLQ's source)."),
]
SchemaFile = Annotated[
    Path | None,
    typer.Option(
        "--schema",
        help="JSON Schema for messages that are not sluice's (subset: type, required,"
        " properties, items, enum, const, lengths, bounds, pattern).",
    ),
]


def _open(
    ctx: typer.Context, dlq: str | None, target: str | None = None, schema: Path | None = None
) -> tuple[Env, DlqPair]:
    from sluice.ops.dlq import open_pair

    env = options(ctx).open()
    return env, open_pair(env, dlq, target, schema)


def _cost(cost: ScanCost) -> None:
    err_console.print(
        f"reading cost {cost.messages_received} receive(s) in {cost.receive_requests}"
        " request(s); every message read is visible again"
    )
    for failure in cost.release_failures:
        err_console.print(f"[yellow]not released (visible after its timeout):[/] {failure}")


def _short(reason: str, sources: tuple[str, ...]) -> str:
    """A reason for a table: without the source's URI (a column of its own), cut short."""
    for uri in sources:
        reason = reason.replace(f"{uri}: ", "").replace(uri, "the object")
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def _refused(refused: list[Refused]) -> None:
    for r in refused:
        why = escape(f"({r.category}): {r.reason}")
        err_console.print(f"[yellow]stays[/] {escape(r.message_id)} {why}")


@dlq_app.command("list")
def list_(
    ctx: typer.Context,
    max_messages: Annotated[
        int, typer.Option("--max-messages", help="At most this many (50 unless --all).")
    ] = DEFAULT_LIST,
    everything: Annotated[bool, typer.Option("--all", help="Allow more than 50.")] = False,
    dlq_url: DlqUrl = None,
    schema: SchemaFile = None,
    json_output: JsonFlag = False,
) -> None:
    """Messages of the DLQ with why each failed (from the ledger), without consuming them.

    Each message read counts one more receive; all are made visible again at once.
    """
    from sluice.ops.dlq import list_messages

    env, pair = _open(ctx, dlq_url, schema=schema)
    listing = list_messages(env, pair, max_messages=max_messages, everything=everything)
    if wants_json(ctx, json_output):
        print_json(listing)
        return
    table = Table(title=f"dead letters in {listing.queue}", title_justify="left")
    # A FIFO DLQ's messages have group ids: a column for them, before the (long) reason.
    fifo = any(m.group_id is not None for m in listing.messages)
    columns = ["message id", "kind", "source object", "correlation id", "receives", "age"]
    columns += ["expires in", *(["group id"] if fifo else []), "reason"]
    for column in columns:
        right = column in ("receives", "age", "expires in")
        table.add_column(column, overflow="fold", justify="right" if right else "left")
    for m in listing.messages:
        cells = [
            escape(m.message_id),
            escape(m.kind or "?"),
            escape(", ".join(m.sources) or "-"),
            escape(m.correlation_id or "(none)"),
            str(m.receive_count),
            format_duration(m.age_seconds),
            format_duration(m.expires_in_seconds),
        ]
        cells += [escape(m.group_id or "-")] if fifo else []
        table.add_row(*cells, escape(_short(m.reason, m.sources)))
    console.print(table)
    shown = len(listing.messages)
    console.print(f"{shown} of {listing.queue_visible} visible message(s) shown")
    _cost(listing.cost)


@dlq_app.command()
def inspect(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Option("--message-id", help="The message to show.")],
    dlq_url: DlqUrl = None,
    schema: SchemaFile = None,
    json_output: JsonFlag = False,
) -> None:
    """One message whole: body, attributes, validity and its source's failure history.

    The DLQ is read in batches of 10 until the message is found; nothing is consumed.
    """
    from sluice.ops.dlq import inspect_message

    env, pair = _open(ctx, dlq_url, schema=schema)
    found = inspect_message(env, pair, message_id)
    if wants_json(ctx, json_output):
        print_json(found)
        return
    m, v = found.message, found.validation
    rows: list[tuple[str, object]] = [
        ("message id", m.message_id),
        ("kind", m.kind or "?"),
        ("source objects", ", ".join(m.sources) or "-"),
        ("receives", m.receive_count),
        *([("group id", m.group_id)] if m.group_id is not None else []),
        *([("deduplication id", m.deduplication_id)] if m.deduplication_id is not None else []),
        ("age", format_duration(m.age_seconds)),
        ("expires in", format_duration(m.expires_in_seconds)),
        ("valid", "yes" if v.valid else f"no: {v.reason}"),
        ("category", m.category.value),
        ("reason", m.reason),
    ]
    rows += [(f"attribute {k}", value) for k, value in sorted(found.attributes.items())]
    console.print(key_values(f"message in {found.queue}", rows))
    console.print("body:")
    console.print(escape(found.body), soft_wrap=True)
    for uri, events in found.history.items():
        history = Table(title=f"failures of {uri}", title_justify="left")
        for column in ("attempt", "at", "error", "terminal", "correlation id"):
            history.add_column(column, overflow="fold")
        for e in events:
            history.add_row(
                str(e.attempt),
                e.at.isoformat(timespec="seconds"),
                escape(f"{e.error_class}: {e.error}"),
                str(e.terminal),
                escape(e.correlation_id or ""),
            )
        console.print(history)
    _cost(found.cost)


@dlq_app.command("explain")
def explain_(
    ctx: typer.Context,
    max_messages: Annotated[
        int, typer.Option("--max-messages", help="Read at most this many.")
    ] = 1000,
    dlq_url: DlqUrl = None,
    schema: SchemaFile = None,
    json_output: JsonFlag = False,
) -> None:
    """The DLQ's messages grouped by why they are there, with what to do about each group."""
    from sluice.ops.dlq import explain

    env, pair = _open(ctx, dlq_url, schema=schema)
    result = explain(env, pair, max_messages=max_messages)
    if wants_json(ctx, json_output):
        print_json(result)
        return
    table = Table(title=f"why messages are in {result.queue}", title_justify="left")
    for column in ("category", "messages", "example", "next"):
        table.add_column(
            column, overflow="fold", justify="right" if column == "messages" else "left"
        )
    for g in result.groups:
        table.add_row(
            g.category.value, str(g.count), escape(_short(g.example, ())), escape(g.action)
        )
    console.print(table)
    console.print(
        f"{result.total} message(s)"
        + ("" if result.complete else " (read stopped at --max-messages; more are waiting)")
    )
    _cost(result.cost)


def _show_redrive(result: object, as_json: bool) -> None:
    from sluice.ops.dlq import RedriveResult

    assert isinstance(result, RedriveResult)
    if as_json:
        print_json(result)
    else:
        title = "dlq redrive" + (" (dry run)" if result.dry_run else "")
        rows: list[tuple[str, object]] = [
            ("from", result.queue),
            ("to", result.target),
            ("valid", result.valid),
            ("redriven", len(result.redriven)),
            ("refused (stay)", len(result.refused)),
            ("failed (stay)", len(result.failed)),
        ]
        console.print(key_values(title, rows))
        _refused(result.refused)
        for message_id, reason in result.failed.items():
            err_console.print(f"[red]failed[/] {escape(message_id)}: {escape(reason)}")
        if result.dry_run:
            console.print("dry run: nothing moved")
        elif result.redriven:
            console.print("next: sluice worker --until-idle   (or: sluice queue wait)")
        _cost(result.cost)
    if result.failed:
        raise typer.Exit(1)


@dlq_app.command()
def redrive(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Option("--message-id", help="The message to move.")],
    dlq_url: DlqUrl = None,
    target_url: TargetUrl = None,
    schema: SchemaFile = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Move one valid message back to its source queue (body, attributes and group id kept).

    A message that is invalid, or has no correlation_id attribute, is refused and stays. A FIFO
    DLQ's messages go only to a FIFO queue, a standard DLQ's only to a standard one.
    """
    from sluice.ops.dlq import redrive_message

    env, pair = _open(ctx, dlq_url, target_url, schema)
    result = redrive_message(
        env, pair, message_id, dry_run=dry_run, yes=yes, command=command_line(ctx)
    )
    _show_redrive(result, wants_json(ctx, json_output))
    if result.refused:
        raise typer.Exit(1)


@dlq_app.command("redrive-all")
def redrive_all_(
    ctx: typer.Context,
    max_messages: Annotated[
        int, typer.Option("--max-messages", help="Move at most this many (1..10000).")
    ] = DEFAULT_REDRIVE_BATCH,
    rate: Annotated[
        int | None, typer.Option("--rate", help="At most this many messages per second.")
    ] = None,
    dlq_url: DlqUrl = None,
    target_url: TargetUrl = None,
    schema: SchemaFile = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Move the valid messages back to the source queue; invalid ones stay, listed with why.

    A message leaves the DLQ only after its send is confirmed; on FIFO queues it keeps its
    group id. Fix the cause first (see `sluice dlq explain`): a message that fails the same way
    comes back to the DLQ.
    """
    from sluice.ops.dlq import redrive_all

    env, pair = _open(ctx, dlq_url, target_url, schema)
    result = redrive_all(
        env,
        pair,
        max_messages=max_messages,
        rate=rate,
        dry_run=dry_run,
        yes=yes,
        command=command_line(ctx),
    )
    _show_redrive(result, wants_json(ctx, json_output))


@dlq_app.command()
def purge(
    ctx: typer.Context,
    backup: Annotated[Path, typer.Option("--backup", help="New JSONL file for the messages.")],
    dlq_url: DlqUrl = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Write every message to --backup, verify the backup, then delete the messages.

    `sluice dlq restore FILE` sends a backup back.
    """
    from sluice.ops.dlq import purge as run

    env, pair = _open(ctx, dlq_url)
    result = run(env, pair, backup, dry_run=dry_run, yes=yes, command=command_line(ctx))
    if wants_json(ctx, json_output):
        print_json(result)
    else:
        rows: list[tuple[str, object]] = [
            ("visible before", result.visible),
            ("backed up", result.backed_up),
            ("deleted", result.deleted),
            ("failed (stay)", len(result.failed)),
        ]
        title = f"purge {result.queue}" + (" (dry run)" if result.dry_run else "")
        console.print(key_values(title, rows))
        if result.dry_run:
            console.print("dry run: nothing written or deleted")
        else:
            console.print(f"backup: {escape(str(result.backup))}")
            _cost(result.cost)
        for message_id, reason in result.failed.items():
            err_console.print(f"[red]not deleted[/] {escape(message_id)}: {escape(reason)}")
    if result.failed:
        raise typer.Exit(1)


@dlq_app.command()
def restore(
    ctx: typer.Context,
    backup: Annotated[Path, typer.Argument(help="A backup written by `sluice dlq purge`.")],
    to_url: Annotated[
        str | None,
        typer.Option("--to-url", help="Queue to send to (default: the environment's DLQ)."),
    ] = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    json_output: JsonFlag = False,
) -> None:
    """Send every message of a backup to a queue (default: the DLQ), with its attributes.

    Every line's checksum is checked before anything is sent. Restoring a backup twice sends
    its messages twice (to a FIFO queue within 5 minutes: once). A FIFO queue's backup, whose
    messages keep their group ids, goes back only to a FIFO queue.
    """
    from sluice.ops.dlq import restore as run

    env = options(ctx).open()
    queue = env.processing_dlq if to_url is None else env.queues.open(to_url)
    result = run(env, backup, queue, dry_run=dry_run, yes=yes, command=command_line(ctx))
    if wants_json(ctx, json_output):
        print_json(result)
    else:
        rows: list[tuple[str, object]] = [
            ("messages in backup", result.messages),
            ("sent", len(result.sent)),
            ("failed", len(result.failed)),
        ]
        title = f"restore to {result.queue}" + (" (dry run)" if result.dry_run else "")
        console.print(key_values(title, rows))
        for message_id, reason in result.failed.items():
            err_console.print(f"[red]not sent[/] {escape(message_id)}: {escape(reason)}")
    if result.failed:
        raise typer.Exit(1)
