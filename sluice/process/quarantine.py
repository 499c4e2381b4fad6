"""Quarantine: every rejected line with its reason, source and line number (promise 4).

One gzip JSONL file per source object and day. Each record holds the raw line as text, or as
base64 when it is not valid UTF-8, so nothing about the line is lost.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from sluice.backends.ledger.base import Output
from sluice.gzipio import gzip_writer
from sluice.layout import quarantine_key
from sluice.process.lines import RawLine

QUARANTINE_TABLE = "quarantine"
# An overlong line is quarantined with its first bytes only; the raw object keeps all of it.
KEPT_PREFIX_BYTES = 64 * 1024

_encode = msgspec.json.Encoder().encode


def quarantine_record(line: RawLine, code: str, reason: str, source_ref: str) -> dict[str, Any]:
    data = line.data[:KEPT_PREFIX_BYTES] if line.truncated or code == "line_too_long" else line.data
    record: dict[str, Any] = {
        "source_ref": source_ref,
        "line": line.number,
        "reason_code": code,
        "reason": reason,
        "bytes": line.size,
    }
    try:
        record["raw"] = data.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_b64"] = base64.b64encode(data).decode()
    if len(data) < line.size:
        record["raw_truncated"] = True
    return record


class QuarantineWriter:
    def __init__(self, path: Path, source_ref: str, bucket: str, day: str) -> None:
        self.path = path
        self.source_ref = source_ref
        self.bucket = bucket
        self.day = day
        self.reasons: Counter[str] = Counter()
        self._file: BinaryIO | None = None
        self.count = 0

    def add(self, line: RawLine, code: str, reason: str) -> None:
        if self._file is None:
            self._file = gzip_writer(self.path)
        self._file.write(_encode(quarantine_record(line, code, reason, self.source_ref)) + b"\n")
        self.reasons[code] += 1
        self.count += 1

    def close(self) -> list[tuple[Output, Path]]:
        if self._file is None:
            return []
        self._file.close()
        self._file = None
        output = Output(
            bucket=self.bucket,
            key=quarantine_key(self.source_ref, self.day),
            table=QUARANTINE_TABLE,
            day=self.day,
            hour="",
            rows=self.count,
        )
        return [(output, self.path)]

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
