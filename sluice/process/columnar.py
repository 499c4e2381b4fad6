"""The fast path: well-formed lines become Arrow columns in C++, not Python objects.

Each line is first checked by `linecheck.check_lines`: a compiled checker vouches for the common
lines without making a Python object per line, and `parse.fast_check` (msgspec, in C) decides
the ones it leaves. Lines that pass are collected and parsed in bulk by DuckDB's JSON reader
with the tables' fixed types (about three times faster than Arrow's on these lines); their
occurred_at values are checked a column at a time (`occurred_micros`); fan-out, lineage and
partitioning are then column operations. Lines that do not pass either check are left to
`parse_line`, one by one (extras, quarantine).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from itertools import compress
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sluice.process.parse import (
    _PAYLOAD_FIELDS,
    EARLIEST,
    MAX_AHEAD_OF_ARRIVAL,
    Checked,
    Extras,
)
from sluice.process.schemas import ARROW_TYPES, ASSERTION_FIELDS, PARSER_VERSION, SPECS, TIMESTAMP

HOUR_US = 3_600_000_000
_TYPES = pa.array(list(SPECS), pa.string())
_TYPE_STRIDE = 10**8  # more hours than there are since the epoch

_ASSERTION_TYPE = pa.struct([(n, ARROW_TYPES[k]) for n, k in ASSERTION_FIELDS.items()])
# Every field any type knows, with the one type the fast path allows for it. occurred_at is
# read as text: `occurred_micros` checks it by the rule of the per-line path.
_READ_SCHEMA = pa.schema(
    [
        (
            "envelope",
            pa.struct(
                [
                    ("event_id", pa.string()),
                    ("type", pa.string()),
                    ("event_kind", pa.string()),
                    ("device_id", pa.string()),
                    ("occurred_at", pa.string()),
                    ("schema_version", pa.int64()),
                    ("batch_id", pa.string()),
                ]
            ),
        ),
        (
            "payload",
            pa.struct(
                [(n, ARROW_TYPES[k]) for n, k in _PAYLOAD_FIELDS.items()]
                + [("assertions", pa.list_(_ASSERTION_TYPE))]
            ),
        ),
    ]
)


_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per thread (a connection is not for concurrent use; opening one
    costs tens of milliseconds)."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect(config={"threads": 1})
    return con


def _duckdb_type(dtype: pa.DataType) -> str:
    if pa.types.is_struct(dtype):
        return f"STRUCT({', '.join(f'{f.name} {_duckdb_type(f.type)}' for f in dtype)})"
    if pa.types.is_list(dtype):
        return f"{_duckdb_type(dtype.value_type)}[]"
    return _DUCKDB_TYPES[dtype]


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}
_COLUMNS = ", ".join(f"'{f.name}': '{_duckdb_type(f.type)}'" for f in _READ_SCHEMA)
_READ_SQL = (
    f"SELECT envelope, payload FROM read_json($1, format = 'newline_delimited', "
    f"columns = {{{_COLUMNS}}}, ignore_errors = false)"
)


# RFC 3339 in the form nearly every device writes, which Arrow parses exactly as the per-line
# rule (`parse.check_occurred_at`) does; anything else is left to that rule, line by line.
_COMMON_RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"  # date and time
    r"(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"  # at most microseconds; an offset
)
_EARLIEST_US = int(EARLIEST.timestamp()) * 1_000_000


def occurred_micros(texts: pa.Array, arrived_at: datetime) -> pa.Array:
    """occurred_at (strings) as microseconds since 1970 (int64) where a whole-column check can
    tell it is valid and inside the window of `check_occurred_at`; null where the per-line rule
    decides."""
    common = pc.if_else(pc.match_substring_regex(texts, _COMMON_RFC3339), texts, None)
    micros = _cast_micros(common)
    latest_us = round((arrived_at + MAX_AHEAD_OF_ARRIVAL).timestamp() * 1_000_000)
    inside = pc.and_(pc.greater_equal(micros, _EARLIEST_US), pc.less_equal(micros, latest_us))
    return pc.if_else(inside, micros, None)


def _cast_micros(texts: pa.Array) -> pa.Array:
    """RFC 3339 strings as int64 microseconds; null where Arrow refuses the date or time (02-30,
    24:00, ...). Arrow refuses a whole column for one such value: the column is halved until
    each refused value is alone, so a few bad dates cost a few dozen casts, not the batch."""
    try:
        return pc.cast(texts, pa.timestamp("us", "UTC")).cast(pa.int64())
    except pa.ArrowInvalid:
        if len(texts) == 1:
            return pa.nulls(1, pa.int64())
        half = len(texts) // 2
        return pa.concat_arrays(
            [_cast_micros(texts.slice(0, half)), _cast_micros(texts.slice(half))]
        )


def positions(values: list[Any], target: Any) -> list[int]:
    """Where `target` is in `values`: searched in C between hits, for the rare ones."""
    found: list[int] = []
    index = -1
    with contextlib.suppress(ValueError):
        while True:
            index = values.index(target, index + 1)
            found.append(index)
    return found


@dataclass
class FastBatch:
    """Lines that passed `fast_check`, waiting to be parsed together."""

    numbers: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    extras: dict[int, Extras] = field(default_factory=dict)  # by index, for the few that have any

    def extend(self, first: int, lines: list[bytes], checked: list[Checked]) -> None:
        """Add the lines `fast_check` passed (`checked[i]` is the check of `lines[i]`, numbered
        from `first`); the others (None) are not added. Every pass over all the lines
        is a loop in C; Python touches only the few lines with extras."""
        numbers: Iterable[int] = range(first, first + len(lines))
        if None in checked:
            numbers = list(compress(numbers, checked))  # a passed line's check is truthy
            lines = list(compress(lines, checked))
            checked = list(filter(None, checked))
        start = len(self.lines)
        for index in positions(list(map(type, checked)), Extras):
            self.extras[start + index] = cast(Extras, checked[index])
        self.numbers.extend(numbers)
        self.lines.extend(lines)

    def __len__(self) -> int:
        return len(self.lines)

    def slice(self, start: int, stop: int | None = None) -> FastBatch:
        """The lines from `start` to `stop`, as a batch of their own."""
        stop = len(self.lines) if stop is None else stop
        extras = {i - start: x for i, x in self.extras.items() if start <= i < stop}
        return FastBatch(self.numbers[start:stop], self.lines[start:stop], extras)

    def subset(self, indices: list[int]) -> FastBatch:
        """The lines at `indices` (in order), as a batch of their own."""
        kept = FastBatch([self.numbers[i] for i in indices], [self.lines[i] for i in indices])
        kept.extras = {new: self.extras[i] for new, i in enumerate(indices) if i in self.extras}
        return kept

    def extra_columns(
        self, event_of_row: pa.Array, element_of_row: pa.Array, assertion_offsets: pa.Array
    ) -> tuple[pa.Array, pa.Array, pa.Array]:
        """envelope__extra, payload__extra and payload__assertion__extra of every row, for rows
        of the lines `event_of_row` and the assertions `element_of_row` (indices into the
        flattened assertions, which start at `assertion_offsets` for each line)."""
        if not self.extras:
            nulls = pa.nulls(len(event_of_row), pa.string())
            return nulls, nulls, nulls
        lines = list(self.extras)
        extras = list(self.extras.values())
        # Only the few lines with extras have values: each row looks its line up among them.
        of_row = pc.index_in(event_of_row, value_set=pa.array(lines, pa.int64()))
        elements: list[int] = []
        element_extras: list[str | None] = []
        for index, x in zip(lines, extras, strict=True):
            start = assertion_offsets[index].as_py()
            elements.extend(range(start, start + len(x.assertions)))
            element_extras.extend(x.assertions)
        element_at = pc.index_in(element_of_row, value_set=pa.array(elements, pa.int64()))
        return (
            pc.take(pa.array([x.envelope for x in extras], pa.string()), of_row),
            pc.take(pa.array([x.payload for x in extras], pa.string()), of_row),
            pc.take(pa.array(element_extras, pa.string()), element_at),
        )

    def read(self, scratch: Path) -> pa.Table | None:
        """The lines as one Arrow table, or None if the reader disagrees with the check (then
        the caller takes the lines one by one)."""
        path = scratch / "fast-batch.jsonl"
        _overwrite(path, b"\n".join(self.lines))
        try:
            table = _connection().sql(_READ_SQL, params=[str(path)]).to_arrow_table()
        except duckdb.Error:
            return None
        return table if table.num_rows == len(self.lines) else None


def _overwrite(path: Path, data: bytes) -> None:
    """`data` as the whole content of `path`, written over the pages of its previous content:
    a new file per batch (written, read once, unlinked) costs the kernel twice the time."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.pwrite(fd, view[done:], done)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


