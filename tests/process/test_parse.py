"""Line validation and flattening: every rule of DESIGN §4 with its bad inputs."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.process.outputs import event_rows
from sluice.process.parse import Event, LineRejected, decode_line, parse_event, parse_timestamp
from sluice.process.schemas import ASSERTION_FIELDS, SPECS

ARRIVED = datetime(2025, 11, 25, 0, 0, tzinfo=UTC)
SOURCE = "s3://raw/raw/json_telemetry/x.gz"


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "envelope": {
            "event_id": "e-1",
            "type": "lock",
            "event_kind": "assertion",
            "device_id": "dev-1",
            "occurred_at": "2025-11-24T21:09:35.120Z",
            "schema_version": 1,
            "batch_id": "b-1",
        },
        "payload": {
            "battery_pct": 81,
            "assertions": [
                {"component_name": "motor", "passed": True},
                {"component_name": "latch", "passed": False, "code": "E2"},
            ],
        },
    }
    for path, value in changes.items():
        section, _, name = path.partition("__")
        if value is ...:
            base[section].pop(name, None)
        else:
            base[section][name] = value
    return base


def parse(obj: Any) -> Any:
    return parse_event(decode_line(json.dumps(obj).encode()), ARRIVED)


def rejected(obj: Any) -> LineRejected:
    with pytest.raises(LineRejected) as info:
        parse(obj)
    return info.value


def test_good_event_flattens_and_fans_out() -> None:
    ev = parse(event())
    rows = event_rows(ev, SOURCE, 7, ARRIVED)
    names = SPECS["lock"].schema.names
    assert len(rows) == 2
    first, second = (dict(zip(names, row, strict=True)) for row in rows)
    assert first["envelope__event_id"] == "e-1"
    assert first["envelope__occurred_at"] == datetime(2025, 11, 24, 21, 9, 35, 120000, tzinfo=UTC)
    assert first["payload__battery_pct"] == 81
    assert (first["payload__assertion__component_name"], first["envelope__ordinal"]) == ("motor", 0)
    assert (second["payload__assertion__component_name"], second["envelope__ordinal"]) == (
        "latch",
        1,
    )
    assert second["payload__assertion__code"] == "E2"
    assert first["envelope__source_ref"] == SOURCE and first["envelope__line"] == 7
    assert first["envelope__received_at"] == ARRIVED
    assert first["payload__extra"] is None


@pytest.mark.parametrize("assertions", [None, [], ...])
def test_event_without_assertions_is_one_row(assertions: Any) -> None:
    rows = event_rows(parse(event(payload__assertions=assertions)), SOURCE, 1, ARRIVED)
    assert len(rows) == 1
    row = dict(zip(SPECS["lock"].schema.names, rows[0], strict=True))
    assert row["envelope__ordinal"] == 0 and row["payload__assertion__component_name"] is None


def test_unknown_fields_are_kept_as_json() -> None:
    obj = event(payload__firmware_blob={"x": [1, 2]}, envelope__trace="t")
    obj["payload"]["assertions"][0]["voltage"] = 3.3
    obj["sidecar"] = True
    ev = parse(obj)
    assert json.loads(ev.payload_extra or "") == {"firmware_blob": {"x": [1, 2]}, "$.sidecar": True}
    assert json.loads(ev.envelope_extra or "") == {"trace": "t"}
    assert json.loads(ev.assertions[0][-1]) == {"voltage": 3.3}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-11-24T21:09:35Z", datetime(2025, 11, 24, 21, 9, 35, tzinfo=UTC)),
        ("2025-11-24T23:09:35+02:00", datetime(2025, 11, 24, 21, 9, 35, tzinfo=UTC)),
        ("2025-11-24T21:09:35", datetime(2025, 11, 24, 21, 9, 35, tzinfo=UTC)),
        ("2025-11-24 21:09:35.5z", datetime(2025, 11, 24, 21, 9, 35, 500000, tzinfo=UTC)),
    ],
)
def test_timestamps_convert_to_utc(value: str, expected: datetime) -> None:
    assert parse_timestamp(value, "t") == expected


BAD_LINES: list[tuple[str, bytes, str, str]] = [
    ("invalid json", b'{"envelope": {', "invalid_json", "invalid JSON"),
    ("array", b"[1, 2]", "not_object", "array"),
    ("string", b'"hello"', "not_object", "string"),
    ("number", b"42", "not_object", "number"),
    ("empty object", b"{}", "missing_field", "envelope: missing"),
    ("non-utf8", b'{"envelope": "\xff\xfe"}', "invalid_utf8", "UTF-8"),
    ("NaN", b'{"a": NaN}', "invalid_json", "invalid JSON"),
    ("too long", b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}', "line_too_long", "bytes"),
]


@pytest.mark.parametrize(("name", "line", "code", "text"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_lines_are_rejected_with_reason(name: str, line: bytes, code: str, text: str) -> None:
    with pytest.raises(LineRejected) as info:
        parse_event(decode_line(line), ARRIVED)
    assert info.value.code == code
    assert text in info.value.reason


REQUIRED = ["event_id", "type", "event_kind", "device_id", "occurred_at", "schema_version"]


@pytest.mark.parametrize("field", REQUIRED)
@pytest.mark.parametrize("value", [..., None])
def test_missing_or_null_required_field_names_it(field: str, value: Any) -> None:
    err = rejected(event(**{f"envelope__{field}": value}))
    assert err.code == "missing_field"
    assert f"envelope.{field}" in err.reason


@pytest.mark.parametrize(
    ("changes", "where", "code"),
    [
        ({"envelope__event_id": 5}, "envelope.event_id", "wrong_type"),
        ({"envelope__device_id": ""}, "envelope.device_id", "wrong_type"),
        ({"envelope__schema_version": "1"}, "envelope.schema_version", "wrong_type"),
        ({"envelope__schema_version": True}, "envelope.schema_version", "wrong_type"),
        ({"envelope__batch_id": 3}, "envelope.batch_id", "wrong_type"),
        ({"envelope__type": "toaster"}, "envelope.type", "unknown_type"),
        ({"envelope__occurred_at": "yesterday"}, "envelope.occurred_at", "bad_timestamp"),
        ({"envelope__occurred_at": "2025-11-24"}, "envelope.occurred_at", "bad_timestamp"),
        (
            {"envelope__occurred_at": "2025-13-24T00:00:00Z"},
            "envelope.occurred_at",
            "bad_timestamp",
        ),
        ({"envelope__occurred_at": 1732482575}, "envelope.occurred_at", "wrong_type"),
        ({"envelope__occurred_at": "1999-12-31T23:59:59Z"}, "before 2000", "bad_timestamp"),
        ({"envelope__occurred_at": "2025-11-26T00:00:01Z"}, "after arrival", "bad_timestamp"),
        ({"payload__battery_pct": "high"}, "payload.battery_pct", "wrong_type"),
        ({"payload__battery_pct": 1.5}, "payload.battery_pct", "wrong_type"),
        ({"payload__battery_pct": True}, "payload.battery_pct", "wrong_type"),
        ({"payload__battery_pct": 2**31}, "payload.battery_pct", "out_of_range"),
        ({"payload__lock_state": ["locked"]}, "payload.lock_state", "wrong_type"),
        ({"payload__auto_lock_enabled": "yes"}, "payload.auto_lock_enabled", "wrong_type"),
        ({"payload__assertions": "ok"}, "payload.assertions", "wrong_type"),
        ({"payload__assertions": [1]}, "payload.assertions[0]", "wrong_type"),
        (
            {"payload__assertions": [{"passed": "yes"}]},
            "payload.assertions[0].passed",
            "wrong_type",
        ),
    ],
)
def test_wrong_values_name_the_field(changes: dict[str, Any], where: str, code: str) -> None:
    err = rejected(event(**changes))
    assert err.code == code
    assert where in err.reason


def test_payload_not_an_object_is_rejected_but_missing_payload_is_fine() -> None:
    obj = event()
    obj["payload"] = [1]
    assert "payload: expected object" in rejected(obj).reason
    del obj["payload"]
    assert parse(obj).assertions == ()


def test_exactly_one_day_ahead_is_accepted() -> None:
    assert parse(event(envelope__occurred_at="2025-11-26T00:00:00Z")).type == "lock"


def test_integral_float_fits_an_int_column() -> None:
    assert parse(event(payload__battery_pct=81.0)).payload[0] == 81


# Property tests: flattening and fan-out --------------------------------------------------

ints32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
assertion = st.fixed_dictionaries(
    {},
    optional={
        "component_name": st.text(max_size=10),
        "passed": st.booleans(),
        "code": st.text(max_size=4),
        "measured_value": st.floats(allow_nan=False, allow_infinity=False),
        "unknown_key": json_scalars,
    },
)


@settings(max_examples=150, deadline=None)
@given(
    type_=st.sampled_from(sorted(SPECS)),
    assertions=st.none() | st.lists(assertion, max_size=6),
    extra=st.dictionaries(st.text(min_size=1, max_size=8), json_scalars, max_size=3),
    battery=ints32,
)
def test_fan_out_and_flattening_properties(
    type_: str, assertions: Any, extra: dict[str, Any], battery: int
) -> None:
    obj = event(envelope__type=type_)
    payload: dict[str, Any] = {
        k: v for k, v in extra.items() if k not in SPECS[type_].payload_fields
    }
    payload.pop("assertions", None)
    if "battery_pct" in SPECS[type_].payload_fields:
        payload["battery_pct"] = battery
    if assertions is not None:
        payload["assertions"] = assertions
    obj["payload"] = payload
    rows = event_rows(parse(obj), SOURCE, 3, ARRIVED)
    schema = SPECS[type_].schema
    # One row per assertion element (at least one), ordinals 0..n-1, all columns present.
    assert len(rows) == max(1, len(assertions or []))
    assert all(len(row) == len(schema) for row in rows)
    named = [dict(zip(schema.names, row, strict=True)) for row in rows]
    assert [r["envelope__ordinal"] for r in named] == list(range(len(rows)))
    for i, r in enumerate(named):
        element = (assertions or [{}])[i] if assertions else {}
        for name in ASSERTION_FIELDS:
            expected = element.get(name)
            if name == "measured_value" and expected is not None:
                expected = float(expected)
            assert r[f"payload__assertion__{name}"] == expected
        unknown = {k: v for k, v in element.items() if k not in ASSERTION_FIELDS}
        extra_col = r["payload__assertion__extra"]
        assert (json.loads(extra_col) if extra_col else {}) == unknown
    # Unknown payload fields are never dropped.
    kept = {k: v for k, v in payload.items() if k not in SPECS[type_].payload_fields}
    kept.pop("assertions", None)
    extra_col = named[0]["payload__extra"]
    assert (json.loads(extra_col) if extra_col else {}) == kept
    if "battery_pct" in SPECS[type_].payload_fields:
        assert named[0]["payload__battery_pct"] == battery


# The fast path must agree with parse_event on every line ----------------------------------

field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    # Fresh containers each time: a shared one could end up inside itself.
    st.sampled_from([81.0, 1.5, "", "x", "2025-11-24T21:09:35Z", [], {}, [{}]]).map(copy.deepcopy),
)
envelope_names = st.sampled_from(
    ["event_id", "type", "event_kind", "device_id", "occurred_at", "schema_version", "batch_id"]
)
payload_names = st.sampled_from(
    sorted({n for spec in SPECS.values() for n in spec.payload_fields} | {"assertions", "zz"})
)


def outcome(fn: Any, raw: bytes) -> Any:
    try:
        return fn(raw)
    except LineRejected as exc:
        return ("rejected", exc.code, exc.reason)


@settings(max_examples=400, deadline=None)
@given(
    type_=st.sampled_from(["lock", "bridge", "video_doorbell", "toaster"]),
    envelope_changes=st.dictionaries(envelope_names, field_values, max_size=2),
    payload_changes=st.dictionaries(payload_names, field_values, max_size=3),
    assertion_changes=st.dictionaries(
        st.sampled_from([*ASSERTION_FIELDS, "zz"]), field_values, max_size=2
    ),
    drop_payload=st.booleans(),
    top_level_extra=st.booleans(),
)
def test_fast_path_agrees_with_parse_event(
    type_: str,
    envelope_changes: dict[str, Any],
    payload_changes: dict[str, Any],
    assertion_changes: dict[str, Any],
    drop_payload: bool,
    top_level_extra: bool,
) -> None:
    from sluice.process.parse import parse_line

    obj = event(envelope__type=type_)
    obj["envelope"].update(envelope_changes)
    obj["payload"].update(payload_changes)
    if isinstance(obj["payload"].get("assertions"), list) and obj["payload"]["assertions"]:
        first = obj["payload"]["assertions"][0]
        if isinstance(first, dict):
            first.update(assertion_changes)
    if drop_payload:
        del obj["payload"]
    if top_level_extra:
        obj["meta"] = 1
    # Compact JSON takes the per-type structs (the type is spelled as the marker), spaced JSON
    # the structs of every type: both must agree with parse_event.
    for raw in (json.dumps(obj, separators=(",", ":")).encode(), json.dumps(obj).encode()):
        fast = outcome(lambda b: parse_line(b, ARRIVED), raw)
        slow = outcome(lambda b: parse_event(decode_line(b), ARRIVED), raw)
        assert fast == slow
        assert_columnar_checks_agree(raw, slow)


def assert_columnar_checks_agree(raw: bytes, slow: Any) -> None:
    """The columnar path's checks take only lines parse_event accepts, with the same facts."""
    from sluice.process.columnar import occurred_micros
    from sluice.process.linecheck import line_checker
    from sluice.process.parse import Extras, fast_check

    checked = fast_check(raw)
    checker = line_checker()
    assert checker is not None
    if checker.check([raw]) == [True]:
        assert checked is True
    if checked is None:
        return
    extras = checked if isinstance(checked, Extras) else None
    assert checked is True or extras is not None
    occurred_at = json.loads(raw)["envelope"]["occurred_at"]  # a string: the check saw to that
    micros = occurred_micros(pa.array([occurred_at]), ARRIVED)[0].as_py()
    if micros is None:
        return
    assert isinstance(slow, Event)
    assert micros == round(slow.occurred_at.timestamp() * 1_000_000)
    assertion_extras = [a[-1] for a in slow.assertions]
    slow_extras = (slow.envelope_extra, slow.payload_extra, assertion_extras)
    if extras is None:
        assert slow_extras == (None, None, [None] * len(slow.assertions))
    else:
        assert slow_extras == (extras.envelope, extras.payload, list(extras.assertions))


