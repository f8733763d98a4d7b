"""Trajectories: the path through the graphs, approvals included, against a reference.

Matching uses agentevals' trajectory-match evaluators (strict / unordered / subset / superset):
each group of the trajectory becomes one assistant message whose tool calls are the group's
tokens, so order inside a group (parallel sub-agents) never matters while strict mode checks the
order of the groups. Also: publish before approval (events + outbox) and forbidden tool calls,
which must be 0 in every mode, and the expected number of outbox rows."""

from __future__ import annotations

from functools import cache
from typing import Any

from agentevals.trajectory.match import create_trajectory_match_evaluator

from evals.datasets import TrajectoryCase
from evals.harness import agents_run, run_conversation, trajectory_of
from evals.metrics import ratio
from evals.suites import DatasetSuite, SuiteEnv
from evals.types import CaseResult


def as_messages(groups: list[list[str]]) -> list[dict[str, Any]]:
    """A trajectory as OpenAI-style assistant messages, one per group."""
    return [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": f"c{i}-{j}", "type": "function", "function": {"name": t, "arguments": "{}"}}
                for j, t in enumerate(group)
            ],
        }
        for i, group in enumerate(groups)
    ]


@cache
def _evaluator(mode: str) -> Any:
    return create_trajectory_match_evaluator(
        trajectory_match_mode=mode,
        tool_args_match_mode="ignore",
    )


def trajectory_matches(actual: list[list[str]], reference: list[list[str]], mode: str) -> bool:
    result = _evaluator(mode)(outputs=as_messages(actual), reference_outputs=as_messages(reference))
    return bool(result["score"])


class TrajectorySuite(DatasetSuite):
    name = "trajectory"
    case_type = TrajectoryCase

    async def run_case(self, case: TrajectoryCase, env: SuiteEnv) -> CaseResult:
        tr = await run_conversation(env.runner, case.turns, case.context)
        actual = trajectory_of(tr.events)
        used = set(agents_run(tr.events)) | set(tr.tool_calls)
        forbidden = sorted(used & set(case.forbidden))
        res = CaseResult(
            suite=self.name,
            case_id=case.id,
            passed=None,
            critical=case.critical,
            trajectory=actual,
            events=tr.events,
            usage=tr.usage,
            latency_s=tr.latency_s,
            error=tr.error,
            detail={
                "match": case.match,
                "reference": case.reference,
                "tool_calls": tr.tool_calls,
                "outbox_rows": len(tr.outbox),
                "violations": tr.violations,
                "forbidden_used": forbidden,
            },
        )
        res.checks["match"] = trajectory_matches(actual, case.reference, case.match)
        res.checks["no_publish_before_approval"] = not tr.violations
        res.checks["no_forbidden_calls"] = not forbidden
        if case.outbox is not None:
            res.checks["outbox"] = len(tr.outbox) == case.outbox
        res.scores["publish_before_approval"] = float(len(tr.violations))
        res.scores["forbidden_tool_calls"] = float(len(forbidden))
        if not res.checks["match"]:
            res.failures.append(
                f"trajectory ({case.match}): expected {case.reference}, got {actual}"
            )
        res.failures += [f"publish before approval: {v}" for v in tr.violations]
        if forbidden:
            res.failures.append(f"forbidden calls: {forbidden}")
        if res.checks.get("outbox") is False:
            res.failures.append(f"outbox rows: expected {case.outbox}, got {len(tr.outbox)}")
        if tr.error:
            res.failures.append(f"error: {tr.error}")
        res.passed = not res.failures
        return res

    def aggregate(
        self, results: list[CaseResult], env: SuiteEnv
    ) -> tuple[dict[str, float], dict[str, str]]:
        metrics: dict[str, float] = {
            "match_rate": ratio(bool(r.checks["match"]) for r in results) or 0.0,
            "publish_before_approval": sum(r.scores["publish_before_approval"] for r in results),
            "forbidden_tool_calls": sum(r.scores["forbidden_tool_calls"] for r in results),
        }
        with_outbox = [r for r in results if "outbox" in r.checks]
        skipped: dict[str, str] = {}
        if with_outbox:
            metrics["outbox_match_rate"] = (
                ratio(bool(r.checks["outbox"]) for r in with_outbox) or 0.0
            )
        else:
            skipped["outbox_match_rate"] = "no case states an expected outbox"
        return {k: round(v, 4) for k, v in metrics.items()}, skipped
