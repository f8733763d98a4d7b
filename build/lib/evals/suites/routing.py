"""Routing: does the supervisor send a request to the right sub-agents (or ask, or decline)?

Metrics: action accuracy; first-route accuracy and route-set F1 over `execute` cases;
clarification and decline accuracy over the cases that expect them."""

from __future__ import annotations

from evals.datasets import RoutingCase, Turn
from evals.harness import agents_run, run_conversation, trajectory_of
from evals.metrics import mean, ratio, set_f1
from evals.suites import DatasetSuite, SuiteEnv
from evals.types import CaseResult

AGENT_TOKENS = {"research", "content", "social", "publishing"}


class RoutingSuite(DatasetSuite):
    name = "routing"
    case_type = RoutingCase

    async def run_case(self, case: RoutingCase, env: SuiteEnv) -> CaseResult:
        turns = [Turn(request=r) for r in [*case.history, case.request]]
        tr = await run_conversation(env.runner, turns, case.context)
        last = tr.turn_events(len(turns) - 1)
        plans = [e for e in last if e["type"] == "plan"]
        action = plans[0]["action"] if plans else None
        agents = agents_run(last)
        waves = [g for g in trajectory_of(last) if set(g) <= AGENT_TOKENS]
        first = sorted(set(waves[0])) if waves else []
        res = CaseResult(
            suite=self.name,
            case_id=case.id,
            passed=None,
            critical=case.critical,
            trajectory=trajectory_of(tr.events),
            events=tr.events,
            usage=tr.usage,
            latency_s=tr.latency_s,
            error=tr.error,
            detail={
                "request": case.request,
                "expected": {"action": case.action, "agents": case.agents, "first": case.first},
                "actual": {"action": action, "agents": sorted(set(agents)), "first": first},
            },
        )
        res.checks["action"] = action == case.action
        if case.action == "execute":
            res.checks["first_route"] = action == "execute" and first == sorted(set(case.first))
            res.scores["route_set_f1"] = set_f1(agents, case.agents) if action == "execute" else 0.0
            res.checks["route_set"] = res.scores["route_set_f1"] == 1.0
        for name, ok in res.checks.items():
            if not ok:
                res.failures.append(
                    f"{name}: expected {res.detail['expected']}, got {res.detail['actual']}"
                )
        if tr.error:
            res.failures.append(f"error: {tr.error}")
        res.passed = not res.failures
        return res

    def aggregate(
        self, results: list[CaseResult], env: SuiteEnv
    ) -> tuple[dict[str, float], dict[str, str]]:
        def expected(r: CaseResult) -> str:
            return str(r.detail["expected"]["action"])

        execute = [r for r in results if expected(r) == "execute"]
        metrics: dict[str, float | None] = {
            "action_accuracy": ratio(bool(r.checks.get("action")) for r in results),
            "first_route_accuracy": ratio(bool(r.checks.get("first_route")) for r in execute),
            "route_set_f1": mean(r.scores.get("route_set_f1", 0.0) for r in execute),
            "clarification_accuracy": ratio(
                bool(r.checks["action"]) for r in results if expected(r) == "clarify"
            ),
            "decline_accuracy": ratio(
                bool(r.checks["action"]) for r in results if expected(r) == "decline"
            ),
        }
        done = {k: round(v, 4) for k, v in metrics.items() if v is not None}
        missing = {k: "no cases of this kind" for k, v in metrics.items() if v is None}
        return done, missing
