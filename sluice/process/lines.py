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


@dataclass(frozen=True, slots=True)
class LineBlock:
    """The lines of one decompressed chunk: the unit the parser loops over."""

    first: int  # the number of lines[0]
    lines: list[bytes]  # line ends, CRs and a leading BOM removed; long lines cut (see RawLine)
    sizes: dict[int, int]  # the true size of each cut line, by its index in `lines`

    def raw(self, index: int) -> RawLine:
        data = self.lines[index]
        return RawLine(self.first + index, data, self.sizes.get(index, len(data)))


def iter_line_blocks(stream: BinaryIO, uri: str) -> Iterator[LineBlock]:
    """The lines of a gzip JSONL stream, a decompressed chunk at a time: CRLF ends and a leading
    UTF-8 BOM removed, a line longer than MAX_LINE_BYTES cut after MAX_LINE_BYTES + 1 bytes.

    Raises:
        CorruptObject: zero bytes, not gzip, corrupt or truncated gzip (terminal).
        TransientError: the underlying read failed.
    """
    keep = MAX_LINE_BYTES + 1  # enough to know a line is too long, and to quarantine its start
    done = 0  # lines yielded so far
    pending = b""  # the start of a line that continues in the next chunk (at most `keep` bytes)
    pending_size = 0  # its true size so far
    pending_cr = False  # whether its last byte so far is a CR
    for chunk in _decompressed_chunks(stream, uri):
        parts = chunk.split(b"\n")
        last = parts.pop()
        if not parts:  # no line ends in this chunk
            if len(pending) < keep:
                pending += chunk[: keep - len(pending)]
            pending_size += len(chunk)
            pending_cr = chunk.endswith(b"\r")
            continue
        cut: dict[int, tuple[int, bool]] = {}  # index -> (true size, true end is a CR)
        if pending_size:
            first = parts[0]
            parts[0], cut_first = _join(pending, pending_size, pending_cr, first, keep)
            if cut_first is not None:
                cut[0] = cut_first
        if len(chunk) > keep:
            for i, part in enumerate(parts):
                if len(part) > keep and i not in cut:
                    cut[i] = (len(part), part.endswith(b"\r"))
                    parts[i] = part[:keep]
        crs = b"\r" in chunk or (pending_size > 0 and pending_cr)
        yield _block(done + 1, parts, cut, crs)
        done += len(parts)
        pending, pending_size, pending_cr = last[:keep], len(last), last.endswith(b"\r")
    if pending_size:
        data, cut_last = _join(pending, pending_size, pending_cr, b"", keep)
        yield _block(done + 1, [data], {} if cut_last is None else {0: cut_last}, pending_cr)


def _join(
    pending: bytes, pending_size: int, pending_cr: bool, rest: bytes, keep: int
) -> tuple[bytes, tuple[int, bool] | None]:
    """A line read over several chunks: its kept bytes, and (true size, ends with CR) if cut."""
    size = pending_size + len(rest)
    data = (pending + rest[: keep - len(pending)])[:keep]
    if size <= keep:
        return data, None
    return data, (size, rest.endswith(b"\r") if rest else pending_cr)


def _block(
    first: int, parts: list[bytes], cut: dict[int, tuple[int, bool]], crs: bool
) -> LineBlock:
    """The block with CRs of CRLF ends and (on line 1) a UTF-8 BOM removed from its lines."""
    sizes = {i: size - cr for i, (size, cr) in cut.items()}
    if crs:
        for i, part in enumerate(parts):
            if i not in cut and part.endswith(b"\r"):
                parts[i] = part[:-1]
    if first == 1 and parts[0].startswith(BOM):
        parts[0] = parts[0][len(BOM) :]
        if 0 in sizes:
            sizes[0] -= len(BOM)
    return LineBlock(first, parts, sizes)


def iter_lines(stream: BinaryIO, uri: str) -> Iterator[RawLine]:
    """Lines of a gzip JSONL stream, one at a time (see `iter_line_blocks`).

    Raises:
        CorruptObject: zero bytes, not gzip, corrupt or truncated gzip (terminal).
        TransientError: the underlying read failed.
    """
    for block in iter_line_blocks(stream, uri):
        for index in range(len(block.lines)):
            yield block.raw(index)
