"""Result records shared by the suites, the gates and the reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SuiteName = Literal["routing", "trajectory", "content", "retrieval"]
SUITES: tuple[SuiteName, ...] = ("routing", "trajectory", "content", "retrieval")


class HarnessError(RuntimeError):
    """The harness itself cannot run (bad dataset, config or baseline): exit code 2."""


@dataclass
class CaseResult:
    suite: str
    case_id: str
    passed: bool | None  # None = skipped
    repeat: int = 0
    critical: bool = False
    checks: dict[str, bool | None] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    trajectory: list[list[str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_s: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.case_id}#{self.repeat}" if self.repeat else self.case_id

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SuiteResult:
    name: str
    cases: list[CaseResult] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    skipped_metrics: dict[str, str] = field(default_factory=dict)  # metric -> reason
    skip_reason: str | None = None  # the whole suite was skipped

    @property
    def skipped(self) -> bool:
        return self.skip_reason is not None


@dataclass
class GateResult:
    name: str  # "routing.route_set_f1", "regression:routing.route_set_f1", "critical:..."
    kind: Literal["gate", "regression", "critical"]
    status: Literal["passed", "failed", "skipped"]
    value: float | None = None
    threshold: float | None = None
    op: str = ""
    message: str = ""
