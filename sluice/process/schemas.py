"""The fixed Arrow schema of every verified table (DESIGN §4).

Every Parquet file of a table has exactly these columns, in this order, with these types, so
files written by any parser version, from any source, read as one table. Payload fields a schema
does not know go to `payload__extra` as JSON; they are never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from sluice.backends.catalog.base import TableDef
from sluice.layout import TYPES, table_name, table_prefix

PARSER_VERSION = "1.0.0"

TIMESTAMP = pa.timestamp("us", tz="UTC")


class FieldKind(StrEnum):
    STRING = "string"
    INT32 = "int32"
    INT64 = "int64"
    DOUBLE = "double"
    BOOL = "bool"


ARROW_TYPES: dict[FieldKind, pa.DataType] = {
    FieldKind.STRING: pa.string(),
    FieldKind.INT32: pa.int32(),
    FieldKind.INT64: pa.int64(),
    FieldKind.DOUBLE: pa.float64(),
    FieldKind.BOOL: pa.bool_(),
}

# Payload fields per type; anything else in a payload lands in payload__extra.
PAYLOAD_FIELDS: dict[str, dict[str, FieldKind]] = {
    "lock": {
        "battery_pct": FieldKind.INT32,
        "lock_state": FieldKind.STRING,
        "door_state": FieldKind.STRING,
        "auto_lock_enabled": FieldKind.BOOL,
        "rssi_dbm": FieldKind.INT32,
        "firmware_version": FieldKind.STRING,
    },
    "bridge": {
        "wifi_rssi_dbm": FieldKind.INT32,
        "uptime_s": FieldKind.INT64,
        "connected_devices": FieldKind.INT32,
        "cpu_pct": FieldKind.DOUBLE,
        "firmware_version": FieldKind.STRING,
    },
    "video_doorbell": {
        "battery_pct": FieldKind.INT32,
        "motion_detected": FieldKind.BOOL,
        "ring_count": FieldKind.INT32,
        "video_bitrate_kbps": FieldKind.DOUBLE,
        "wifi_rssi_dbm": FieldKind.INT32,
        "firmware_version": FieldKind.STRING,
    },
}

# Fields of one element of payload.assertions (the fan-out); other keys go to
# payload__assertion__extra.
ASSERTION_FIELDS: dict[str, FieldKind] = {
    "component_name": FieldKind.STRING,
    "passed": FieldKind.BOOL,
    "code": FieldKind.STRING,
    "measured_value": FieldKind.DOUBLE,
}

ENVELOPE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("envelope__event_id", pa.string()),
    ("envelope__type", pa.string()),
    ("envelope__event_kind", pa.string()),
    ("envelope__device_id", pa.string()),
    ("envelope__occurred_at", TIMESTAMP),
    ("envelope__schema_version", pa.int64()),
    ("envelope__batch_id", pa.string()),
    ("envelope__extra", pa.string()),
]

LINEAGE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("envelope__received_at", TIMESTAMP),
    ("envelope__source_ref", pa.string()),
    ("envelope__line", pa.int64()),
    ("envelope__ordinal", pa.int32()),
    ("envelope__parser_version", pa.string()),
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "envelope__event_id",
    "envelope__type",
    "envelope__event_kind",
    "envelope__device_id",
    "envelope__occurred_at",
    "envelope__schema_version",
    "envelope__received_at",
    "envelope__source_ref",
    "envelope__line",
    "envelope__ordinal",
    "envelope__parser_version",
)


@dataclass(frozen=True)
class TableSpec:
    type: str
    payload_fields: dict[str, FieldKind]
    schema: pa.Schema

    @property
    def table(self) -> str:
        return table_name(self.type)


def _payload_columns(fields: dict[str, FieldKind]) -> list[tuple[str, pa.DataType]]:
    cols = [(f"payload__{name}", ARROW_TYPES[kind]) for name, kind in fields.items()]
    cols += [(f"payload__assertion__{n}", ARROW_TYPES[k]) for n, k in ASSERTION_FIELDS.items()]
    cols += [("payload__assertion__extra", pa.string()), ("payload__extra", pa.string())]
    return cols


def _schema(type_: str) -> pa.Schema:
    columns = ENVELOPE_COLUMNS + _payload_columns(PAYLOAD_FIELDS[type_]) + LINEAGE_COLUMNS
    required = set(REQUIRED_COLUMNS)
    return pa.schema(
        [pa.field(name, dtype, nullable=name not in required) for name, dtype in columns],
        metadata={"sluice.type": type_, "sluice.parser_version": PARSER_VERSION},
    )


SPECS: dict[str, TableSpec] = {t: TableSpec(t, PAYLOAD_FIELDS[t], _schema(t)) for t in TYPES}


def verified_table_defs(verified_bucket: str) -> list[TableDef]:
    return [
        TableDef(
            name=spec.table,
            location=f"s3://{verified_bucket}/{table_prefix(spec.type)}",
            schema=spec.schema,
            partition_keys=("day", "hour"),
        )
        for spec in SPECS.values()
    ]