@pytest.mark.parametrize(
    "line",
    [
        # The marker of one type, the envelope of another: the guess fails, the line is kept.
        b'{"envelope":{"event_id":"e","type":"bridge","event_kind":"k","device_id":"d",'
        b'"occurred_at":"2025-11-24T10:00:00Z","schema_version":1},'
        b'"payload":{"note":{"type":"lock"},"uptime_s":5}}',
        # Another type's field in a payload: unknown to this type, kept as an extra.
        b'{"envelope":{"event_id":"e","type":"lock","event_kind":"k","device_id":"d",'
        b'"occurred_at":"2025-11-24T10:00:00Z","schema_version":1},"payload":{"uptime_s":5}}',
        b'{"envelope": {"event_id": "e", "type": "lock", "event_kind": "k", "device_id": "d", '
        b'"occurred_at": "2025-11-24T10:00:00Z", "schema_version": 1}, '
        b'"payload": {"uptime_s": null}}',
        # An empty occurred_at: rejected by both.
        b'{"envelope":{"event_id":"e","type":"lock","event_kind":"k","device_id":"d",'
        b'"occurred_at":"","schema_version":1}}',
    ],
)
def test_fast_path_agrees_with_parse_event_on_type_guesses(line: bytes) -> None:
    from sluice.process.parse import parse_line

    fast = outcome(lambda b: parse_line(b, ARRIVED), line)
    slow = outcome(lambda b: parse_event(decode_line(b), ARRIVED), line)
    assert fast == slow
    assert_columnar_checks_agree(line, slow)


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