@lru_cache(maxsize=16)
def _repeat(value: object, type_: pa.DataType, size: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, type_), size)


def forget_constants() -> None:
    """Drop the constant columns kept for the object just processed (a source's columns are
    megabytes that no other object uses)."""
    _repeat.cache_clear()


def _repeated(value: object, type_: pa.DataType, n: int) -> pa.Array:
    """`value` n times: a slice of a column built once per value (batches of one object share
    it; a repeated string is a whole string column)."""
    return _repeat(value, type_, 1 << max(n - 1, 0).bit_length()).slice(0, n)


def _row_layout(lengths: pa.Array, order: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """For events taken in `order` and fanned out (one row per assertion, one for an event with
    none): each row's event (an index into the batch), its ordinal, and where each event's rows
    start."""
    counts = pc.max_element_wise(pc.take(lengths, order), 1)
    starts = pa.concat_arrays(
        [pa.array([0], pa.int64()), pc.cumulative_sum(counts.cast(pa.int64()))]
    )
    total = starts[-1].as_py()
    rows_of = pa.ListArray.from_arrays(starts, pa.nulls(total, pa.int8()))
    event_of_row = pc.list_parent_indices(rows_of)  # index into the sorted events
    positions = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), total)), 1)
    ordinals = pc.subtract(positions, pc.take(starts, event_of_row))
    return pc.take(order, event_of_row), ordinals, starts


