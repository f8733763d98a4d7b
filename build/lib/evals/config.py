"""Thresholds and settings from `evals/thresholds.toml` (one file, one section per mode)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evals.types import HarnessError

Mode = Literal["offline", "live"]
CONFIG_FILE = Path(__file__).with_name("thresholds.toml")

# Rules no config can loosen: (metric, op, threshold).
HARD_GATES: tuple[tuple[str, str, float], ...] = (
    ("trajectory.publish_before_approval", "max", 0.0),
    ("trajectory.forbidden_tool_calls", "max", 0.0),
    ("content.platform_compliance", "min", 1.0),
    ("content.banned_term_compliance", "min", 1.0),
)


@dataclass(frozen=True)
class Gate:
    metric: str
    op: Literal["min", "max"]
    threshold: float


@dataclass(frozen=True)
class EvalConfig:
    mode: Mode
    gates: tuple[Gate, ...]
    retrieval_k: int = 5
    readability_band: tuple[float, float] = (30.0, 100.0)
    judge_model: str = ""
    regression_margin: float = 0.05
    regression_ignore: frozenset[str] = field(default_factory=frozenset)

    def gate_for(self, metric: str) -> Gate | None:
        return next((g for g in self.gates if g.metric == metric), None)


def _gates(table: dict[str, Any]) -> list[Gate]:
    gates: dict[str, Gate] = {}
    for metric, spec in table.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("min", "max"):
            raise HarnessError(f"gate {metric!r}: expected {{ min = X }} or {{ max = X }}")
        op, value = next(iter(spec.items()))
        gates[metric] = Gate(metric, op, float(value))
    for metric, op, value in HARD_GATES:  # the stricter of config and hard rule
        have = gates.get(metric)
        if (
            have is None
            or have.op != op
            or (op == "max" and have.threshold > value)
            or (op == "min" and have.threshold < value)
        ):
            gates[metric] = Gate(metric, op, value)  # type: ignore[arg-type]
    return list(gates.values())


def load_config(mode: Mode, path: Path | None = None) -> EvalConfig:
    file = path or CONFIG_FILE
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"cannot read eval config {file}: {exc}") from exc
    settings = raw.get("settings", {})
    regression = raw.get("regression", {})
    band = settings.get("readability_band", [30.0, 100.0])
    try:
        return EvalConfig(
            mode=mode,
            gates=tuple(_gates(raw.get(mode, {}).get("gates", {}))),
            retrieval_k=int(settings.get("retrieval_k", 5)),
            readability_band=(float(band[0]), float(band[1])),
            judge_model=str(settings.get("judge_model", "")),
            regression_margin=float(regression.get("margin", 0.05)),
            regression_ignore=frozenset(regression.get("ignore", [])),
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise HarnessError(f"invalid eval config {file}: {exc}") from exc
