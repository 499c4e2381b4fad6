"""Synthetic telemetry with ground truth (DESIGN §4), for `sluice generate`, demos and e2e tests.

Good lines are valid by construction and bad lines are invalid by construction, each for exactly
one reason; the generator never asks the parser. `GenerateResult` says what the pipeline must make
of the file: verified rows per table and per partition, quarantined lines per kind, blank lines.
Output is streamed (memory does not grow with `events`) and reproducible: the same seed and `now`
give the same bytes.
"""

from __future__ import annotations

import os
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

import msgspec

from sluice.errors import ConfigError
from sluice.layout import TYPES, table_name
from sluice.process.schemas import PAYLOAD_FIELDS

HUGE_LINE = "huge_line"
# Each bad kind and the quarantine reason code (parse.LineRejected.code) it must get.
QUARANTINE_CODES: dict[str, str] = {
    "invalid_json": "invalid_json",
    "not_object": "not_object",
    "missing_field": "missing_field",
    "null_field": "missing_field",
    "unknown_type": "unknown_type",
    "bad_timestamp": "bad_timestamp",
    "old_timestamp": "bad_timestamp",
    "future_timestamp": "bad_timestamp",
    "wrong_payload_type": "wrong_type",
    "non_utf8": "invalid_utf8",
    "empty_object": "missing_field",
    HUGE_LINE: "line_too_long",
}
BAD_KINDS: tuple[str, ...] = tuple(k for k in QUARANTINE_CODES if k != HUGE_LINE)
# Each huge line is ~3 MB: a few prove the limit without turning a big run into gigabytes.
MAX_HUGE_LINES = 3
HUGE_FIELD_CHARS = 3 * 1024 * 1024

DEVICES_PER_TYPE = 300
RESEND_WINDOW = 512  # a device resends one of its recent events, not one from days ago
PROGRESS_EVERY = 8192

Json = dict[str, Any]
T = TypeVar("T")

_REQUIRED = ("event_id", "type", "event_kind", "device_id", "occurred_at", "schema_version")
# Weighted choices as pools picked uniformly: lock 50%, bridge 20%, video_doorbell 30%.
_TYPE_POOL = ("lock",) * 5 + ("bridge",) * 2 + ("video_doorbell",) * 3
_KIND_POOL = ("assertion", "heartbeat") * 2 + ("state_change",)
_OFFSETS = tuple(timedelta(minutes=m) for m in (120, -300, 330, 540))
_BLANKS = (b"\n", b"   \n", b"\t\n", b" \r\n", b"\r\n")
_COMPONENTS = {
    "lock": ("motor", "bolt", "battery", "keypad", "door_sensor"),
    "bridge": ("wifi", "ble_radio", "cpu", "storage", "power"),
    "video_doorbell": ("camera", "microphone", "button", "pir_sensor", "battery"),
}
_WRONG_TYPED_FIELD = {"lock": "battery_pct", "bridge": "cpu_pct", "video_doorbell": "ring_count"}
_NON_UTF8_MARK = "@@non-utf8@@"

Uniform = Callable[[], float]  # random.Random.random: drawing through it is several times faster


def _pick(r: Uniform, values: Sequence[T]) -> T:
    return values[int(r() * len(values))]


