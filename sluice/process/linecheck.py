"""The compiled line checker (`_linecheck.c`) as the parser uses it.

The checker vouches for the common lines without making a Python object per line; the lines it
cannot vouch for go to `parse.fast_check`. It is built by the install; without it (no compiler
there) every line goes to `fast_check`, with the same results: checking takes about four times
as long, the whole parser about a quarter longer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from sluice.process.columnar import positions
from sluice.process.parse import (
    _PAYLOAD_FIELDS,
    _PAYLOAD_KNOWN,
    MAX_LINE_BYTES,
    REQUIRED_STRINGS,
    Checked,
    fast_check,
)
from sluice.process.schemas import ASSERTION_FIELDS, SPECS, FieldKind

if TYPE_CHECKING:
    from sluice.process._linecheck import LineChecker

_CHECKER_KINDS = {
    FieldKind.STRING: "s",
    FieldKind.INT32: "i",
    FieldKind.INT64: "I",
    FieldKind.DOUBLE: "d",
    FieldKind.BOOL: "b",
}


def line_checker() -> LineChecker | None:
    """A compiled checker of this schema (the rules of `fast_check`, a few of them stricter:
    it leaves to Python what it is not sure of), or None if the module was not built."""
    try:
        from sluice.process._linecheck import LineChecker
    except ImportError:  # pragma: no cover - the install builds it; a test checks that it did
        return None
    nonempty = [(name, "S", True, False) for name in REQUIRED_STRINGS if name != "type"]
    return LineChecker(
        top=[("envelope", "E", True, False), ("payload", "P", False, True)],
        envelope=[
            *nonempty[:1],
            ("type", "T", True, False),
            *nonempty[1:],
            ("occurred_at", "s", True, False),
            ("schema_version", "I", True, False),
            ("batch_id", "s", False, True),
        ],
        payload=[(n, _CHECKER_KINDS[k], False, True) for n, k in _PAYLOAD_FIELDS.items()]
        + [("assertions", "A", False, True)],
        assertion=[(n, _CHECKER_KINDS[k], False, True) for n, k in ASSERTION_FIELDS.items()],
        types=[(t, _PAYLOAD_KNOWN[t]) for t in SPECS],
        max_line=MAX_LINE_BYTES,
    )


LINE_CHECKER = line_checker()


def check_lines(lines: list[bytes]) -> list[Checked]:
    """`fast_check` of every line: the compiled checker first, `fast_check` for the lines it
    leaves."""
    if LINE_CHECKER is None:
        return list(map(fast_check, lines))
    checked = cast(list[Checked], LINE_CHECKER.check(lines))
    for index in positions(checked, None):
        checked[index] = fast_check(lines[index])
    return checked