# Near-RFC 3339 text: dates and times that may not exist, every separator and offset form.
timestamps = st.builds(
    lambda y, mo, d, sep, h, mi, sec, frac, off: f"{y}-{mo}-{d}{sep}{h}:{mi}:{sec}{frac}{off}",
    st.sampled_from(["1999", "2000", "2024", "2025", "0000", "9999"]),
    _two(0, 13),
    _two(0, 32),
    st.sampled_from(["T", "t", " ", "_"]),
    _two(0, 25),
    _two(0, 61),
    _two(0, 61),
    st.sampled_from(["", ".1", ".123456", ".1234567", ".999999999", "."]),
    st.one_of(
        st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+0100"]),
        st.builds(
            lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), _two(0, 25), _two(0, 61)
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.one_of(timestamps, st.text(max_size=30)), min_size=1, max_size=8))
def test_column_check_of_occurred_at_agrees_with_the_line_rule(texts: list[str]) -> None:
    from sluice.process.columnar import occurred_micros
    from sluice.process.parse import check_occurred_at

    arrived = datetime(2025, 11, 25, 13, 30, 0, 250_000, tzinfo=UTC)
    checked = occurred_micros(pa.array(texts), arrived).to_pylist()
    for text, micros in zip(texts, checked, strict=True):
        if micros is None:
            continue  # left to the line rule, which decides (accepts or rejects) on its own
        expected = check_occurred_at(text, arrived)  # raises if the column check was too lax
        assert micros == round(expected.timestamp() * 1_000_000), text


def test_column_check_takes_the_common_forms_itself() -> None:
    from sluice.process.columnar import occurred_micros

    texts = ["2025-11-24T10:00:00Z", "2025-11-24T10:00:00.5+01:00", "2025-11-26T00:00:01Z"]
    # The third is more than a day after arrival: not taken (the line rule rejects it).
    assert occurred_micros(pa.array(texts), ARRIVED).to_pylist() == [
        1763978400000000,
        1763974800500000,
        None,
    ]
    # Dates that do not exist (Arrow refuses the whole column for one): each alone is left to
    # the line rule, every other value is still taken by the column check.
    column = texts * 400
    impossible = {
        4: "2025-02-30T00:00:00Z",
        600: "2024-13-45T25:61:00Z",
        1198: "2025-11-24T24:00:00Z",
    }
    for at, text in impossible.items():
        column[at] = text
    expected = occurred_micros(pa.array(texts * 400), ARRIVED).to_pylist()
    for at in impossible:
        expected[at] = None
    assert occurred_micros(pa.array(column), ARRIVED).to_pylist() == expected
    assert expected.count(None) == 400 + len(impossible)
