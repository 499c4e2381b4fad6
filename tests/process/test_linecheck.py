"""The compiled line checker (`_linecheck.c`): it may only vouch for lines `fast_check` passes
without unknown fields, it must vouch for the common ones, and it reads nothing outside a line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.process import linecheck
from sluice.process._linecheck import LineChecker
from sluice.process.linecheck import check_lines, line_checker
from sluice.process.parse import MAX_LINE_BYTES, fast_check
from tests.conftest import make_event

_CHECKER = line_checker()
assert _CHECKER is not None, "the install did not build sluice/process/_linecheck.c"
CHECKER: LineChecker = _CHECKER


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def vouched(line: bytes) -> bool:
    verdict = CHECKER.check([line])[0]
    assert verdict in (True, None)
    return verdict is True


VALID = compact(
    make_event("e-9", assertions=2, battery_pct=81, lock_state="locked", auto_lock_enabled=True)
)


@pytest.mark.parametrize(
    "line",
    [
        VALID,
        json.dumps(json.loads(VALID)).encode(),  # spaced
        b"  \t" + VALID + b" ",
        compact(make_event(assertions=0)),
        compact({"envelope": make_event()["envelope"]}),  # no payload
        compact({**make_event(), "payload": None}),
        compact(make_event(assertions=0, assertions_=None)).replace(b"assertions_", b"assertions"),
        compact(make_event("b", "bridge", uptime_s=999_999_999_999_999_999, cpu_pct=-0.5)),
        compact(make_event("d", "video_doorbell", video_bitrate_kbps=123456789.012345)),
        compact(make_event(battery_pct=-(2**31), rssi_dbm=2**31 - 1, door_state=None)),
        compact(make_event(occurred_at="not a time")),  # occurred_at is checked a column at a time
    ],
)
def test_common_lines_are_vouched_for(line: bytes) -> None:
    assert fast_check(line) is True
    assert vouched(line)


def _envelope_with(**changes: Any) -> bytes:
    event = make_event()
    event["envelope"].update(changes)
    return compact(event)


def _payload_with(type_: str = "lock", **changes: Any) -> bytes:
    event = make_event(type_=type_)
    event["payload"].update(changes)
    return compact(event)


@pytest.mark.parametrize(
    "line",
    [
        # Left to Python though valid: escapes, non-ASCII, exponents, long numbers, a float
        # where an integer belongs, whitespace other than spaces and tabs.
        _envelope_with(device_id="dev\\n1"),
        _envelope_with(device_id="dév"),
        _payload_with("bridge", cpu_pct=1e-7),
        _payload_with("bridge", cpu_pct=0.1234567890123456),
        _payload_with("bridge", uptime_s=10**18),
        _payload_with(battery_pct=81.0),
        VALID.replace(b",", b",\r", 1),
        VALID.replace(b",", b",\n", 1),
        # Refused by the rules or with unknown fields: Python decides and explains.
        _envelope_with(device_id=""),
        _envelope_with(device_id=None),
        _envelope_with(device_id=7),
        _envelope_with(type="toaster"),
        _envelope_with(occurred_at=None),
        _envelope_with(schema_version="1"),
        _envelope_with(schema_version=None),
        _envelope_with(region="eu"),
        _payload_with(battery_pct=2**31),
        _payload_with(battery_pct=-(2**31) - 1),
        _payload_with(battery_pct="81"),
        _payload_with(auto_lock_enabled=1),
        _payload_with(lock_state=["locked"]),
        _payload_with(uptime_s=5),  # another type's field
        _payload_with(uptime_s=None),  # present, though null: still unknown to a lock
        _payload_with(debug_note="x"),
        _payload_with(assertions={"component_name": "x"}),
        _payload_with(assertions=[None]),
        _payload_with(assertions=[{"component_name": "x", "unit": "V"}]),
        _payload_with(assertions=[{"passed": "yes"}]),
        compact({**make_event(), "meta": 1}),
        compact({"payload": {}}),
        compact({**make_event(), "payload": []}),
        compact({**make_event(), "envelope": None}),
        VALID.replace(b'"device_id":"dev-1"', b'"device_id":"dev-1","device_id":"dev-2"'),
        VALID.replace(b'"battery_pct":81', b'"battery_pct":081'),
        VALID.replace(b'"battery_pct":81', b'"battery_pct":-'),
        VALID.replace(b'"battery_pct":81', b'"battery_pct":81.'),
        VALID.replace(b'"battery_pct":81', b'"battery_pct":tru'),
        VALID.replace(b"true", b"True", 1),
        VALID.replace(b"}", b",}", 1),
        VALID + b"}",
        VALID + b"x",
        VALID[:-1],
        b"[" + VALID + b"]",
        b"",
        b"\xef\xbb\xbf" + VALID,
        b"\x00" * 64,
        VALID.replace(b"dev-1", b"dev\x00").replace(b"e-9", b"e\xff"),
    ],
)
def test_unusual_or_bad_lines_are_left_to_python(line: bytes) -> None:
    assert not vouched(line)
    assert check_lines([line]) == [fast_check(line)]


@pytest.mark.parametrize("byte", [b"\\", b'"', b"\x00", b"\x1f", b"\x80", b"\xff"])
def test_a_special_byte_anywhere_in_a_string_is_seen(byte: bytes) -> None:
    # Strings are scanned 8 bytes at a time: the byte must be seen at every place in a word.
    for at in range(20):
        device = b"d" * at + byte + b"d" * (19 - at)
        line = VALID.replace(b'"dev-1"', b'"' + device + b'"')
        assert not vouched(line), line
    plain = VALID.replace(b'"dev-1"', b'"' + bytes(range(0x20, 0x80)).replace(b'"', b"") + b'"')
    assert plain.count(b"\\") == 1 and vouched(plain.replace(b"\\", b"")) and not vouched(plain)


def test_a_line_over_the_limit_is_left_to_python() -> None:
    padded = VALID.replace(b'"e-9"', b'"' + b"e" * MAX_LINE_BYTES + b'"')
    assert not vouched(padded)


def test_every_cut_of_a_line_is_left_to_python() -> None:
    # The checker meets the end of the bytes at every possible point of a line.
    spaced = json.dumps(json.loads(VALID)).encode()
    for whole in (VALID, spaced):
        cuts = [whole[:n] for n in range(len(whole))]
        assert CHECKER.check(cuts) == [None] * len(cuts)


def test_check_lines_keeps_the_order_and_asks_python_only_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = [VALID, b"", _payload_with(debug_note="x"), b"{", VALID]
    asked: list[bytes] = []

    def counted(line: bytes) -> Any:
        asked.append(line)
        return fast_check(line)

    monkeypatch.setattr(linecheck, "fast_check", counted)
    assert check_lines(lines) == [fast_check(x) for x in lines]
    assert asked == lines[1:4]
    monkeypatch.setattr(linecheck, "LINE_CHECKER", None)  # an install without the compiled module
    assert check_lines(lines) == [fast_check(x) for x in lines]


def test_wrong_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="list of bytes"):
        CHECKER.check((VALID,))
    with pytest.raises(TypeError, match="line 1 is str"):
        CHECKER.check([VALID, "text"])
    base: dict[str, Any] = {
        "top": [("envelope", "E", True, False)],
        "envelope": [("type", "T", True, False)],
        "payload": [("n", "i", False, True)],
        "assertion": [],
        "types": [("lock", ["n"])],
        "max_line": 100,
    }
    assert LineChecker(**base).check([b'{"envelope":{"type":"lock"}}']) == [True]
    bad: list[tuple[str, Any, str]] = [
        ("envelope", [("type", "?", True, False)], "unknown kind"),
        ("assertion", [("nested", "A", False, True)], "does not belong at this level"),
        ("top", [("envelope", "s", True, False)], "does not belong at this level"),
        ("envelope", [("", "s", True, False)], "empty or longer"),
        ("envelope", [("x" * 60, "s", True, False)], "empty or longer"),
        ("envelope", [(f"f{i}", "s", True, False) for i in range(49)], "at most 48 fields"),
        ("envelope", [("type", "T")], "field: \\(name, kind, required, nullable\\)"),
        ("types", [("lock", ["nope"])], "not a payload field"),
        ("types", [(f"t{i}", []) for i in range(17)], "at most 16 types"),
        ("types", [("lock", [1])], "str"),
    ]
    for name, value, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            LineChecker(**{**base, name: value})


# Soundness, by property: whatever the bytes, the checker vouches only for what fast_check
# passes without unknown fields (test_parse holds it to that on mutated events too). ----------

JSON_BYTES = st.sampled_from([*b' \t\r\n"\\{}[]:,-+.eE0159tfnulx', 0, 0x7F, 0xC3, 0xFF])


@settings(max_examples=1500, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.floats(0, 1), JSON_BYTES),
        min_size=1,
        max_size=4,
    )
)
def test_vouched_lines_pass_fast_check_whatever_the_bytes(
    edits: list[tuple[str, float, int]],
) -> None:
    data = bytearray(VALID)
    for op, where, byte in edits:
        at = min(int(where * len(data)), len(data) - 1)
        if op == "insert":
            data.insert(at, byte)
        elif op == "delete":
            del data[at]
        else:
            data[at] = byte
    line = bytes(data)
    if vouched(line):
        assert fast_check(line) is True
