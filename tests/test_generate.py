"""The synthetic telemetry generator: its ground truth must match what it wrote.

Row counts are recounted here from the output with the standard json module, independently of
the generator's bookkeeping; one test also runs the real parser over the output as a cross-check.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from sluice.errors import ConfigError
from sluice.generate import (
    BAD_KINDS,
    HUGE_LINE,
    MAX_HUGE_LINES,
    QUARANTINE_CODES,
    GenerateResult,
    generate,
)
from sluice.layout import table_name
from sluice.process.lines import iter_lines
from sluice.process.parse import MAX_LINE_BYTES, LineRejected, decode_line, parse_event

NOW = datetime(2025, 11, 24, 21, 30, 15, 123456, tzinfo=UTC)


def run(**options: Any) -> tuple[GenerateResult, bytes]:
    out = io.BytesIO()
    result = generate(out, now=NOW, **options)
    return result, out.getvalue()


def lines_of(data: bytes) -> list[bytes]:
    assert data == b"" or data.endswith(b"\n")
    return data.split(b"\n")[:-1]


class Recount:
    """Rows of an output with only good and blank lines, counted from the JSON alone."""

    def __init__(self, data: bytes) -> None:
        self.blank = 0
        self.crlf = 0
        self.events: list[dict[str, Any]] = []
        self.rows: Counter[str] = Counter()
        self.partitions: Counter[str] = Counter()
        self.distinct: dict[str, set[tuple[str, int]]] = {}
        for line in lines_of(data):
            if not line.strip():
                self.blank += 1
                continue
            self.crlf += line.endswith(b"\r")
            event = json.loads(line)
            self.events.append(event)
            env = event["envelope"]
            table = table_name(env["type"])
            at = datetime.fromisoformat(env["occurred_at"].replace("Z", "+00:00")).astimezone(UTC)
            fan_out = max(len(event["payload"].get("assertions", [])), 1)
            self.rows[table] += fan_out
            self.partitions[f"{table}/day={at:%Y-%m-%d}/hour={at:%H}"] += fan_out
            for ordinal in range(fan_out):
                self.distinct.setdefault(table, set()).add((env["event_id"], ordinal))

    def check(self, result: GenerateResult) -> None:
        assert len(self.events) == result.good_lines
        assert self.blank == result.blank_lines
        assert {t: n for t, n in result.rows.items() if n} == dict(self.rows)
        assert result.rows_by_partition == dict(self.partitions)
        assert {t: n for t, n in result.distinct_events.items() if n} == {
            t: len(pairs) for t, pairs in self.distinct.items()
        }
        ids = Counter(e["envelope"]["event_id"] for e in self.events)
        assert sum(n - 1 for n in ids.values()) == result.resent_events


def test_same_seed_and_now_give_the_same_bytes() -> None:
    first, data = run(events=2000, seed=11)
    again, data_again = run(events=2000, seed=11)
    assert data_again == data
    assert again == first
    assert run(events=2000, seed=12)[1] != data
    later = generate(io.BytesIO(), events=2000, seed=11, now=NOW + timedelta(hours=1))
    assert later.rows_by_partition != first.rows_by_partition


def test_counts_add_up() -> None:
    result, data = run(events=5000, bad_fraction=0.05, resend_fraction=0.01)
    lines = lines_of(data)
    assert len(lines) == result.lines
    assert result.lines == result.good_lines + result.blank_lines + result.quarantined_lines
    assert result.good_lines == 5000
    assert result.resent_events == 50
    assert sum(1 for line in lines if not line.strip()) == result.blank_lines > 0
    assert abs(result.quarantined_lines - 0.05 * result.lines) <= 1
    assert sum(result.rows.values()) == sum(result.rows_by_partition.values())
    for table, rows in result.rows.items():
        assert 0 < result.distinct_events[table] < rows


def test_every_bad_kind_is_present_in_equal_measure() -> None:
    result, _ = run(events=2000, bad_fraction=0.05)
    assert list(result.bad_lines) == list(BAD_KINDS)
    assert max(result.bad_lines.values()) - min(result.bad_lines.values()) <= 1
    assert HUGE_LINE not in result.bad_lines


def test_huge_lines_are_well_formed_over_the_limit_and_capped() -> None:
    result, data = run(events=300, bad_fraction=0.2, huge_lines=True)
    assert result.bad_lines[HUGE_LINE] == MAX_HUGE_LINES
    assert set(result.bad_lines) == {*BAD_KINDS, HUGE_LINE}
    huge = [line for line in lines_of(data) if len(line) > MAX_LINE_BYTES]
    assert len(huge) == MAX_HUGE_LINES
    for line in huge:
        assert set(json.loads(line)["envelope"]) >= {"event_id", "type", "occurred_at"}


def test_tiny_output_recounted_by_hand() -> None:
    result, data = run(events=4, days=1, bad_fraction=0, resend_fraction=0)
    lines = lines_of(data)
    assert (result.lines, result.blank_lines, result.bad_lines) == (5, 1, {})
    events = [json.loads(line) for line in lines if line.strip()]
    fan_out = [max(len(e["payload"].get("assertions", [])), 1) for e in events]
    assert sum(result.rows.values()) == sum(fan_out)
    assert sum(result.distinct_events.values()) == sum(fan_out)
    Recount(data).check(result)


def test_rows_recounted_from_the_output() -> None:
    result, data = run(events=3000, days=1, bad_fraction=0, resend_fraction=0.05)
    recount = Recount(data)
    recount.check(result)
    assert result.resent_events == 150
    assert recount.crlf > 0
    assert {table_name(t) for t in ("lock", "bridge", "video_doorbell")} == set(recount.rows)
    assert len({p.split("/", 1)[1] for p in result.rows_by_partition}) == 24  # every hour
    stamps = [e["envelope"]["occurred_at"] for e in recount.events]
    assert any(not s.endswith("Z") for s in stamps)  # offsets, converted to UTC above
    assert all(len(s.split(".")[1]) in (4, 9) for s in stamps)  # milliseconds, Z or +hh:mm
    newest = max(datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stamps)
    assert newest < NOW - timedelta(hours=1)
    payloads = [e["payload"] for e in recount.events]
    assert any("debug_note" in p for p in payloads)
    assert any(p.get("assertions") == [] for p in payloads)
    assert any(len(p.get("assertions", [])) == 5 for p in payloads)


def test_the_parser_agrees_with_the_ground_truth() -> None:
    result, data = run(events=3000, bad_fraction=0.05, resend_fraction=0.02, huge_lines=True)
    codes: Counter[str] = Counter()
    good = blank = 0
    rows: Counter[str] = Counter()
    stream = io.BytesIO(gzip.compress(data, compresslevel=1))
    for line in iter_lines(stream, "s3://raw/test.gz"):
        if not line.truncated and not line.data.strip():
            blank += 1
            continue
        try:
            event = parse_event(decode_line(line.data), arrived_at=NOW)
        except LineRejected as rejected:
            codes[rejected.code] += 1
            continue
        good += 1
        at = event.occurred_at
        rows[f"{table_name(event.type)}/day={at:%Y-%m-%d}/hour={at:%H}"] += max(
            len(event.assertions), 1
        )
    assert (good, blank) == (result.good_lines, result.blank_lines)
    assert dict(codes) == result.quarantine_codes
    assert set(result.quarantine_codes) == set(QUARANTINE_CODES.values())
    assert dict(rows) == result.rows_by_partition


class CountingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.bytes += len(data)
        return len(data)


def test_streams_200k_events_without_holding_them() -> None:
    sink = CountingSink()
    progress: list[tuple[int, int]] = []
    started = time.monotonic()
    result = generate(
        cast(BinaryIO, sink),
        events=200_000,
        now=NOW,
        on_progress=lambda done: progress.append((done, sink.bytes)),
    )
    assert time.monotonic() - started < 30
    assert result.good_lines == 200_000
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] == 200_000 and len(done) > 10
    first_bytes = progress[0][1]
    assert 0 < first_bytes < sink.bytes / 10  # bytes left before the first events were counted


def test_writes_to_a_path(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    result = generate(path, events=500, now=NOW)
    streamed, data = run(events=500)
    assert result.path == str(path)
    assert streamed.path is None
    assert path.read_bytes() == data


def test_no_events_writes_an_empty_file() -> None:
    result, data = run(events=0)
    assert data == b""
    assert (result.lines, result.quarantined_lines, sum(result.rows.values())) == (0, 0, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"events": -1}, "events must be 0 or more"),
        ({"days": 0}, "days must be 1 or more"),
        ({"bad_fraction": 1.0}, r"bad_fraction must be in \[0, 1\)"),
        ({"bad_fraction": -0.1}, r"bad_fraction must be in \[0, 1\)"),
        ({"bad_fraction": float("nan")}, r"bad_fraction must be in \[0, 1\)"),
        ({"resend_fraction": 1.5}, r"resend_fraction must be in \[0, 1\)"),
        ({"days": 20_000}, "before 2000-01-01"),
    ],
    ids=["negative-events", "no-days", "all-bad", "negative-bad", "nan-bad", "resend", "too-old"],
)
def test_bad_arguments_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate(io.BytesIO(), now=NOW, **options)
