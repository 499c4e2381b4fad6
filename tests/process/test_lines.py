"""Streaming lines out of gzip: chunk boundaries, long lines, CRLF, BOM, bad gzip."""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.errors import CorruptObject
from sluice.process import lines as lines_module
from sluice.process.lines import iter_lines

LIMIT = 64  # a small line limit so that long lines are cheap to make


def reference(data: bytes) -> list[tuple[int, bytes, int]]:
    """What iter_lines must give, computed the simple way on the whole text."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out = []
    for number, raw in enumerate(parts, start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        size = len(raw) - (len(raw) - len(line))
        out.append((number, line[: LIMIT + 1], size))
    return out


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
            st.integers(min_value=LIMIT - 2, max_value=LIMIT * 4).map(lambda n: b"x" * n),
            st.just(b"\xef\xbb\xbf{}"),
            st.just(b"{}\r"),
            st.integers(min_value=LIMIT - 2, max_value=LIMIT * 2).map(lambda n: b"y" * n + b"\r"),
            st.just(b"\r"),
        ),
        max_size=30,
    ),
    trailing_newline=st.booleans(),
    chunk=st.integers(min_value=1, max_value=LIMIT * 5),  # below and above a line's limit
)
def test_lines_match_a_plain_split_whatever_the_chunking(
    lines: list[bytes], trailing_newline: bool, chunk: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(lines_module, "CHUNK_BYTES", chunk)
        m.setattr(lines_module, "MAX_LINE_BYTES", LIMIT)
        got = [
            (line.number, line.data, line.size)
            for line in iter_lines(io.BytesIO(gzip.compress(data)), "s3://raw/x.gz")
        ]
    assert got == reference(data)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", "zero-byte"),
        (b"plain text\n", "not gzip"),
        (gzip.compress(b"x" * 100_000)[:40], "truncated"),
    ],
)
def test_unreadable_streams_are_terminal(data: bytes, text: str) -> None:
    with pytest.raises(CorruptObject, match=text):
        list(iter_lines(io.BytesIO(data), "s3://raw/x.gz"))
