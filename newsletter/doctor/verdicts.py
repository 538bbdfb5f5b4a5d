"""What each check says: a verdict and why."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Seconds each SMTP or DNS step may take before it counts as no answer.
DEFAULT_TIMEOUT = 5.0


class Verdict(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, its verdict and why."""

    name: str
    verdict: Verdict
    detail: str


def ok(name: str, detail: str) -> Check:
    return Check(name, Verdict.OK, detail)


def warning(name: str, detail: str) -> Check:
    return Check(name, Verdict.WARNING, detail)


def problem(name: str, detail: str) -> Check:
    return Check(name, Verdict.PROBLEM, detail)