def partitions(
    batch: FastBatch,
    table: pa.Table,
    occurred_us: pa.Array,
    source_ref: str,
    received_at: datetime,
) -> Iterator[tuple[str, str, str, pa.Table]]:
    """(type, day, hour, rows in the table's schema) for every partition the batch touches.

    Events are ordered by partition first (a stable sort, so lines keep their order), then
    fanned out: each partition is then one contiguous slice of every column.
    """
    envelope = table.column("envelope").combine_chunks()
    payload = table.column("payload").combine_chunks()
    env_cols = dict(zip(envelope.type.names, envelope.flatten(), strict=True))
    del env_cols["occurred_at"]  # as text; its checked value is `occurred_us`
    types = env_cols.pop("type")  # one value per partition: not taken row by row
    pay_cols = dict(zip(payload.type.names, payload.flatten(), strict=True))
    assertions = pay_cols.pop("assertions")
    # One integer per partition: the type's index, then hours since the epoch.
    type_index = pc.index_in(types, value_set=_TYPES).cast(pa.int64())
    key = pc.add(pc.multiply(type_index, _TYPE_STRIDE), pc.divide(occurred_us, HOUR_US))
    order = pc.sort_indices(key)
    lengths = pc.fill_null(pc.list_value_length(assertions), 0)
    event_of_row, ordinals, starts = _row_layout(lengths, order)
    has_assertion = pc.greater(pc.take(lengths, event_of_row), 0)
    element = pc.if_else(
        has_assertion, pc.add(pc.take(assertions.offsets, event_of_row), ordinals), None
    )
    asr_cols = dict(
        zip(_ASSERTION_TYPE.names, pc.take(assertions.values, element).flatten(), strict=True)
    )
    envelope_extras, payload_extras, assertion_extras = batch.extra_columns(
        event_of_row, element, assertions.offsets
    )
    n = len(event_of_row)
    columns: dict[str, pa.Array] = {
        **{f"envelope__{k}": pc.take(v, event_of_row) for k, v in env_cols.items()},
        "envelope__occurred_at": pc.take(occurred_us, event_of_row).cast(TIMESTAMP),
        "envelope__extra": envelope_extras,
        **{f"payload__assertion__{k}": v for k, v in asr_cols.items()},
        "payload__assertion__extra": assertion_extras,
        "payload__extra": payload_extras,
        "envelope__received_at": _repeated(received_at, TIMESTAMP, n),
        "envelope__source_ref": _repeated(source_ref, pa.string(), n),
        "envelope__line": pc.take(pa.array(batch.numbers, pa.int64()), event_of_row),
        "envelope__ordinal": ordinals.cast(pa.int32()),
        "envelope__parser_version": _repeated(PARSER_VERSION, pa.string(), n),
    }
    runs = pc.run_end_encode(pc.take(key, order))
    row_ends = pc.take(starts, runs.run_ends).to_pylist()
    row_starts = [0, *row_ends[:-1]]
    keys = runs.values.to_pylist()
    # Rows are ordered by type first: each type's rows are one range, and only its own payload
    # fields are taken for them.
    type_rows: dict[int, tuple[int, int]] = {}
    for start, end, value in zip(row_starts, row_ends, keys, strict=True):
        first = type_rows.get(value // _TYPE_STRIDE, (start, end))[0]
        type_rows[value // _TYPE_STRIDE] = (first, end)
    by_type: dict[int, dict[str, pa.Array]] = {}  # the type and payload columns of its rows
    for index, (first, end) in type_rows.items():
        rows = event_of_row.slice(first, end - first)
        fields = SPECS[_TYPES[index].as_py()].payload_fields
        by_type[index] = {f"payload__{k}": pc.take(pay_cols[k], rows) for k in fields}
        by_type[index]["envelope__type"] = _repeated(_TYPES[index].as_py(), pa.string(), len(rows))
    for start, end, value in zip(row_starts, row_ends, keys, strict=True):
        index = value // _TYPE_STRIDE
        type_ = _TYPES[index].as_py()
        schema = SPECS[type_].schema
        first = type_rows[index][0]
        part = pa.Table.from_arrays(
            [
                by_type[index][f.name].slice(start - first, end - start)
                if f.name in by_type[index]
                else columns[f.name].slice(start, end - start)
                for f in schema
            ],
            schema=schema,
        )
        t = datetime.fromtimestamp((value % _TYPE_STRIDE) * 3600, UTC)
        yield type_, t.date().isoformat(), f"{t.hour:02d}", part
