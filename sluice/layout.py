"""Every key of DESIGN §3, built and parsed in one place.

Keys are the same on every backend. A verified file's key is a pure function of
(source raw object, table, day, hour): that is what makes reprocessing replace outputs in place
instead of doubling them.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sluice.errors import InvalidKey

TYPES: tuple[str, ...] = ("lock", "bridge", "video_doorbell")
ALL_TYPES: tuple[str, ...] = (*TYPES, "otlp_logs")

RAW_TELEMETRY_PREFIX = "raw/json_telemetry/"
RAW_OTLP_PREFIX = "raw/otlp_logs/"
VERIFIED_PREFIX = "telemetry_flat/"
QUARANTINE_PREFIX = "quarantine/"

_RAW_NAME = re.compile(r"(?P<ts>\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})-[0-9a-fA-F-]+\.gz$")
_VERIFIED_KEY = re.compile(
    r"^telemetry_flat/type=(?P<type>[a-z_]+)/day=(?P<day>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<name>[^/]+\.parquet)$"
)


@dataclass(frozen=True, order=True)
class ObjectUri:
    """An object named by bucket and key; written `s3://bucket/key` on every backend."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_uri(uri: str) -> ObjectUri:
    """Parse `s3://bucket/key` (the key may be empty for a bucket or prefix URI).

    Raises:
        InvalidKey: the text is not an s3:// URI with a bucket.
    """
    if not uri.startswith("s3://"):
        raise InvalidKey(f"not an s3:// URI: {uri!r}", hint="write objects as s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise InvalidKey(f"URI has no bucket: {uri!r}", hint="write objects as s3://bucket/key")
    return ObjectUri(bucket, key)


def table_name(type_: str) -> str:
    return f"telemetry_{type_}_flat"


def type_of_table(table: str) -> str:
    if not (table.startswith("telemetry_") and table.endswith("_flat")):
        raise InvalidKey(f"not a verified table: {table!r}")
    return table[len("telemetry_") : -len("_flat")]


def source_hash(source_uri: str) -> str:
    """First 16 hex digits of sha256 of the source URI."""
    return hashlib.sha256(source_uri.encode()).hexdigest()[:16]


def raw_key(arrived_at: datetime, *, stream: str = "ingest", kind: str = "json_telemetry") -> str:
    """Key of a new raw object, partitioned by arrival time (UTC)."""
    t = arrived_at.astimezone(UTC)
    return (
        f"raw/{kind}/year={t:%Y}/month={t:%m}/day={t:%d}/hour={t:%H}/"
        f"{stream}-{t:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.gz"
    )


def arrival_time_from_key(key: str) -> datetime | None:
    """The flush time written into a raw object's name, or None for a name not in the layout."""
    m = _RAW_NAME.search(key)
    if not m:
        return None
    return datetime.strptime(m["ts"], "%Y-%m-%d-%H-%M-%S").replace(tzinfo=UTC)


def table_prefix(type_: str) -> str:
    return f"{VERIFIED_PREFIX}type={type_}/"


def partition_prefix(type_: str, day: str, hour: str | None = None) -> str:
    prefix = f"{table_prefix(type_)}day={day}/"
    return prefix if hour is None else f"{prefix}hour={hour}/"


def verified_key(source_uri: str, type_: str, day: str, hour: str) -> str:
    return f"{partition_prefix(type_, day, hour)}{source_hash(source_uri)}.parquet"


@dataclass(frozen=True)
class VerifiedKey:
    type: str
    day: str
    hour: str
    name: str

    @property
    def table(self) -> str:
        return table_name(self.type)


def parse_verified_key(key: str) -> VerifiedKey | None:
    m = _VERIFIED_KEY.match(key)
    if not m:
        return None
    return VerifiedKey(m["type"], m["day"], m["hour"], m["name"])


def quarantine_key(source_uri: str, day: str, kind: str = "json_telemetry") -> str:
    return f"{QUARANTINE_PREFIX}{kind}/day={day}/{source_hash(source_uri)}.jsonl.gz"


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_day(text: str) -> str:
    """A UTC day written YYYY-MM-DD, a real date (days go into keys and SQL).

    Raises:
        ConfigError: anything else.
    """
    from sluice.errors import ConfigError

    if _DAY.fullmatch(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            pass
    raise ConfigError(
        f"not a day: {text!r} (write days as YYYY-MM-DD)", hint="e.g. 2025-11-24 (UTC)", day=text
    )


def check_type(type_: str) -> str:
    """A type with a verified table.

    Raises:
        ConfigError: any other.
    """
    from sluice.errors import ConfigError

    if type_ not in TYPES:
        raise ConfigError(
            f"unknown type {type_!r}", hint=f"use one of: {', '.join(TYPES)}", type=type_
        )
    return type_
