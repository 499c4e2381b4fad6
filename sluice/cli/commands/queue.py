"""`sluice queue`: how deep every queue is, and waiting until the work queues drain."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, print_json
from sluice.ops.queues import QueueStatus, format_duration

queue_app = typer.Typer(
    help="The environment's queues: depths, ages, dead letters; wait for them to drain.",
    no_args_is_help=True,
)
app.add_typer(queue_app, name="queue")


def _age(status: QueueStatus) -> str:
    if status.oldest_age_seconds is None:
        # SQS publishes the age of the oldest message only as a CloudWatch metric.
        return "unknown" if status.depth else "-"
    return format_duration(status.oldest_age_seconds)


def status_table(statuses: list[QueueStatus] | tuple[QueueStatus, ...], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("queue", overflow="fold")
    for column in ("visible", "in flight", "delayed", "oldest"):
        table.add_column(column, justify="right")
    table.add_column("dead letters", overflow="fold")
    for q in statuses:
        if q.dead_letter_queue is not None:
            dead = (
                f"{q.dlq_depth:,} in {q.dead_letter_queue}"
                f" (moved there after {q.max_receive_count} receives)"
            )
        elif q.dead_letter_for:
            dead = f"is the DLQ of {', '.join(q.dead_letter_for)}"
        else:
            dead = "no redrive policy"
        table.add_row(
            escape(q.name),
            f"{q.visible:,}",
            f"{q.in_flight:,}",
            f"{q.delayed:,}",
            _age(q),
            escape(dead),
        )
    return table


@queue_app.command()
def status(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Every queue of the environment: visible, in flight, delayed, oldest message, dead letters.

    Lists the processing queue and its dead-letter queue (and any other queue the environment
    names), with each redrive policy. The oldest age is "unknown" on SQS, which reports it
    only as a CloudWatch metric.
    """
    from sluice.ops.queues import queue_status

    statuses = queue_status(options(ctx).open())
    if wants_json(ctx, json_output):
        print_json(statuses)
        return
    console.print(status_table(statuses, "queues"))
    dead = [q for q in statuses if q.is_dead_letter_queue and q.depth]
    for q in dead:
        console.print(
            f"[yellow]{escape(q.name)} holds {q.depth:,} message(s)[/]: sluice dlq list"
            "   (why: sluice ledger list --status failed)"
        )


@queue_app.command()
def wait(
    ctx: typer.Context,
    stable_for: Annotated[
        str, typer.Option("--stable-for", help="How long the queues must stay empty (90s, 5m).")
    ] = "60s",
    timeout: Annotated[
        str, typer.Option("--timeout", help="Give up (exit 1) after this long (30m, 2h).")
    ] = "30m",
    poll: Annotated[str, typer.Option("--poll", help="How often to read the counts.")] = "5s",
    json_output: JsonFlag = False,
) -> None:
    """Wait until the work queues hold nothing visible, in flight or delayed for --stable-for.

    The step between a redrive and the repair and verify that follow it. Exits 0 once drained
    and stable, and says what the dead-letter queues hold then. Exits 1 at --timeout, with the
    counts at that moment and where to look next.
    """
    from sluice.ops.queues import WaitProgress, parse_duration, wait_until_drained

    as_json = wants_json(ctx, json_output)
    stable = parse_duration(stable_for, what="--stable-for")
    limit = parse_duration(timeout, what="--timeout")
    interval = parse_duration(poll, what="--poll")
    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("reading the queues", total=None)

        def on_progress(p: WaitProgress) -> None:
            if p.pending:
                text = ", ".join(
                    f"{q.name}: {q.visible:,} visible, {q.in_flight:,} in flight"
                    for q in p.queues
                    if not q.is_dead_letter_queue
                )
            else:
                idle = format_duration(p.idle_for_seconds)
                text = f"empty for {idle} of {format_duration(p.stable_for_seconds)}"
            progress.update(task, description=escape(text))

        result = wait_until_drained(
            env, stable_for=stable, timeout=limit, poll=interval, on_progress=on_progress
        )
    if as_json:
        print_json(result)
        return
    console.print(
        f"drained: the work queues stayed empty for {format_duration(result.stable_for_seconds)}"
        f" (waited {format_duration(result.waited_seconds)})"
    )
    for name, depth in result.dead_letters.items():
        if depth:
            console.print(
                f"[yellow]{escape(name)} holds {depth:,} message(s)[/]: sluice dlq list"
                "   (why: sluice ledger list --status failed)"
            )
        else:
            console.print(f"{escape(name)} is empty")
