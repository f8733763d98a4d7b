"""Gates (thresholds per mode), critical cases, and regression against a baseline file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.config import EvalConfig
from evals.types import CaseResult, GateResult, HarnessError


def check_gates(
    metrics: dict[str, float], skipped: dict[str, str], config: EvalConfig, suites: set[str]
) -> list[GateResult]:
    out: list[GateResult] = []
    for gate in config.gates:
        suite = gate.metric.split(".", 1)[0]
        if suite in {"routing", "trajectory", "content", "retrieval"} and suite not in suites:
            continue  # suite not selected
        value = metrics.get(gate.metric)
        if value is None:
            reason = skipped.get(gate.metric) or skipped.get(f"{suite}.*") or "not measured"
            out.append(
                GateResult(gate.metric, "gate", "skipped", None, gate.threshold, gate.op, reason)
            )
            continue
        ok = value >= gate.threshold if gate.op == "min" else value <= gate.threshold
        sign = ">=" if gate.op == "min" else "<="
        out.append(
            GateResult(
                gate.metric,
                "gate",
                "passed" if ok else "failed",
                value,
                gate.threshold,
                sign,
                f"{value:g} {'' if ok else 'not '}{sign} {gate.threshold:g}",
            )
        )
    return out


def check_critical(cases: list[CaseResult]) -> list[GateResult]:
    return [
        GateResult(
            f"critical:{c.suite}.{c.name}",
            "critical",
            "failed",
            message="; ".join(c.failures)[:500] or "failed",
        )
        for c in cases
        if c.critical and c.passed is False
    ]


def load_baseline(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data["metrics"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"cannot read baseline {path}: {exc}") from exc


def write_baseline(path: Path, metrics: dict[str, float], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**meta, "metrics": dict(sorted(metrics.items()))}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def check_regressions(
    metrics: dict[str, float], baseline: dict[str, float], config: EvalConfig
) -> list[GateResult]:
    """Higher is better unless the metric's gate is a `max`; a move in the bad direction by more
    than the margin fails."""
    out: list[GateResult] = []
    for name, base in sorted(baseline.items()):
        if name in config.regression_ignore or name not in metrics:
            continue
        gate = config.gate_for(name)
        lower_better = gate is not None and gate.op == "max"
        value = metrics[name]
        drop = (value - base) if lower_better else (base - value)
        ok = drop <= config.regression_margin + 1e-9
        out.append(
            GateResult(
                f"regression:{name}",
                "regression",
                "passed" if ok else "failed",
                value,
                base,
                "vs baseline",
                f"{value:g} vs baseline {base:g} (margin {config.regression_margin:g})",
            )
        )
    return out
