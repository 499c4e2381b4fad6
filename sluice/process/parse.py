"""One raw line → one validated event, or the reason it is quarantined (DESIGN §4).

Checks depend only on the line and its raw object (its arrival time), never on the clock of the
machine that runs them, so reprocessing the same object always gives the same result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec

from sluice.process.schemas import ASSERTION_FIELDS, SPECS, FieldKind

BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 1024 * 1024
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD_OF_ARRIVAL = timedelta(days=1)
INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
)
_decode = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder(order="sorted").encode

REQUIRED_STRINGS = ("event_id", "type", "event_kind", "device_id")
_PAYLOAD_KNOWN = {t: frozenset((*spec.payload_fields, "assertions")) for t, spec in SPECS.items()}
ENVELOPE_KNOWN = frozenset((*REQUIRED_STRINGS, "occurred_at", "schema_version", "batch_id"))
ASSERTION_KNOWN = frozenset(ASSERTION_FIELDS)
TOP_LEVEL_KNOWN = frozenset(("envelope", "payload"))


class LineRejected(Exception):
    """A line that goes to quarantine. `code` groups reasons; `reason` names the field."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    event_id: str
    event_kind: str
    device_id: str
    occurred_at: datetime
    schema_version: int
    batch_id: str | None
    envelope_extra: str | None
    payload: tuple[Any, ...]  # values in the table's payload field order
    payload_extra: str | None
    # One tuple per assertion: ASSERTION_FIELDS values, then the element's extra JSON.
    assertions: tuple[tuple[Any, ...], ...]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )


def _check(value: Any, kind: FieldKind, where: str) -> Any:
    """The value if it fits the column kind, else LineRejected naming the field."""
    if value is None:
        return None
    t = type(value)
    if kind is FieldKind.STRING:
        if t is str:
            return value
    elif kind is FieldKind.BOOL:
        if t is bool:
            return value
    elif kind is FieldKind.DOUBLE:
        if t is float or t is int:
            return float(value)
    else:
        if t is float and value.is_integer():
            value = int(value)
            t = int
        if t is int:
            lo, hi = INT32_RANGE if kind is FieldKind.INT32 else INT64_RANGE
            if lo <= value <= hi:
                return value
            raise LineRejected("out_of_range", f"{where}: {value} does not fit {kind.value}")
    raise LineRejected("wrong_type", f"{where}: expected {kind.value}, got {_type_name(value)}")


def _extra(obj: dict[str, Any], known: frozenset[str]) -> str | None:
    if obj.keys() <= known:  # the common case, tested in C
        return None
    return _encode_json({k: v for k, v in obj.items() if k not in known}).decode()


