"""Stream the lines of a gzip JSONL raw object with bounded memory.

A line is never held whole past MAX_LINE_BYTES: the rest of an overlong line is counted and
skipped, and the line is reported truncated (the raw object keeps every byte of it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sluice.errors import CorruptObject, TransientError
from sluice.gzipio import CORRUPT_GZIP_ERRORS, gzip_reader
from sluice.process.parse import BOM, MAX_LINE_BYTES

CHUNK_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class RawLine:
    number: int  # 1-based
    data: bytes  # without the line end; at most MAX_LINE_BYTES + 1 bytes
    size: int  # the line's true length in bytes

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


class _MagicCheck(io.RawIOBase):
    """Reads the first bytes to tell a gzip stream from anything else before decoding."""

    def __init__(self, stream: BinaryIO, uri: str) -> None:
        super().__init__()
        head = stream.read(2)
        if not head:
            raise CorruptObject(
                f"{uri} is a zero-byte object, not a gzip stream (was the upload cut off?)",
                source_ref=uri,
            )
        if head != GZIP_MAGIC:
            raise CorruptObject(
                f"{uri} is not gzip (starts with {head!r}); raw objects must be gzip JSONL",
                source_ref=uri,
            )
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = len(self._head)
            view[:n] = self._head
            self._head = b""
            return n
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _decompressed_chunks(stream: BinaryIO, uri: str) -> Iterator[bytes]:
    gz = gzip_reader(io.BufferedReader(_MagicCheck(stream, uri)))
    try:
        while chunk := gz.read(CHUNK_BYTES):
            yield chunk
    except EOFError as exc:
        raise CorruptObject(f"{uri}: truncated gzip: {exc}", source_ref=uri) from exc
    except CORRUPT_GZIP_ERRORS as exc:
        raise CorruptObject(f"{uri}: corrupt gzip: {exc}", source_ref=uri) from exc
    except OSError as exc:
        raise TransientError(f"{uri}: read failed: {exc}", source_ref=uri) from exc


def _line(data: bytes, number: int, size: int) -> RawLine:
    """A finished line: CR of a CRLF end and (on line 1) a UTF-8 BOM removed."""
    cut = 0
    if data[-1:] == b"\r":
        data = data[:-1]
        cut = 1
    if number == 1 and data.startswith(BOM):
        data = data[len(BOM) :]
        cut += len(BOM)
    return RawLine(number, data, size - cut)


def iter_lines(stream: BinaryIO, uri: str) -> Iterator[RawLine]:
    """Lines of a gzip JSONL stream: CRLF ends and a leading UTF-8 BOM removed.

    Raises:
        CorruptObject: zero bytes, not gzip, corrupt or truncated gzip (terminal).
        TransientError: the underlying read failed.
    """
    keep = MAX_LINE_BYTES + 1  # enough to know a line is too long, and to quarantine its start
    number = 0
    pending = b""  # the start of a line that continues in the next chunk (at most `keep` bytes)
    pending_size = 0  # its true size so far
    for chunk in _decompressed_chunks(stream, uri):
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            if len(pending) < keep:
                pending += chunk[: keep - len(pending)]
            pending_size += len(chunk)
            continue
        first = parts[0]
        if pending_size:
            number += 1
            size = pending_size + len(first)
            yield _line((pending + first[: keep - len(pending)])[:keep], number, size)
        else:
            number += 1
            yield _line(first[:keep], number, len(first))
        for middle in parts[1:-1]:
            number += 1
            yield _line(middle if len(middle) <= keep else middle[:keep], number, len(middle))
        last = parts[-1]
        pending, pending_size = last[:keep], len(last)
    if pending_size:
        number += 1
        yield _line(pending, number, pending_size)
