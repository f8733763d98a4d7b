"""The eval harness itself: metrics, gates, a broken router, a graph that publishes before
approval, skipped suites and judges, baselines, and the JUnit file."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.models import ModelFactory
from app.runner import Runner
from app.scripted import ScriptedChatModel
from app.settings import Settings
from evals.config import Gate, load_config
from evals.gates import check_gates, check_regressions
from evals.metrics import percentile, recall_at_k, reciprocal_rank, set_f1
from evals.runner import EvalOptions, main, run_evals
from evals.suites.trajectory import trajectory_matches
from evals.types import HarnessError
from graphs.context import MarketingContext
from tools.knowledge import EmptyKnowledgeBase, KBHit

# --- metrics ---------------------------------------------------------------------------------


def test_retrieval_metrics() -> None:
    assert recall_at_k(["a", "b", "c"], ["a", "c"], 2) == 0.5
    assert recall_at_k(["a", "b", "c"], ["a", "c"], 3) == 1.0
    assert recall_at_k([], ["a"], 5) == 0.0
    assert reciprocal_rank(["x", "y", "a"], ["a"]) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"], ["a"]) == 0.0


def test_set_f1_and_percentiles() -> None:
    assert set_f1(["research", "content"], ["research", "content"]) == 1.0
    assert set_f1(["research"], ["research", "content"]) == pytest.approx(2 / 3)
    assert set_f1([], []) == 1.0
    assert set_f1(["social"], ["content"]) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    assert percentile([], 50) is None


def test_trajectory_match_modes() -> None:
    ref = [["plan:execute"], ["content", "social"], ["final"]]
    assert trajectory_matches([["plan:execute"], ["social", "content"], ["final"]], ref, "strict")
    assert not trajectory_matches(
        [["plan:execute"], ["final"], ["content", "social"]], ref, "strict"
    )
    assert trajectory_matches(
        [["plan:execute"], ["final"], ["content", "social"]], ref, "unordered"
    )


# --- config, gates, baseline ------------------------------------------------------------------


def test_hard_gates_cannot_be_loosened(tmp_path: Path) -> None:
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(
        '[offline.gates]\n"trajectory.publish_before_approval" = { max = 3 }\n'
        '"content.platform_compliance" = { min = 0.5 }\n'
    )
    cfg = load_config("offline", cfg_file)
    assert cfg.gate_for("trajectory.publish_before_approval") == Gate(
        "trajectory.publish_before_approval", "max", 0.0
    )
    assert cfg.gate_for("content.platform_compliance") == Gate(
        "content.platform_compliance", "min", 1.0
    )
    assert cfg.gate_for("trajectory.forbidden_tool_calls") is not None


def test_skipped_metric_is_never_passed() -> None:
    cfg = load_config("live")
    gates = check_gates(
        {"content.platform_compliance": 1.0},
        {"content.judge_brand_voice": "LLM-as-judge runs in live mode only"},
        cfg,
        {"content"},
    )
    judge = next(g for g in gates if g.name == "content.judge_brand_voice")
    assert judge.status == "skipped"
    assert "live mode only" in judge.message


def test_regression_against_baseline() -> None:
    cfg = load_config("offline")
    gates = check_regressions(
        {"routing.route_set_f1": 0.80, "routing.decline_accuracy": 1.0, "latency.p95_s": 9.0},
        {"routing.route_set_f1": 0.95, "routing.decline_accuracy": 0.97, "latency.p95_s": 1.0},
        cfg,
    )
    by_name = {g.name: g.status for g in gates}
    assert by_name["regression:routing.route_set_f1"] == "failed"
    assert by_name["regression:routing.decline_accuracy"] == "passed"
    assert "regression:latency.p95_s" not in by_name  # ignored: noisy


# --- a deliberately broken router makes the routing gate fail ----------------------------------


class BrokenRouterModel(ScriptedChatModel):
    """Routes every request to research only."""

    def _plan(self, task: dict[str, str]) -> dict[str, Any]:
        return {
            "action": "execute",
            "topic": "anything",
            "steps": [{"id": "research", "agent": "research", "task": "Research it."}],
        }


class BrokenRouterFactory(ModelFactory):
    def _build(self, name: str) -> Any:
        return BrokenRouterModel()


async def test_broken_router_fails_routing_gate(tmp_path: Path) -> None:
    factory = BrokenRouterFactory(Settings(model_provider="scripted", data_dir=tmp_path / "d"))
    outcome = await run_evals(
        EvalOptions(suite="routing", mode="offline", out=tmp_path / "out"), factory=factory
    )
    assert outcome.exit_code == 1
    failed = {g.name for g in outcome.failed_gates()}
    assert {
        "routing.first_route_accuracy",
        "routing.route_set_f1",
        "routing.decline_accuracy",
    } <= failed
    assert any(name.startswith("critical:routing.") for name in failed)
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.index("## Failed gates") < report.index("## Gates")


# --- a graph that publishes before approval is caught ------------------------------------------


class LeakyRunner(Runner):
    """Writes each pending item to the outbox before it is approved (the bug to catch)."""

    async def _run(
        self, thread_id: str, payload: Any, ctx: MarketingContext, before: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async for event in super()._run(thread_id, payload, ctx, before):
            if event["type"] == "approval":
                args = event["request"]["action_request"]["args"]
                from datetime import UTC, datetime

                await self.storage.db.enqueue(
                    thread_id=thread_id,
                    artifact_id=args["artifact_id"],
                    version=args["version"],
                    platform=args["channel"],
                    kind="post",
                    title=args["title"],
                    body=args["body"],
                    scheduled_at=datetime.now(UTC),
                )
            yield event


async def test_publish_before_approval_is_caught(tmp_path: Path) -> None:
    outcome = await run_evals(
        EvalOptions(suite="trajectory", mode="offline", out=tmp_path / "out"),
        runner_cls=LeakyRunner,
    )
    assert outcome.exit_code == 1
    gate = next(g for g in outcome.gates if g.name == "trajectory.publish_before_approval")
    assert gate.status == "failed" and (gate.value or 0) > 0
    ignored = next(c for s in outcome.suites for c in s.cases if c.case_id == "x-ignore")
    assert ignored.passed is False
    assert any("before its approval" in f for f in ignored.failures)


# --- retrieval: skipped without a knowledge base, measured with one ----------------------------


class KeywordKB:
    name = "keyword-test-double"

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []

    def add_documents(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs

    async def search(
        self, query: str, *, k: int = 5, brand: str | None = None, tenant: str = "default"
    ) -> list[KBHit]:
        words = {w.strip("?.,").lower() for w in query.split() if len(w) > 3}
        scored = []
        for d in self.docs:
            text = f"{d['title']} {d['text']}".lower()
            scored.append((sum(w in text for w in words), d))
        scored.sort(key=lambda x: -x[0])
        return [
            KBHit(id=d["id"], title=d["title"], text=d["text"], source=d["source"], score=float(s))
            for s, d in scored[:k]
            if s > 0
        ]


async def test_retrieval_skipped_without_kb_and_measured_with_one(tmp_path: Path) -> None:
    skipped = await run_evals(
        EvalOptions(suite="retrieval", mode="offline", out=tmp_path / "a"),
        knowledge_base=EmptyKnowledgeBase(),
    )
    suite = skipped.suites[0]
    assert suite.skipped and "EmptyKnowledgeBase" in (suite.skip_reason or "")
    assert {g.status for g in skipped.gates if g.name.startswith("retrieval.")} == {"skipped"}
    junit = ET.parse(tmp_path / "a" / "junit.xml").getroot()
    assert junit.find(".//testsuite[@name='evals.retrieval']/testcase/skipped") is not None

    measured = await run_evals(
        EvalOptions(suite="retrieval", mode="offline", out=tmp_path / "b"),
        knowledge_base=KeywordKB(),
    )
    metrics = measured.suites[0].metrics
    assert 0.0 < metrics["recall_at_k"] <= 1.0 and 0.0 < metrics["mrr"] <= 1.0


async def test_retrieval_runs_against_the_real_knowledge_base_by_default(tmp_path: Path) -> None:
    """`open_runner` installs the Qdrant knowledge base; the suite seeds it once, even with
    cases running concurrently, and passes its gates."""
    out = await run_evals(
        EvalOptions(suite="retrieval", mode="offline", out=tmp_path / "c", concurrency=8)
    )
    suite = out.suites[0]
    assert not suite.skipped
    assert suite.metrics["recall_at_k"] >= 0.8 and suite.metrics["mrr"] >= 0.6
    assert {g.status for g in out.gates if g.name.startswith("retrieval.")} == {"passed"}


# --- reports, baseline, exit codes ---------------------------------------------------------------


async def test_reports_and_baseline_round_trip(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    opts = EvalOptions(
        suite="trajectory",
        mode="offline",
        out=tmp_path / "out",
        baseline=baseline,
        update_baseline=True,
    )
    first = await run_evals(opts)
    assert first.exit_code == 0 and baseline.exists()
    data = json.loads(baseline.read_text())
    assert data["mode"] == "offline" and "trajectory.match_rate" in data["metrics"]
    # a baseline better than reality makes the run fail on regression
    data["metrics"]["trajectory.match_rate"] = 2.0
    baseline.write_text(json.dumps(data))
    opts.update_baseline = False
    second = await run_evals(opts)
    assert second.exit_code == 1
    assert any(g.name == "regression:trajectory.match_rate" for g in second.failed_gates())

    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert root.find(".//testsuite[@name='evals.trajectory']") is not None
    gates = root.find(".//testsuite[@name='evals.gates']")
    assert gates is not None and int(gates.get("failures", "0")) >= 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for key in ("mode", "model", "git_revision", "metrics", "tokens", "cost_usd", "latency"):
        assert key in summary
    cases = [
        json.loads(line) for line in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()
    ]
    assert cases and all("trajectory" in c for c in cases)


def test_main_exit_code_2_on_harness_error(tmp_path: Path) -> None:
    assert main(suite="nope", mode="offline", out=tmp_path / "o", progress=False) == 2


def test_live_mode_without_a_model_is_a_harness_error(tmp_path: Path) -> None:
    assert main(suite="routing", mode="live", out=tmp_path / "o", progress=False) == 2


def test_bad_dataset_is_a_harness_error(tmp_path: Path) -> None:
    from evals.datasets import RoutingCase, load_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "request": "hi"}\n')
    with pytest.raises(HarnessError, match=r"bad.jsonl:1"):
        load_jsonl(bad, RoutingCase)


async def test_a_judge_score_outside_the_scale_is_an_error_not_a_grade() -> None:
    import pytest

    from evals.judge import JudgeOutputError, judge_score

    async def wild(*, inputs: str, outputs: str) -> dict[str, float]:
        return {"score": 2.9}

    async def fine(*, inputs: str, outputs: str) -> dict[str, float]:
        return {"score": 0.8}

    with pytest.raises(JudgeOutputError, match="outside"):
        await judge_score(wild, "brand", "copy")
    assert await judge_score(fine, "brand", "copy") == 0.8


def test_bad_arguments_are_harness_errors_with_exit_code_2(tmp_path: Path) -> None:
    from evals.runner import main

    assert main("bogus", "offline", None, 1, 1, None, False, tmp_path / "o") == 2
    assert (
        main("routing", "offline", None, 1, 1, tmp_path / "missing.json", False, tmp_path / "o")
        == 2
    )