# Each value fits its column kind in schemas.PAYLOAD_FIELDS by construction (int32 stays small).
_FIELD_VALUES: dict[str, Callable[[Uniform], Any]] = {
    "battery_pct": lambda r: int(r() * 101),
    "lock_state": lambda r: _pick(r, ("locked", "unlocked", "jammed")),
    "door_state": lambda r: _pick(r, ("open", "closed", "ajar")),
    "auto_lock_enabled": lambda r: r() < 0.7,
    "rssi_dbm": lambda r: -100 + int(r() * 71),
    "wifi_rssi_dbm": lambda r: -90 + int(r() * 66),
    "uptime_s": lambda r: int(r() * 90 * 86_400),
    "connected_devices": lambda r: int(r() * 33),
    "cpu_pct": lambda r: round(r() * 100, 2),
    "motion_detected": lambda r: r() < 0.3,
    "ring_count": lambda r: int(r() * 21),
    "video_bitrate_kbps": lambda r: round(500 + r() * 3500, 1),
    "firmware_version": lambda r: _pick(r, ("1.4.2", "1.5.0", "2.0.1-rc1")),
}

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class GenerateResult:
    """What was written and what the pipeline must make of it.

    `rows`, `rows_by_partition` and `distinct_events` count verified rows: one per assertion
    element, one for an event without assertions or with an empty list. Partitions are
    `telemetry_<type>_flat/day=YYYY-MM-DD/hour=HH` of `occurred_at` in UTC.
    """

    path: str | None
    lines: int
    good_lines: int
    blank_lines: int
    bad_lines: dict[str, int]
    resent_events: int
    rows: dict[str, int]
    rows_by_partition: dict[str, int]
    distinct_events: dict[str, int]

    @property
    def quarantined_lines(self) -> int:
        return sum(self.bad_lines.values())

    @property
    def quarantine_codes(self) -> dict[str, int]:
        """Expected quarantined lines per parser reason code (see QUARANTINE_CODES)."""
        codes: Counter[str] = Counter()
        for kind, count in self.bad_lines.items():
            codes[QUARANTINE_CODES[kind]] += count
        return dict(sorted(codes.items()))


@dataclass(frozen=True, slots=True)
class _Good:
    body: bytes
    table: str
    partition: str
    rows: int


def _rfc3339(at: datetime, offset: timedelta | None = None) -> str:
    ms = at.microsecond // 1000
    if offset is None:
        return f"{at:%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"
    minutes = abs(offset) // timedelta(minutes=1)
    sign = "-" if offset < timedelta(0) else "+"
    return f"{at + offset:%Y-%m-%dT%H:%M:%S}.{ms:03d}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


