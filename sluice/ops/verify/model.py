"""What `verify` returns: one result per check and table, each made of findings with a verdict,
the numbers behind it, samples of the offenders and the command that fixes them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    PASS = "PASS"
    WARN = "WARN"  # worth a look, not a broken lake (e.g. a day not compacted yet, no data)
    FAIL = "FAIL"


class Check(StrEnum):
    DUPLICATES = "duplicates"
    COUNTS = "counts"
    QUALITY = "quality"


_RANK = {Verdict.PASS: 0, Verdict.WARN: 1, Verdict.FAIL: 2}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=_RANK.__getitem__, default=Verdict.PASS)


@dataclass(frozen=True)
class Finding:
    """One sub-check, e.g. `pipeline_duplicates` or `rows_in_files`."""

    name: str
    verdict: Verdict
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    hint: str | None = None  # the command that fixes or explains it


@dataclass(frozen=True)
class CheckResult:
    check: Check
    table: str
    verdict: Verdict
    findings: list[Finding]

    @classmethod
    def of(cls, check: Check, table: str, findings: list[Finding]) -> CheckResult:
        return cls(check, table, worst(f.verdict for f in findings), findings)


@dataclass(frozen=True)
class VerifyReport:
    day: str
    tables: list[str]
    checks: list[Check]
    verdict: Verdict
    has_data: bool  # any verified row or ledger output on the day, in any table checked
    results: list[CheckResult]
    seconds: float

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAIL
