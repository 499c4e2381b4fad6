"""One renderer for every command: the same result object as a rich table or as JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sluice.serialize import to_jsonable

console = Console()
err_console = Console(stderr=True)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")


def arrow_table(table: pa.Table, *, title: str | None = None, max_rows: int = 50) -> Table:
    out = Table(title=title, show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        out.add_row(*("" if v is None else escape(str(v)) for v in row.values()))
    if table.num_rows > max_rows:
        out.caption = f"{max_rows} of {table.num_rows} rows shown (use --json for all)"
    return out


def key_values(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    out = Table(title=title, show_header=False, title_justify="left")
    out.add_column("", style="bold")
    out.add_column("")
    for key, value in rows:
        out.add_row(escape(key), escape(str(value)))
    return out


def counts_table(title: str, header: tuple[str, str], counts: Mapping[str, int]) -> Table:
    out = Table(title=title, title_justify="left")
    out.add_column(header[0])
    out.add_column(header[1], justify="right")
    for key, value in sorted(counts.items()):
        out.add_row(escape(key), f"{value:,}")
    return out