class _Telemetry:
    """Builds events from one seeded random stream; every choice is drawn from it in order."""

    def __init__(self, rng: random.Random, now: datetime, days: int) -> None:
        self.rng = rng
        self.r = rng.random
        self.now = now
        end = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        hours = days * 24
        self.slots = [end - timedelta(hours=hours - k) for k in range(hours)]
        self.hour_prefix = [f"{t:%Y-%m-%dT%H}:" for t in self.slots]
        self.partition = [f"day={t:%Y-%m-%d}/hour={t:%H}" for t in self.slots]
        self.devices = {
            t: [f"{t}-{rng.getrandbits(40):010x}" for _ in range(DEVICES_PER_TYPE)] for t in TYPES
        }
        self.batch_id = self._uuid()

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"

    def _assertion(self, type_: str) -> Json:
        r = self.r
        passed = r() < 0.9
        element: Json = {"component_name": _pick(r, _COMPONENTS[type_]), "passed": passed}
        if not passed:
            element["code"] = f"E{100 + int(r() * 900)}"
        if r() < 0.5:
            element["measured_value"] = round(r() * 5, 3)
        if r() < 0.02:
            element["unit"] = "V"  # unknown key: goes to payload__assertion__extra
        return element

    def event(self, type_: str, slot: int) -> Json:
        """A valid event of `type_` at a random millisecond of hour `slot`."""
        r = self.r
        if r() < 0.02:
            self.batch_id = self._uuid()
        kind = _pick(r, _KIND_POOL)
        ms = int(r() * 3_600_000)
        if r() < 0.04:
            occurred = _rfc3339(self.slots[slot] + timedelta(milliseconds=ms), _pick(r, _OFFSETS))
        else:
            minute, ms = divmod(ms, 60_000)
            occurred = f"{self.hour_prefix[slot]}{minute:02d}:{ms // 1000:02d}.{ms % 1000:03d}Z"
        envelope: Json = {
            "event_id": self._uuid(),
            "type": type_,
            "event_kind": kind,
            "device_id": _pick(r, self.devices[type_]),
            "occurred_at": occurred,
            "schema_version": 1,
            "batch_id": self.batch_id,
        }
        payload: Json = {name: _FIELD_VALUES[name](r) for name in PAYLOAD_FIELDS[type_]}
        if r() < 0.1:
            del payload[_pick(r, list(payload))]
        if r() < 0.03:
            payload["debug_note"] = f"trace {self.rng.getrandbits(32):08x}"
        if kind == "assertion":
            payload["assertions"] = [self._assertion(type_) for _ in range(1 + int(r() * 5))]
        elif r() < 0.03:
            payload["assertions"] = []
        return {"envelope": envelope, "payload": payload}

    def good(self, slot: int) -> _Good:
        type_ = _pick(self.r, _TYPE_POOL)
        event = self.event(type_, slot)
        table = table_name(type_)
        rows = len(event["payload"].get("assertions") or ()) or 1
        return _Good(_encode(event), table, f"{table}/{self.partition[slot]}", rows)

    def bad(self, kind: str) -> bytes:
        """One line that is bad for the reason `kind` names and for no other."""
        rng, r = self.rng, self.r
        type_ = _pick(r, TYPES)
        event = self.event(type_, int(r() * len(self.slots)))
        env, payload = event["envelope"], event["payload"]
        if kind == "invalid_json":
            body = _encode(event)  # a strict prefix of an object is never valid JSON
            return body[: rng.randint(1, len(body) - 1)]
        if kind == "not_object":
            return rng.choice((_encode([event]), b'"lock"', b"42", b"null", b"true"))
        if kind == "empty_object":
            return b"{}"
        if kind == "missing_field":
            del env[rng.choice(_REQUIRED)]
        elif kind == "null_field":
            env[rng.choice(_REQUIRED)] = None
        elif kind == "unknown_type":
            env["type"] = rng.choice(("thermostat", "smoke_alarm", "garage_door"))
        elif kind == "bad_timestamp":
            env["occurred_at"] = rng.choice(("yesterday", "2024-13-45T25:61:00Z", "1732482575"))
        elif kind == "old_timestamp":
            # Z only: an offset could carry a late-1999 local time into 2000 UTC.
            old = datetime(1999, 1, 1, tzinfo=UTC) + timedelta(
                milliseconds=rng.randrange(364 * 86_400_000)
            )
            env["occurred_at"] = _rfc3339(old)
        elif kind == "future_timestamp":
            future = self.now + timedelta(days=30, milliseconds=rng.randrange(3_600_000))
            env["occurred_at"] = _rfc3339(future)
        elif kind == "wrong_payload_type":
            if r() < 0.5:
                payload[_WRONG_TYPED_FIELD[type_]] = "high"
            else:
                payload["assertions"] = "motor ok"
        elif kind == "non_utf8":
            env["device_id"] = _NON_UTF8_MARK
            return _encode(event).replace(_NON_UTF8_MARK.encode(), b"dev-\xff\xfe-01")
        elif kind == HUGE_LINE:
            payload["debug_blob"] = "x" * HUGE_FIELD_CHARS
        else:
            raise AssertionError(f"unknown bad kind {kind!r}")
        return _encode(event)


def _validate(
    events: int, days: int, bad_fraction: float, resend_fraction: float, now: datetime
) -> None:
    if events < 0:
        raise ConfigError(f"events must be 0 or more, got {events}")
    if days < 1:
        raise ConfigError(f"days must be 1 or more, got {days}")
    if not 0 <= bad_fraction < 1:
        raise ConfigError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    if not 0 <= resend_fraction < 1:
        raise ConfigError(f"resend_fraction must be in [0, 1), got {resend_fraction}")
    if now - timedelta(days=days, hours=2) < datetime(2000, 1, 1, tzinfo=UTC):
        raise ConfigError(
            f"{days} days before {now.isoformat()} reach before 2000-01-01, "
            "which the parser rejects; choose fewer days or a later now"
        )


