"""Planning and routing: what the supervisor decides for varied requests, and the plan policies."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from graphs.context import MarketingContext
from graphs.heuristic_plan import heuristic_plan
from graphs.planning import normalize_plan, resolve_publish_time
from graphs.schemas import Plan, PlanStep

CAMPAIGN = (
    "Research what runners say about carbon-plated trail shoes, write a launch blog post and "
    "LinkedIn + X posts for our TerraRun shoe, and schedule them for Tuesday 9am."
)


def routes(plan: Plan) -> list[tuple[str, str, list[str]]]:
    return [(s.id, s.agent, sorted(s.depends_on)) for s in plan.steps]


def test_campaign_plans_research_then_parallel_copy_then_publishing() -> None:
    plan = heuristic_plan(CAMPAIGN)
    assert plan.action == "execute"
    assert plan.topic == "TerraRun shoe"
    assert plan.publish_at == "Tuesday 9am"
    assert routes(plan) == [
        ("research", "research", []),
        ("blog", "content", ["research"]),
        ("post-x", "social", ["research"]),
        ("post-linkedin", "social", ["research"]),
        ("publish", "publishing", ["blog", "post-linkedin", "post-x"]),
    ]


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("Write a blog post about our TerraRun shoe", [("blog", "content")]),
        ("Research competitor pricing for the TerraRun shoe", [("research", "research")]),
        ("Draft an email newsletter about the TerraRun sale", [("email", "content")]),
        ("Write a landing page for our TerraRun shoe", [("landing-page", "content")]),
        ("Write an Instagram post for our TerraRun shoe", [("post-instagram", "social")]),
        (
            "Write Facebook and LinkedIn posts for our TerraRun shoe",
            [("post-linkedin", "social"), ("post-facebook", "social")],
        ),
    ],
)
def test_single_deliverables_route_to_one_agent_each(
    request_text: str, expected: list[tuple[str, str]]
) -> None:
    plan = heuristic_plan(request_text)
    assert plan.action == "execute"
    assert [(s.id, s.agent) for s in plan.steps] == expected
    assert not any(s.agent == "publishing" for s in plan.steps), "nothing publishes unasked"


@pytest.mark.parametrize("text", ["help me with marketing", "write something", "make it better"])
def test_ambiguous_requests_get_a_clarifying_question(text: str) -> None:
    plan = heuristic_plan(text)
    assert plan.action == "clarify"
    assert plan.question and plan.question.endswith("?")
    assert plan.steps == []


@pytest.mark.parametrize("text", ["What is the capital of France?", "Fix my Python segfault"])
def test_non_marketing_requests_are_declined(text: str) -> None:
    assert heuristic_plan(text).action == "decline"


def test_deliverable_without_topic_asks_for_the_product() -> None:
    plan = heuristic_plan("write a blog post")
    assert plan.action == "clarify"
    assert "product" in (plan.question or "")


ARTIFACTS = {
    "blog": {"kind": "blog", "platform": None, "status": "scheduled", "version": 1},
    "post-x": {"kind": "post", "platform": "x", "status": "scheduled", "version": 1},
    "post-linkedin": {"kind": "post", "platform": "linkedin", "status": "draft", "version": 1},
}


def test_follow_up_revises_the_referenced_artifact_and_reapproves_scheduled_ones() -> None:
    plan = heuristic_plan("make the X post shorter", artifacts=ARTIFACTS)
    assert routes(plan) == [
        ("revise-post-x", "social", []),
        ("publish", "publishing", ["revise-post-x"]),
    ]
    assert plan.steps[0].revise == "post-x"


def test_follow_up_on_a_draft_does_not_publish() -> None:
    plan = heuristic_plan("make the LinkedIn post more formal", artifacts=ARTIFACTS)
    assert [(s.id, s.revise) for s in plan.steps] == [("revise-post-linkedin", "post-linkedin")]


def test_same_for_a_new_platform_reuses_earlier_work_without_research() -> None:
    plan = heuristic_plan("now the same for Instagram", artifacts=ARTIFACTS, has_brief=True)
    assert routes(plan) == [("post-instagram", "social", [])]


def test_unclear_follow_up_asks_which_piece() -> None:
    plan = heuristic_plan("make it shorter", artifacts=ARTIFACTS)
    assert plan.action == "clarify"
    assert "post-x" in (plan.question or "")


# --- plan validation ---------------------------------------------------------------------------


def test_plan_rejects_cycles_unknown_dependencies_and_duplicates() -> None:
    def step(i: str, deps: list[str]) -> dict[str, object]:
        return {"id": i, "agent": "content", "task": "t", "depends_on": deps}

    with pytest.raises(ValidationError, match="cycle"):
        Plan(action="execute", steps=[step("a", ["b"]), step("b", ["a"])])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="unknown steps"):
        Plan(action="execute", steps=[step("a", ["zzz"])])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="duplicate"):
        Plan(action="execute", steps=[step("a", []), step("a", [])])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="needs a platform"):
        PlanStep(id="p", agent="social", task="t")
    with pytest.raises(ValidationError, match="question"):
        Plan(action="clarify")


# --- plan policies -----------------------------------------------------------------------------


def test_policies_drop_disabled_platforms_and_add_dependencies() -> None:
    ctx = MarketingContext(platforms=["x"])
    proposed = Plan(
        action="execute",
        topic="TerraRun",
        steps=[
            PlanStep(id="research", agent="research", task="r"),
            PlanStep(id="post-x", agent="social", task="x", platform="twitter"),
            PlanStep(id="post-ig", agent="social", task="ig", platform="instagram"),
            PlanStep(id="post-tt", agent="social", task="tt", platform="tiktok"),
            PlanStep(id="publish", agent="publishing", task="p"),
        ],
    )
    plan, notes = normalize_plan(proposed, ctx, {})
    assert routes(plan) == [
        ("research", "research", []),
        ("post-x", "social", ["research"]),
        ("publish", "publishing", ["post-x"]),
    ]
    assert plan.steps[1].platform == "x"  # alias resolved
    assert any("instagram is not enabled" in n for n in notes)
    assert any("unknown platform 'tiktok'" in n for n in notes)


def test_policies_turn_an_all_dropped_plan_into_a_question() -> None:
    ctx = MarketingContext(platforms=["x"])
    proposed = Plan(
        action="execute", steps=[PlanStep(id="ig", agent="social", task="t", platform="instagram")]
    )
    plan, _ = normalize_plan(proposed, ctx, {})
    assert plan.action == "clarify"


def test_policies_merge_research_and_reapprove_scheduled_revisions() -> None:
    proposed = Plan(
        action="execute",
        steps=[
            PlanStep(id="r1", agent="research", task="one"),
            PlanStep(id="r2", agent="research", task="two"),
            PlanStep(
                id="fix-x",
                agent="social",
                task="shorter",
                platform="x",
                revise="post-x",
                depends_on=["r2"],
            ),
        ],
    )
    plan, notes = normalize_plan(proposed, MarketingContext(), ARTIFACTS)
    assert routes(plan) == [
        ("r1", "research", []),
        ("fix-x", "social", ["r1"]),
        ("publish", "publishing", ["fix-x"]),
    ]
    assert plan.steps[0].task == "one two"
    assert any("approval step" in n for n in notes)


def test_publish_time_is_read_in_the_run_time_zone_and_in_the_future() -> None:
    ctx = MarketingContext(timezone="Europe/Berlin")
    sunday = datetime(2026, 11, 22, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert resolve_publish_time("Tuesday 9am", ctx, now=sunday) == "2026-11-24T09:00+01:00"
    assert resolve_publish_time("tomorrow at 10:30", ctx, now=sunday) == "2026-11-23T10:30+01:00"
    assert resolve_publish_time("when the moon is blue", ctx, now=sunday) is None
