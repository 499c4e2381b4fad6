from collections.abc import Iterable, Sequence
from typing import Literal

# (name, kind, required, nullable); kinds are listed in _linecheck.c
_Field = tuple[str, str, bool, bool]

class LineChecker:
    def __init__(
        self,
        top: Sequence[_Field],
        envelope: Sequence[_Field],
        payload: Sequence[_Field],
        assertion: Sequence[_Field],
        types: Sequence[tuple[str, Iterable[str]]],
        max_line: int,
    ) -> None: ...
    def check(self, lines: list[bytes]) -> list[Literal[True] | None]: ...
