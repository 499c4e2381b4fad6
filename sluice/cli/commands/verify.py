"""`sluice verify`: is one day of the lake whole?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sluice.cli.app import JsonFlag, app, options, wants_json
from sluice.cli.progress import progress_bar
from sluice.cli.render import console, print_json
from sluice.errors import ConfigError

if TYPE_CHECKING:
    from sluice.ops.verify import Finding, VerifyReport

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    date: Annotated[str, typer.Option("--date", help="Day of event time (UTC), YYYY-MM-DD.")],
    type_: Annotated[
        str | None, typer.Option("--type", help="Verify one type's table (lock, bridge, ...).")
    ] = None,
    all_tables: Annotated[
        bool, typer.Option("--all-tables", help="Verify every verified table (the default).")
    ] = False,
    check_duplicates: Annotated[
        bool, typer.Option("--check-duplicates", help="Pipeline vs upstream duplicates.")
    ] = False,
    check_counts: Annotated[
        bool,
        typer.Option(
            "--check-counts",
            help="Ledger counts, rows in files, receipts, verified unique = compacted.",
        ),
    ] = False,
    check_quality: Annotated[
        bool,
        typer.Option("--check-quality", help="Null rates and assertion component names."),
    ] = False,
    thresholds: Annotated[
        Path | None,
        typer.Option("--thresholds", help="Quality thresholds file (TOML, or JSON if *.json)."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show samples of the offenders (costs a query per finding)."
        ),
    ] = False,
    samples: Annotated[int, typer.Option(help="Samples kept per finding, with -v or --json.")] = 10,
    json_output: JsonFlag = False,
) -> None:
    """Check one day of the verified tables: no pipeline duplicate (the same source_ref, line
    and ordinal twice; resent events are counted, not failed), counts that add up from ingest
    receipts to ledger, files and compacted table, and columns within quality thresholds.

    Without a --check-* flag every check runs. Exit status: 0 when no check fails
    (warnings such as "not compacted yet" or "no data" included), 1 when one does.

    Quality thresholds, per table, from --thresholds FILE (TOML, or JSON if *.json),
    in sections named default, a type (lock) or a table (telemetry_lock_flat):
      max_null_rate = {column = rate}   default: 0 for the required columns
      max_missing_component_rate = r    assertion rows without a component_name (0)
      max_failed_assertion_rate = r     assertion rows with passed = false (unchecked)
      components = ["motor", ...]       the known names; any other one fails
    """
    from sluice.ops.verify import Check, load_thresholds, verify

    if type_ is not None and all_tables:
        raise ConfigError(
            "--type and --all-tables exclude each other",
            hint=f"sluice verify --date {date} --type {type_}   (or --all-tables alone)",
        )
    if samples < 0:
        raise ConfigError(f"--samples must be 0 or more, not {samples}")
    as_json = wants_json(ctx, json_output)
    flags = {
        Check.DUPLICATES: check_duplicates,
        Check.COUNTS: check_counts,
        Check.QUALITY: check_quality,
    }
    sections = load_thresholds(thresholds)  # before the environment: a typo costs nothing
    env = options(ctx).open()
    with progress_bar(as_json) as progress:
        task = progress.add_task("verifying", total=None)
        report = verify(
            env,
            date,
            None if type_ is None else [type_],
            [c for c, wanted in flags.items() if wanted],
            thresholds=sections,
            # Samples cost queries of their own: only for output that shows them.
            samples=samples if verbose or as_json else 0,
            on_step=lambda step: progress.update(task, description=escape(step)),
        )
    if as_json:
        print_json(report)
    else:
        _render(report, verbose)
    if report.failed:
        raise typer.Exit(1)


def _render(report: VerifyReport, verbose: bool) -> None:
    table = Table(title=f"sluice verify {report.day}", title_justify="left")
    for column in ("table", "check", "finding", "verdict", "evidence"):
        table.add_column(column, overflow="fold")
    hidden = False
    for result in report.results:
        for f in result.findings:
            style = _STYLE[f.verdict.value]
            table.add_row(
                escape(result.table),
                result.check.value,
                escape(f.name),
                f"[{style}]{f.verdict.value}[/]",
                escape(f.message),
            )
            hidden |= not verbose and _has_samples(f)
    console.print(table)
    for result in report.results:
        for f in result.findings:
            if verbose and f.samples:
                _print_samples(f"{result.table} {f.name}", f.samples)
            if f.hint and f.verdict.value != "PASS":
                console.print(f"[yellow]next:[/] {escape(f.hint)}")
    if hidden:
        console.print("-v shows samples of what the checks found")
    if not report.has_data:
        console.print(
            f"[yellow]no data[/] for {report.day} in {', '.join(report.tables) or 'any table'}: "
            "the day is event time, UTC; `sluice catalog repair` registers unseen partitions"
        )
    style = _STYLE[report.verdict.value]
    console.print(f"[{style}]{report.verdict.value}[/] in {report.seconds:.1f} s")


def _has_samples(f: Finding) -> bool:
    """Whether -v would show samples for this finding."""
    if f.name == "upstream_duplicates":
        return bool(f.numbers.get("groups"))
    return f.verdict.value == "FAIL" and f.name not in ("compacted", "error")


def _print_samples(title: str, rows: list[dict[str, Any]]) -> None:
    """One line per sample, never folded, so URIs stay whole for copy and paste."""
    console.print(f"[bold]{escape(title)}[/]: {len(rows)} sample(s)")
    for row in rows:
        text = " ".join(f"{k}={_text(v)}" for k, v in row.items())
        console.print(f"  {escape(text)}", soft_wrap=True)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)
