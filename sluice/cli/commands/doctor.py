"""`sluice doctor`: every stage's health, the evidence and the command that fixes it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.render import console, print_json
from sluice.ops.doctor import DEFAULT_HOURS, DoctorReport, Verdict

_STYLE = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "bold red"}


@app.command()
def doctor(
    ctx: typer.Context,
    hours: Annotated[
        int, typer.Option(help="Look back this many hours (of arrival and of event time).")
    ] = DEFAULT_HOURS,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show each check's evidence.")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Check every stage of the lake: raw arriving, queue and DLQ, ledger failures and stuck
    claims, recent partitions, registry vs catalog vs store, file schemas, compaction, queue
    settings. Each gets OK, WARN or FAIL, its evidence and the command that fixes it; the exit
    code is 1 when any check FAILs. Only reads: it changes nothing."""
    from sluice.env import open_env
    from sluice.ops.doctor import doctor as run

    # setup=False: opening the embedded environment would otherwise rewrite the queue settings
    # this command is meant to check.
    report = run(open_env(options(ctx).config(), setup=False), hours=hours)
    if wants_json(ctx, json_output):
        print_json(report)
    else:
        _render(report, verbose)
    if report.failed:
        raise typer.Exit(1)


def _render(report: DoctorReport, verbose: bool) -> None:
    table = Table(
        title=f"sluice doctor: {report.environment} ({report.backend}), last {report.hours}h",
        title_justify="left",
    )
    for column in ("", "check", "finding", "fix"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        style = _STYLE[check.verdict]
        table.add_row(
            f"[{style}]{check.verdict.value}[/]",
            escape(check.title),
            escape(check.summary),
            escape("\n".join(check.fixes)),
        )
    console.print(table)
    for check in report.checks:
        if verbose:
            console.print(f"[bold]{escape(check.title)}[/]")
            for key, value in check.evidence.items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                console.print(f"  {escape(key)}: {escape(text)}", soft_wrap=True)
        if check.see and (verbose or check.verdict is not Verdict.OK):
            console.print(f"  {escape(check.title)}, more: {escape(check.see)}")
    counts = ", ".join(f"{sum(c.verdict is v for c in report.checks)} {v.value}" for v in Verdict)
    console.print(f"[{_STYLE[report.verdict]}]{report.verdict.value}[/] ({counts})")
