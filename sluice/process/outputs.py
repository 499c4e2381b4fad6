"""Rows → one Parquet file per (source, table, day, hour), and replacing a source's outputs.

Files are written to a local scratch directory first and published only when the whole object
has been read, so a failure part-way leaves the previous outputs untouched (promise 6).
Publishing writes every new file (each an atomic put over the same deterministic key) before it
removes any stale one, so a reader never sees the source's rows missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sluice.backends.ledger.base import Output
from sluice.layout import table_name, verified_key
from sluice.process.parse import Event
from sluice.process.schemas import PARSER_VERSION, SPECS

# Memory held across all partitions before they are flushed as row groups: bounds the parser's
# memory whatever the object's size, and keeps row groups large when partitions are many.
FLUSH_BYTES = 128 * 1024 * 1024
ROW_BYTES_ESTIMATE = 400  # a Python row tuple, until it becomes Arrow
# Rows handed to the encoder at a time: more than its default 1,024 saves per-call work (a page
# is closed after the batch that takes it past 1 MiB).
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_batch_size": 65_536}
# Columns nearly unique per row: a dictionary for them would be built and then dropped (Arrow
# falls back to plain encoding past 1 MiB of dictionary), which costs a third of the write time.
UNIQUE_PER_ROW = frozenset(
    (
        "envelope__event_id",
        "envelope__occurred_at",
        "envelope__batch_id",
        "envelope__extra",
        "envelope__line",
        "payload__uptime_s",
        "payload__extra",
        "payload__assertion__extra",
    )
)


# The one string column with min/max statistics: the lineage that `verify` reads from them when
# a file lost its metadata, and that prunes every other source's files in a query by source.
# The other strings keep none: ids (event, device, batch) are random, so every row group spans
# nearly all of them; a table holds one type and one parser version per file; kinds, states and
# JSON extras are mixed in every row group. Their min/max cost a fifth of the write time.
# Numbers and times keep theirs.
FILTERED_STRINGS = frozenset(("envelope__source_ref",))


def statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose min/max statistics are written (row-group pruning)."""
    return [f.name for f in schema if not pa.types.is_string(f.type) or f.name in FILTERED_STRINGS]


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: repeated values, not measurements or ids."""
    return [
        f.name for f in schema if f.name not in UNIQUE_PER_ROW and not pa.types.is_floating(f.type)
    ]


def event_rows(
    event: Event, source_ref: str, line: int, received_at: datetime
) -> list[tuple[Any, ...]]:
    """The verified rows of one event, in the table's column order (fan-out by assertion)."""
    head = (
        event.event_id,
        event.type,
        event.event_kind,
        event.device_id,
        event.occurred_at,
        event.schema_version,
        event.batch_id,
        event.envelope_extra,
        *event.payload,
    )
    assertions = event.assertions or ((None, None, None, None, None),)
    return [
        (
            *head,
            *assertion,
            event.payload_extra,
            received_at,
            source_ref,
            line,
            ordinal,
            PARSER_VERSION,
        )
        for ordinal, assertion in enumerate(assertions)
    ]


@dataclass
class _PartitionFile:
    type: str
    day: str
    hour: str
    path: Path
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    writer: pq.ParquetWriter | None = None
    written: int = 0


class PartitionWriter:
    """Accumulates rows per (type, day, hour) and writes them to scratch Parquet files."""

    def __init__(self, scratch: Path, source_ref: str, bucket: str) -> None:
        self.scratch = scratch
        self.source_ref = source_ref
        self.bucket = bucket
        self._files: dict[tuple[str, str, str], _PartitionFile] = {}
        self._buffered = 0

    def add(self, event: Event, line: int, received_at: datetime) -> int:
        ts = event.occurred_at
        key = (event.type, ts.date().isoformat(), f"{ts.hour:02d}")
        part = self._part(key)
        rows = event_rows(event, self.source_ref, line, received_at)
        part.rows.extend(rows)
        self._buffered += len(rows) * ROW_BYTES_ESTIMATE
        if self._buffered >= FLUSH_BYTES:
            self.flush()
        return len(rows)

    def add_table(self, type_: str, day: str, hour: str, table: pa.Table) -> None:
        """Rows already in the table's schema (the columnar path)."""
        self._part((type_, day, hour)).tables.append(table)
        self._buffered += table.nbytes
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def _part(self, key: tuple[str, str, str]) -> _PartitionFile:
        part = self._files.get(key)
        if part is None:
            path = self.scratch / f"{len(self._files):05d}.parquet"
            part = self._files[key] = _PartitionFile(*key, path=path)
        return part

    def _write(self, part: _PartitionFile, table: pa.Table) -> None:
        if part.writer is None:
            schema = SPECS[part.type].schema
            metadata = {
                **(schema.metadata or {}),
                b"sluice.source_ref": self.source_ref.encode(),
                b"sluice.parser_version": PARSER_VERSION.encode(),
            }
            part.writer = pq.ParquetWriter(
                part.path,
                schema.with_metadata(metadata),
                use_dictionary=dictionary_columns(schema),
                write_statistics=statistics_columns(schema),
                **PARQUET_OPTIONS,
            )
        part.writer.write_table(table, row_group_size=table.num_rows)
        part.written += table.num_rows

    def flush(self) -> None:
        """Write every partition's buffered rows as one row group."""
        for part in self._files.values():
            if not part.rows and not part.tables:
                continue
            schema = SPECS[part.type].schema
            if part.rows:
                columns = list(zip(*part.rows, strict=True))
                arrays = [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)]
                part.tables.append(pa.Table.from_arrays(arrays, schema=schema))
            self._write(part, pa.concat_tables(part.tables))
            part.rows = []
            part.tables = []
        self._buffered = 0

    def close(self) -> list[tuple[Output, Path]]:
        """Flush and close every file; returns the outputs to publish with their scratch paths."""
        self.flush()
        out = []
        for part in self._files.values():
            if part.writer is not None:
                part.writer.close()
                part.writer = None
            out.append((self.output(part), part.path))
        return out

    def abort(self) -> None:
        for part in self._files.values():
            if part.writer is not None:
                part.writer.close()
                part.writer = None

    def output(self, part: _PartitionFile) -> Output:
        return Output(
            bucket=self.bucket,
            key=verified_key(self.source_ref, part.type, part.day, part.hour),
            table=table_name(part.type),
            day=part.day,
            hour=part.hour,
            rows=part.written,
        )


def stale_uris(previous: Iterable[str], current: Iterable[str]) -> list[str]:
    """URIs a source produced before (or was about to) that it no longer produces."""
    keep = set(current)
    return sorted({uri for uri in previous if uri not in keep})
