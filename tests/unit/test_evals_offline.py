"""CI gate: the offline evaluation suites (scripted model) must pass every gate."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from evals.runner import EvalOptions, run_evals


async def test_offline_suites_pass_every_gate(tmp_path: Path) -> None:
    outcome = await run_evals(EvalOptions(suite="all", mode="offline", out=tmp_path / "out"))
    failed = [f"{g.name}: {g.message}" for g in outcome.failed_gates()]
    assert outcome.exit_code == 0, "eval gates failed:\n" + "\n".join(failed)
    assert outcome.summary["mode"] == "offline"
    for name in ("cases.jsonl", "summary.json", "junit.xml", "report.md"):
        assert (tmp_path / "out" / name).exists()
    ET.parse(tmp_path / "out" / "junit.xml")
