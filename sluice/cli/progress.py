"""The one progress bar every long command shows (on stderr, so --json stays clean)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from sluice.cli.render import err_console


def progress_bar(disabled: bool) -> Progress:
    """A transient bar: description, spinner, bar, done/total and elapsed time. Off for
    --json and off the terminal, where a transient bar would leave only blank lines."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=disabled or not err_console.is_terminal,
        transient=True,
    )
