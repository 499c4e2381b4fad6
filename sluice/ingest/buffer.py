"""NDJSON in → gzip JSONL raw objects of bounded size → one `process_raw_file` message each.

Raw stays faithful: every input line reaches a raw object byte for byte, whatever it holds
(invalid JSON, non-UTF-8, CRLF ends, a BOM). Validation is the parser's job, so a parser fixed
tomorrow can recover what today's quarantined. An object is acknowledged (receipt recorded,
message sent) only after the store has made it durable.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sluice.backends.ledger.base import Receipt
from sluice.backends.queue.base import MAX_BATCH, OutgoingMessage
from sluice.env import Env
from sluice.errors import ConfigError, TransientError
from sluice.gzipio import gzip_writer
from sluice.layout import ObjectUri, raw_key
from sluice.messages import process_raw_file

READ_BYTES = 1024 * 1024


@dataclass
class IngestResult:
    inputs: int = 0
    lines: int = 0
    bytes: int = 0
    objects: list[str] = field(default_factory=list)
    messages_sent: int = 0


class RawObjectWriter:
    """Writes lines to gzip raw objects, closing one when it reaches `max_bytes` uncompressed."""

    def __init__(
        self,
        env: Env,
        *,
        stream: str = "ingest",
        max_bytes: int | None = None,
        on_object: Callable[[str], None] | None = None,
    ) -> None:
        self.env = env
        self.stream = stream
        self.max_bytes = max_bytes or env.config.raw_object_max_bytes
        self.on_object = on_object
        self.result = IngestResult()
        self._scratch = tempfile.TemporaryDirectory(prefix="sluice-ingest-")
        self._gz: BinaryIO | None = None
        self._path = Path(self._scratch.name) / "object.gz"
        self._lines = 0
        self._bytes = 0
        self._at_line_start = True
        self._outbox: list[OutgoingMessage] = []

    def write(self, piece: bytes) -> None:
        """Write part of a line, or a whole line ending in b"\\n"."""
        if not piece:
            return
        if self._at_line_start and self._bytes >= self.max_bytes:
            self._close_object()
        if self._gz is None:
            self._gz = gzip_writer(self._path)
        self._gz.write(piece)
        self._bytes += len(piece)
        self.result.bytes += len(piece)
        self._at_line_start = piece.endswith(b"\n")
        if self._at_line_start:
            self._lines += 1
            self.result.lines += 1

    def end_line(self) -> None:
        """End an input whose last line had no line end."""
        if not self._at_line_start:
            self.write(b"\n")

    def _close_object(self) -> None:
        if self._gz is None:
            return
        self._gz.close()
        self._gz = None
        arrived = datetime.now(UTC)
        uri = ObjectUri(self.env.config.buckets.raw, raw_key(arrived, stream=self.stream))
        info = self.env.store.put_file(uri.bucket, uri.key, self._path)
        self.env.ledger.record_receipt(
            Receipt(uri.bucket, uri.key, self._lines, self._bytes, arrived)
        )
        self._outbox.append(process_raw_file(uri))
        self.result.objects.append(info.uri)
        self._lines = self._bytes = 0
        if len(self._outbox) >= MAX_BATCH:
            self._send()
        if self.on_object is not None:
            self.on_object(str(uri))

    def _send(self) -> None:
        if not self._outbox:
            return
        sent = self.env.processing_queue.send_batch(self._outbox)
        if sent.failed:
            raise TransientError(
                f"{len(sent.failed)} process_raw_file message(s) not sent: {sent.failed}",
                hint="the objects are stored; `sluice catalog reconcile` (or a redrive) will "
                "enqueue them",
            )
        self.result.messages_sent += len(sent.sent)
        self._outbox = []

    def close(self) -> IngestResult:
        self._close_object()
        self._send()
        self._scratch.cleanup()
        return self.result


def _pieces(stream: BinaryIO) -> Iterator[bytes]:
    """Lines of a binary stream, a long line in pieces of at most READ_BYTES."""
    while piece := stream.readline(READ_BYTES):
        yield piece


def check_inputs(paths: Iterable[str | Path]) -> list[str]:
    """The inputs, once each is known to be a readable file (or `-`).

    Raises:
        ConfigError: no inputs, or one is missing or not a file.
    """
    inputs = [str(p) for p in paths]
    if not inputs:
        raise ConfigError("no input files", hint="sluice ingest FILE… (or - for standard input)")
    for name in inputs:
        if name != "-" and not Path(name).is_file():
            raise ConfigError(f"input {name} does not exist or is not a file")
    return inputs


def ingest_files(
    env: Env,
    paths: Iterable[str | Path],
    *,
    stream: str = "ingest",
    max_object_bytes: int | None = None,
    on_object: Callable[[str], None] | None = None,
) -> IngestResult:
    """Send NDJSON files (`-` is standard input) through the ingest path without HTTP.

    Raises:
        ConfigError: an input is missing or not a file (checked before anything is written).
    """
    inputs = check_inputs(paths)
    writer = RawObjectWriter(env, stream=stream, max_bytes=max_object_bytes, on_object=on_object)
    for name in inputs:
        if name == "-":
            _copy(sys.stdin.buffer, writer)
        else:
            with open(name, "rb") as f:
                _copy(f, writer)
        writer.result.inputs += 1
    return writer.close()


def _copy(source: BinaryIO, writer: RawObjectWriter) -> None:
    for piece in _pieces(source):
        writer.write(piece)
    writer.end_line()