def generate(
    out: BinaryIO | str | os.PathLike[str],
    *,
    events: int = 10_000,
    days: int = 3,
    bad_fraction: float = 0.02,
    resend_fraction: float = 0.01,
    seed: int = 7,
    now: datetime | None = None,
    huge_lines: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> GenerateResult:
    """Write NDJSON telemetry to `out` (a path, or a binary stream left open) and say what it holds.

    `events` good events (device resends included) over the `days * 24` whole UTC hours that end
    an hour before `now` (default: the current time; a naive `now` is UTC), one event per hour at
    least when `events` allows. Blank lines are mixed in, and bad lines make up `bad_fraction` of
    all lines, rotating through BAD_KINDS (plus HUGE_LINE, at most MAX_HUGE_LINES, with
    `huge_lines`). `on_progress` gets the number of good events written so far.

    Every good event has `occurred_at` before `now`, every `future_timestamp` line is 30 days
    after it: a raw object that arrives between `now` and 29 days later quarantines exactly the
    bad lines.

    Raises:
        ConfigError: a negative `events`, `days` < 1, a fraction outside [0, 1), or a time range
            that reaches before 2000-01-01.
    """
    now = datetime.now(UTC) if now is None else now
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    _validate(events, days, bad_fraction, resend_fraction, now)
    telemetry = _Telemetry(random.Random(seed), now, days)
    kinds = (*BAD_KINDS, HUGE_LINE) if huge_lines else BAD_KINDS
    args = (telemetry, events, bad_fraction, resend_fraction, kinds, on_progress)
    if isinstance(out, str | os.PathLike):
        with open(out, "wb", buffering=1 << 20) as stream:
            return _write(stream, os.fspath(out), *args)
    return _write(out, None, *args)


def _write(
    stream: BinaryIO,
    path: str | None,
    telemetry: _Telemetry,
    events: int,
    bad_fraction: float,
    resend_fraction: float,
    kinds: tuple[str, ...],
    on_progress: Callable[[int], None] | None,
) -> GenerateResult:
    r = telemetry.r
    hours = len(telemetry.slots)
    # The first good line cannot be a resend, so at least one event is fresh.
    left_resend = resent = min(round(resend_fraction * events), max(events - 1, 0))
    left_fresh = fresh_total = events - resent
    left_blank = blank = max(1, events // 1000) if events else 0
    left_bad = bad = round(bad_fraction * (events + blank) / (1 - bad_fraction))

    recent: deque[_Good] = deque(maxlen=RESEND_WINDOW)
    rows: Counter[str] = Counter({table_name(t): 0 for t in TYPES})
    distinct: Counter[str] = Counter({table_name(t): 0 for t in TYPES})
    partitions: Counter[str] = Counter()
    bad_counts: Counter[str] = Counter()
    buffer: list[bytes] = []
    rotation = good_written = 0
    for _ in range(events + blank + bad):
        # Drawing each line's class from what is left gives exact counts in one streaming pass.
        pick = int(r() * (left_bad + left_blank + left_fresh + left_resend))
        if pick < left_bad:
            left_bad -= 1
            kind = kinds[rotation % len(kinds)]
            rotation += 1
            if kind == HUGE_LINE and bad_counts[HUGE_LINE] >= MAX_HUGE_LINES:
                kind = kinds[rotation % len(kinds)]
                rotation += 1
            bad_counts[kind] += 1
            buffer.append(telemetry.bad(kind) + b"\n")
        elif pick < left_bad + left_blank:
            left_blank -= 1
            buffer.append(_pick(r, _BLANKS))
        else:
            resend = bool(recent) and (
                left_fresh == 0 or r() * (left_fresh + left_resend) < left_resend
            )
            if resend:
                left_resend -= 1
                good = _pick(r, recent)
            else:
                good = telemetry.good((fresh_total - left_fresh) * hours // fresh_total)
                left_fresh -= 1
                recent.append(good)
                distinct[good.table] += good.rows
            rows[good.table] += good.rows
            partitions[good.partition] += good.rows
            buffer.append(good.body + (b"\r\n" if r() < 0.03 else b"\n"))
            good_written += 1
            if on_progress is not None and good_written % PROGRESS_EVERY == 0:
                on_progress(good_written)
        if len(buffer) >= 1024:
            stream.writelines(buffer)
            buffer.clear()
    stream.writelines(buffer)
    stream.flush()
    if on_progress is not None and good_written % PROGRESS_EVERY:
        on_progress(good_written)
    return GenerateResult(
        path=path,
        lines=events + blank + bad,
        good_lines=events,
        blank_lines=blank,
        bad_lines={k: bad_counts[k] for k in kinds if bad_counts[k]},
        resent_events=resent,
        rows=dict(sorted(rows.items())),
        rows_by_partition=dict(sorted(partitions.items())),
        distinct_events=dict(sorted(distinct.items())),
    )