def parse_timestamp(value: Any, where: str) -> datetime:
    """RFC 3339 → aware UTC datetime; a timestamp without an offset is read as UTC."""
    if type(value) is not str:
        raise LineRejected(
            "wrong_type", f"{where}: expected RFC 3339 string, got {_type_name(value)}"
        )
    if not _RFC3339.match(value):
        raise LineRejected("bad_timestamp", f"{where}: not an RFC 3339 timestamp: {value[:64]!r}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        try:  # lower-case t/z, which RFC 3339 allows and fromisoformat does not
            ts = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise LineRejected("bad_timestamp", f"{where}: {exc}: {value[:64]!r}") from exc
    if ts.tzinfo is UTC:
        return ts
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


@lru_cache(maxsize=16)
def _latest(arrived_at: datetime) -> datetime:
    return arrived_at + MAX_AHEAD_OF_ARRIVAL


def check_occurred_at(value: Any, arrived_at: datetime) -> datetime:
    """`occurred_at` as UTC, if it lies between 2000-01-01 and a day after arrival."""
    occurred_at = parse_timestamp(value, "envelope.occurred_at")
    if occurred_at < EARLIEST:
        raise LineRejected("bad_timestamp", f"envelope.occurred_at: {value} is before 2000-01-01")
    if occurred_at > _latest(arrived_at):
        raise LineRejected(
            "bad_timestamp",
            f"envelope.occurred_at: {value} is more than a day after arrival "
            f"({arrived_at.isoformat()})",
        )
    return occurred_at


def _extras(
    obj: dict[str, Any], env: dict[str, Any], payload: dict[str, Any], type_: str
) -> tuple[str | None, str | None]:
    """The fields the schema does not know, as JSON: (envelope__extra, payload__extra)."""
    if obj.keys() <= TOP_LEVEL_KNOWN:
        payload_extra = _extra(payload, _PAYLOAD_KNOWN[type_])
    else:
        # Top-level keys other than envelope/payload are kept with the payload's extras, under
        # a prefix that cannot clash with a payload field name.
        known = _PAYLOAD_KNOWN[type_]
        extra_payload = {k: v for k, v in payload.items() if k not in known}
        extra_payload.update({f"$.{k}": v for k, v in obj.items() if k not in TOP_LEVEL_KNOWN})
        payload_extra = _encode_json(extra_payload).decode()
    return _extra(env, ENVELOPE_KNOWN), payload_extra


def decode_line(line: bytes) -> Any:
    """JSON value of one line (BOM and CR already stripped)."""
    if len(line) > MAX_LINE_BYTES:
        raise LineRejected("line_too_long", f"line is {len(line)} bytes, over {MAX_LINE_BYTES}")
    try:
        return _decode(line)
    except UnicodeDecodeError as exc:
        raise LineRejected("invalid_utf8", f"not valid UTF-8 at byte {exc.start}") from exc
    except msgspec.DecodeError as exc:
        raise LineRejected("invalid_json", f"invalid JSON: {exc}") from exc


def parse_event(obj: Any, arrived_at: datetime) -> Event:
    """Validate a decoded line. Raises LineRejected with a reason that names the field."""
    if type(obj) is not dict:
        raise LineRejected("not_object", f"line is a JSON {_type_name(obj)}, not an object")
    env = obj.get("envelope")
    if type(env) is not dict:
        missing = "missing" if env is None else f"expected object, got {_type_name(env)}"
        raise LineRejected("missing_field" if env is None else "wrong_type", f"envelope: {missing}")
    for name in REQUIRED_STRINGS:
        value = env.get(name)
        if value is None:
            raise LineRejected("missing_field", f"envelope.{name}: missing or null")
        if type(value) is not str or not value:
            raise LineRejected(
                "wrong_type", f"envelope.{name}: expected non-empty string, got {_type_name(value)}"
            )
    type_ = env["type"]
    spec = SPECS.get(type_)
    if spec is None:
        raise LineRejected("unknown_type", f"envelope.type: unknown type {type_[:64]!r}")
    occurred = env.get("occurred_at")
    if occurred is None:
        raise LineRejected("missing_field", "envelope.occurred_at: missing or null")
    occurred_at = check_occurred_at(occurred, arrived_at)
    version = env.get("schema_version")
    if version is None:
        raise LineRejected("missing_field", "envelope.schema_version: missing or null")
    if type(version) is not int:
        raise LineRejected(
            "wrong_type", f"envelope.schema_version: expected integer, got {_type_name(version)}"
        )
    _check(version, FieldKind.INT64, "envelope.schema_version")
    batch_id = _check(env.get("batch_id"), FieldKind.STRING, "envelope.batch_id")

    payload = obj.get("payload")
    if payload is None:
        payload = {}
    elif type(payload) is not dict:
        raise LineRejected("wrong_type", f"payload: expected object, got {_type_name(payload)}")
    fields = spec.payload_fields
    values = tuple(_check(payload.get(n), k, f"payload.{n}") for n, k in fields.items())
    envelope_extra, payload_extra = _extras(obj, env, payload, type_)
    return Event(
        type=type_,
        event_id=env["event_id"],
        event_kind=env["event_kind"],
        device_id=env["device_id"],
        occurred_at=occurred_at,
        schema_version=version,
        batch_id=batch_id,
        envelope_extra=envelope_extra,
        payload=values,
        payload_extra=payload_extra,
        assertions=_assertions(payload.get("assertions")),
    )


def _assertions(value: Any) -> tuple[tuple[Any, ...], ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise LineRejected(
            "wrong_type", f"payload.assertions: expected array, got {_type_name(value)}"
        )
    out = []
    for i, element in enumerate(value):
        where = f"payload.assertions[{i}]"
        if type(element) is not dict:
            raise LineRejected("wrong_type", f"{where}: expected object, got {_type_name(element)}")
        checked = [_check(element.get(n), k, f"{where}.{n}") for n, k in ASSERTION_FIELDS.items()]
        checked.append(_extra(element, ASSERTION_KNOWN))
        out.append(tuple(checked))
    return tuple(out)


# The fast path ----------------------------------------------------------------------------
# Most lines are well-formed events with no unknown fields. msgspec decodes and type-checks
# those in C into the structs below; any line they refuse (a bad value, an unknown field, a
# float where an int belongs) falls back to `parse_event`, which decides and explains. So the
# fast path may only accept what `parse_event` accepts, with the same result (a property test
# holds them to that).

_MSGSPEC_TYPES: dict[FieldKind, Any] = {
    FieldKind.STRING: str,
    FieldKind.INT32: Annotated[int, msgspec.Meta(ge=INT32_RANGE[0], le=INT32_RANGE[1])],
    FieldKind.INT64: Annotated[int, msgspec.Meta(ge=INT64_RANGE[0], le=INT64_RANGE[1])],
    FieldKind.DOUBLE: float,
    FieldKind.BOOL: bool,
}
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


def _all_payload_fields() -> dict[str, FieldKind]:
    merged: dict[str, FieldKind] = {}
    for spec in SPECS.values():
        for name, kind in spec.payload_fields.items():
            if merged.setdefault(name, kind) is not kind:
                raise TypeError(f"payload field {name} has two types; the fast path needs one")
    return merged


_PAYLOAD_FIELDS = _all_payload_fields()
_UNSET = msgspec.UNSET


def _event_struct(name: str, *, forbid: bool) -> Any:
    """The event as msgspec structs, whose payload knows every type's fields; `forbid` refuses
    unknown fields at every level. Not tracked by the garbage collector (they hold no cycles):
    a line makes several, and tracking them makes the collector run every few hundred lines."""
    assertion = msgspec.defstruct(
        f"{name}Assertion",
        [(n, _MSGSPEC_TYPES[k] | None, None) for n, k in ASSERTION_FIELDS.items()],
        forbid_unknown_fields=forbid,
        gc=False,
    )
    payload = msgspec.defstruct(
        f"{name}Payload",
        [
            (n, _MSGSPEC_TYPES[k] | None | msgspec.UnsetType, _UNSET)
            for n, k in _PAYLOAD_FIELDS.items()
        ]
        + [("assertions", list[assertion] | None | msgspec.UnsetType, msgspec.UNSET)],  # type: ignore[valid-type]
        forbid_unknown_fields=forbid,
        gc=False,
    )
    envelope = msgspec.defstruct(
        f"{name}Envelope",
        [
            ("event_id", _NonEmpty),
            ("type", Literal["lock", "bridge", "video_doorbell"]),
            ("event_kind", _NonEmpty),
            ("device_id", _NonEmpty),
            ("occurred_at", str),
            ("schema_version", Annotated[int, msgspec.Meta(ge=INT64_RANGE[0], le=INT64_RANGE[1])]),
            ("batch_id", str | None, None),
        ],
        forbid_unknown_fields=forbid,
        gc=False,
    )
    return msgspec.defstruct(
        name,
        [("envelope", envelope), ("payload", payload | None, None)],
        forbid_unknown_fields=forbid,
        gc=False,
    )


# parse_line builds assertion tuples in this order, and the envelope type is spelled out above.
assert tuple(ASSERTION_FIELDS) == ("component_name", "passed", "code", "measured_value")
assert set(SPECS) == {"lock", "bridge", "video_doorbell"}

_fast_decode = msgspec.json.Decoder(_event_struct("_FastEvent", forbid=True)).decode
_lenient_decode = msgspec.json.Decoder(_event_struct("_LenientEvent", forbid=False)).decode
_OWN = {t: tuple(spec.payload_fields) for t, spec in SPECS.items()}


def _values_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A C-level getter of several attributes, always as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    return lambda obj: ()


# Per type, a getter of the other types' payload fields (unknown to it: they go to extras, on
# the slow path): all UNSET means none of them is in the payload.
_FOREIGN_VALUES = {
    t: _values_of(tuple(n for n in _PAYLOAD_FIELDS if n not in _OWN[t])) for t in SPECS
}
_DECODE_ERRORS = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)


def _fast_struct(line: bytes) -> Any:
    """The line as checked structs if it is a valid event without unknown fields (by every
    rule but occurred_at's), or None when `parse_event` must decide it."""
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        raw = _fast_decode(line)
    except _DECODE_ERRORS:
        return None
    payload = raw.payload
    if payload is not None:
        foreign = _FOREIGN_VALUES[raw.envelope.type](payload)
        if foreign.count(_UNSET) != len(foreign):
            return None
    return raw


@dataclass(frozen=True, slots=True)
class Extras:
    """A line's fields the schema does not know, as JSON (the `*__extra` columns)."""

    envelope: str | None
    payload: str | None
    assertions: tuple[str | None, ...]  # one per assertion, in order


# What `fast_check` says of a line: a valid event without unknown fields (True), one with
# them (its Extras), or None when `parse_line` must decide the line.
Checked = Literal[True] | Extras | None


def fast_check(line: bytes) -> Checked:
    """Whether the line is a valid event by every rule but occurred_at's (which the columnar
    path checks a column at a time: `columnar.occurred_micros`), and its unknown fields."""
    if _fast_struct(line) is not None:
        return True
    if len(line) > MAX_LINE_BYTES:
        return None
    try:  # valid but for unknown fields? The lenient structs check everything else in C.
        raw = _lenient_decode(line)
    except _DECODE_ERRORS:
        return None
    obj = _decode(line)
    payload = obj.get("payload") or {}
    envelope_extra, payload_extra = _extras(obj, obj["envelope"], payload, raw.envelope.type)
    elements = payload.get("assertions") or ()
    assertions = tuple(_extra(element, ASSERTION_KNOWN) for element in elements)
    return Extras(envelope_extra, payload_extra, assertions)


def parse_line(line: bytes, arrived_at: datetime) -> Event:
    """Validate one line (BOM and CR already stripped). Raises LineRejected."""
    raw = _fast_struct(line)
    if raw is None:
        return parse_event(decode_line(line), arrived_at)
    env = raw.envelope
    type_ = env.type
    payload = raw.payload
    if payload is None:
        values: tuple[Any, ...] = (None,) * len(_OWN[type_])
        assertions: tuple[tuple[Any, ...], ...] = ()
    else:
        values = tuple(None if (v := getattr(payload, n)) is _UNSET else v for n in _OWN[type_])
        items = payload.assertions
        assertions = (
            ()
            if items is _UNSET or items is None
            else tuple((a.component_name, a.passed, a.code, a.measured_value, None) for a in items)
        )
    return Event(
        type=type_,
        event_id=env.event_id,
        event_kind=env.event_kind,
        device_id=env.device_id,
        occurred_at=check_occurred_at(env.occurred_at, arrived_at),
        schema_version=env.schema_version,
        batch_id=env.batch_id,
        envelope_extra=None,
        payload=values,
        payload_extra=None,
        assertions=assertions,
    )
