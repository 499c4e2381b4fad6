"""The fast path: well-formed lines become Arrow columns in C++, not Python objects.

Each line is first checked by `parse.fast_check` (msgspec, in C, plus the timestamp rules in
Python). Lines that pass are collected as bytes and parsed in bulk by Arrow's JSON reader with
the tables' fixed types; fan-out, lineage and partitioning are then column operations. Lines
that do not pass never come here: `parse_line` decides them one by one (extras, quarantine).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from sluice.process.parse import _PAYLOAD_FIELDS
from sluice.process.schemas import ARROW_TYPES, ASSERTION_FIELDS, PARSER_VERSION, SPECS, TIMESTAMP

HOUR_US = 3_600_000_000
_TYPES = pa.array(list(SPECS), pa.string())
_TYPE_STRIDE = 10**8  # more hours than there are since the epoch

_ASSERTION_TYPE = pa.struct([(n, ARROW_TYPES[k]) for n, k in ASSERTION_FIELDS.items()])
# Every field any type knows, with the one type the fast path allows for it. occurred_at is
# read as text: its value comes from the Python check, which is the rule.
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
_PARSE_OPTIONS = pajson.ParseOptions(
    explicit_schema=_READ_SCHEMA, unexpected_field_behavior="ignore"
)


@dataclass
class FastBatch:
    """Lines that passed `fast_check`, waiting to be parsed together."""

    numbers: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    occurred_us: list[int] = field(default_factory=list)
    size: int = 0

    def add(self, number: int, line: bytes, occurred_us: int) -> None:
        self.numbers.append(number)
        self.lines.append(line)
        self.occurred_us.append(occurred_us)
        self.size += len(line) + 1

    def __len__(self) -> int:
        return len(self.lines)

    def read(self) -> pa.Table | None:
        """The lines as one Arrow table, or None if Arrow's reader disagrees with the check
        (then the caller takes the lines one by one)."""
        data = b"\n".join(self.lines)
        block = max(len(data) + 1, 1 << 20)
        try:
            table = pajson.read_json(
                io.BytesIO(data),
                read_options=pajson.ReadOptions(use_threads=False, block_size=block),
                parse_options=_PARSE_OPTIONS,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        return table if table.num_rows == len(self.lines) else None


def _fan_out(table: pa.Table) -> tuple[pa.Table, pa.StructArray, pa.Array]:
    """One row per assertion (one row for an event with none): the event columns repeated,
    the assertion struct per row, and each row's ordinal."""
    payload = table.column("payload").combine_chunks()
    assertions = payload.flatten()[payload.type.get_field_index("assertions")]
    lengths = pc.fill_null(pc.list_value_length(assertions), 0)
    # Events without assertions get a one-element list holding a null assertion.
    padded = pc.if_else(
        pc.greater(lengths, 0),
        assertions,
        pa.scalar([None], type=pa.list_(_ASSERTION_TYPE)),
    )
    parents = pc.list_parent_indices(padded)
    elements = pc.list_flatten(padded)
    starts = pc.take(padded.offsets, parents)
    positions = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), len(parents))), 1)
    ordinals = pc.subtract(positions, starts).cast(pa.int32())
    return table.take(parents), elements, ordinals


def partitions(
    batch: FastBatch, table: pa.Table, source_ref: str, received_at: datetime
) -> Iterator[tuple[str, str, str, pa.Table]]:
    """(type, day, hour, rows in the table's schema) for every partition the batch touches."""
    table = table.append_column("_line", pa.array(batch.numbers, pa.int64()))
    table = table.append_column("_occurred", pa.array(batch.occurred_us, pa.int64()))
    rows, assertion, ordinals = _fan_out(table)
    envelope = rows.column("envelope").combine_chunks()
    payload = rows.column("payload").combine_chunks()
    env_cols = dict(zip(envelope.type.names, envelope.flatten(), strict=True))
    pay_cols = dict(zip(payload.type.names, payload.flatten(), strict=True))
    asr_cols = dict(zip(assertion.type.names, assertion.flatten(), strict=True))
    occurred_us = rows.column("_occurred").combine_chunks()
    n = rows.num_rows
    nulls = pa.nulls(n, pa.string())
    columns: dict[str, pa.Array] = {
        **{f"envelope__{k}": v for k, v in env_cols.items()},
        "envelope__occurred_at": occurred_us.cast(TIMESTAMP),
        "envelope__extra": nulls,
        **{f"payload__{k}": v for k, v in pay_cols.items() if k != "assertions"},
        **{f"payload__assertion__{k}": v for k, v in asr_cols.items()},
        "payload__assertion__extra": nulls,
        "payload__extra": nulls,
        "envelope__received_at": pa.repeat(pa.scalar(received_at, TIMESTAMP), n),
        "envelope__source_ref": pa.repeat(pa.scalar(source_ref, pa.string()), n),
        "envelope__line": rows.column("_line").combine_chunks(),
        "envelope__ordinal": ordinals,
        "envelope__parser_version": pa.repeat(pa.scalar(PARSER_VERSION, pa.string()), n),
    }
    # One integer per partition: the type's index, then hours since the epoch.
    type_index = pc.index_in(env_cols["type"], value_set=_TYPES)
    key = pc.add(
        pc.multiply(type_index.cast(pa.int64()), _TYPE_STRIDE), pc.divide(occurred_us, HOUR_US)
    )
    # A stable sort: within a partition, rows keep the order of their lines.
    order = pc.sort_indices(key)
    runs = pc.run_end_encode(pc.take(key, order))
    start = 0
    for end, value in zip(runs.run_ends.to_pylist(), runs.values.to_pylist(), strict=True):
        type_ = _TYPES[value // _TYPE_STRIDE].as_py()
        schema = SPECS[type_].schema
        indices = order.slice(start, end - start)
        part = pa.Table.from_arrays(
            [pc.take(columns[f.name], indices) for f in schema], schema=schema
        )
        t = datetime.fromtimestamp((value % _TYPE_STRIDE) * 3600, UTC)
        yield type_, t.date().isoformat(), f"{t.hour:02d}", part
        start = end
