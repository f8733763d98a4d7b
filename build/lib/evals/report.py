"""Reports written to `--out`: cases.jsonl (per case, with trajectories), summary.json,
junit.xml and report.md (failures first)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from evals.types import CaseResult, GateResult, SuiteResult


def write_cases(path: Path, suites: list[SuiteResult]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for suite in suites:
            for case in suite.cases:
                fh.write(json.dumps(case.to_json(), default=str) + "\n")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")


def _case_xml(parent: ET.Element, case: CaseResult) -> None:
    tc = ET.SubElement(
        parent,
        "testcase",
        classname=f"evals.{case.suite}",
        name=case.name,
        time=f"{case.latency_s:.3f}",
    )
    if case.passed is None:
        ET.SubElement(tc, "skipped", message="skipped")
    elif not case.passed:
        msg = "; ".join(case.failures) or "failed"
        node = ET.SubElement(tc, "error" if case.error else "failure", message=msg[:500])
        node.text = json.dumps({"trajectory": case.trajectory, "detail": case.detail}, default=str)[
            :4000
        ]


def write_junit(path: Path, suites: list[SuiteResult], gates: list[GateResult]) -> None:
    root = ET.Element("testsuites", name="mkt-evals")
    for suite in suites:
        ts = ET.SubElement(
            root,
            "testsuite",
            name=f"evals.{suite.name}",
            tests=str(max(1, len(suite.cases))),
            failures=str(sum(1 for c in suite.cases if c.passed is False and not c.error)),
            errors=str(sum(1 for c in suite.cases if c.passed is False and c.error)),
            skipped=str(1 if suite.skipped else sum(1 for c in suite.cases if c.passed is None)),
        )
        if suite.skipped:
            tc = ET.SubElement(ts, "testcase", classname=f"evals.{suite.name}", name="suite")
            ET.SubElement(tc, "skipped", message=suite.skip_reason or "skipped")
        for case in suite.cases:
            _case_xml(ts, case)
    gs = ET.SubElement(
        root,
        "testsuite",
        name="evals.gates",
        tests=str(len(gates)),
        failures=str(sum(1 for g in gates if g.status == "failed")),
        errors="0",
        skipped=str(sum(1 for g in gates if g.status == "skipped")),
    )
    for gate in gates:
        tc = ET.SubElement(gs, "testcase", classname=f"evals.gates.{gate.kind}", name=gate.name)
        if gate.status == "failed":
            ET.SubElement(tc, "failure", message=gate.message or "failed")
        elif gate.status == "skipped":
            ET.SubElement(tc, "skipped", message=gate.message or "skipped")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def markdown(summary: dict[str, Any], suites: list[SuiteResult], gates: list[GateResult]) -> str:
    failed_gates = [g for g in gates if g.status == "failed"]
    lines = [
        f"# Evaluation report — {'FAILED' if failed_gates else 'PASSED'}",
        "",
        f"- mode: **{summary['mode']}**, model: `{summary['model']}`, revision: `{summary['git_revision']}`",
        f"- cases: {summary['cases']['total']} ({summary['cases']['failed']} failed, "
        f"{summary['cases']['skipped']} skipped), repeat {summary['repeat']}",
        f"- tokens: {summary['tokens']['total']}, cost: ${summary['cost_usd']:.4f}, "
        f"latency p50 {_fmt(summary['latency']['p50_s'])} s, p95 {_fmt(summary['latency']['p95_s'])} s",
        "",
    ]
    if failed_gates:
        lines += [
            "## Failed gates",
            "",
            "| gate | value | threshold | message |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {g.name} | {_fmt(g.value)} | {_fmt(g.threshold)} | {g.message} |"
            for g in failed_gates
        ]
        lines.append("")
    failed_cases = [c for s in suites for c in s.cases if c.passed is False]
    if failed_cases:
        lines += ["## Failed cases", ""]
        for c in failed_cases:
            crit = " (critical)" if c.critical else ""
            lines.append(f"### {c.suite} / {c.name}{crit}")
            lines += [f"- {f}" for f in c.failures]
            if c.trajectory:
                lines.append(f"- trajectory: `{c.trajectory}`")
            lines.append("")
    lines += ["## Gates", "", "| gate | status | value | threshold |", "| --- | --- | --- | --- |"]
    order = {"failed": 0, "skipped": 1, "passed": 2}
    for g in sorted(gates, key=lambda g: (order[g.status], g.name)):
        lines.append(
            f"| {g.name} | {g.status.upper()} | {_fmt(g.value)} | {g.op} {_fmt(g.threshold)} |"
        )
    lines += ["", "## Suites", ""]
    for s in suites:
        if s.skipped:
            lines.append(f"- **{s.name}: SKIPPED** — {s.skip_reason}")
            continue
        passed = sum(1 for c in s.cases if c.passed)
        metrics = ", ".join(f"{k} {v:g}" for k, v in s.metrics.items())
        lines.append(f"- **{s.name}**: {passed}/{len(s.cases)} cases passed; {metrics}")
        for k, why in s.skipped_metrics.items():
            lines.append(f"  - {k}: SKIPPED — {why}")
    lines += [
        "",
        "## Tokens and cost by agent",
        "",
        "| agent | calls | input | output | cost USD |",
        "| --- | --- | --- | --- | --- |",
    ]
    for agent, u in summary["tokens"]["by_agent"].items():
        lines.append(
            f"| {agent} | {u['calls']} | {u['input_tokens']} | {u['output_tokens']} | {u['cost_usd']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write_all(
    out: Path, summary: dict[str, Any], suites: list[SuiteResult], gates: list[GateResult]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_cases(out / "cases.jsonl", suites)
    write_summary(out / "summary.json", summary)
    write_junit(out / "junit.xml", suites, gates)
    (out / "report.md").write_text(markdown(summary, suites, gates), encoding="utf-8")
