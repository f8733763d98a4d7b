"""A keyword planner: the scripted model's planning brain and the fallback when a real model's
plan is unusable. Deterministic, explainable, and deliberately simple: it reads which deliverables
a request names, which existing artifacts a follow-up refers to, and when to publish.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from graphs.schemas import Plan, PlanStep
from tools.platforms import known_platforms

_PLATFORM_WORDS: dict[str, tuple[str, ...]] = {
    "x": (r"\bx\b", r"\btwitter\b", r"\btweets?\b"),
    "linkedin": (r"\blinked\s*in\b",),
    "instagram": (r"\binstagram\b", r"\binsta\b", r"\big\b"),
    "facebook": (r"\bfacebook\b", r"\bfb\b"),
}
_KIND_WORDS: dict[str, tuple[str, ...]] = {
    "blog": (r"\bblog\b", r"\barticle\b", r"\blong[- ]form\b"),
    "email": (r"\be-?mail\b", r"\bnewsletter\b"),
    "landing_page": (r"\blanding\s*page\b",),
}
_RESEARCH = (
    r"\bresearch\w*",
    r"\bwhat .* say\b",
    r"\bcompetitor",
    r"\bmarket analysis\b",
    r"\binsights?\b",
)
_PUBLISH = (r"\bpublish\w*", r"\bschedul\w*", r"\bgo live\b", r"\bpost (them|it|these)\b")
_CAMPAIGN = (r"\bcampaign\b",)
_LAUNCH = (r"\blaunch\b",)
_SOCIAL = (r"\bsocial\b", r"(?<!blog )\bposts?\b")
_REVISE = (
    r"\bshorter\b",
    r"\blonger\b",
    r"\brewrite\b",
    r"\brevise\b",
    r"\bpunchier\b",
    r"\bedit\b",
    r"\bmore (formal|casual|playful|concise|fun)\b",
    r"\bless\b",
    r"\bfix\b",
    r"\bchange\b",
    r"\bmake (it|the)\b",
    r"\btweak\b",
    r"\bimprove\b",
)
_SAME = (r"\bsame\b", r"\balso\b", r"\bas well\b", r"\btoo\b")
_MARKETING = (
    *_RESEARCH,
    *_PUBLISH,
    *_CAMPAIGN,
    *_LAUNCH,
    *_SOCIAL,
    r"\bmake (it|this|them)\b",
    r"\bmarketing\b",
    r"\bcopy\b",
    r"\bcontent\b",
    r"\bhashtags?\b",
    r"\bbrand\b",
    r"\baudience\b",
    r"\bads?\b",
    r"\bpromot\w*",
    r"\bwrite\b",
    r"\bdraft\b",
)
_VAGUE_TOPIC = {"it", "this", "that", "something", "stuff", "things", "us", "me", "them", "our"}


def _has(text: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, text) for p in patterns)


def mentioned_platforms(text: str) -> list[str]:
    low = text.lower()
    return [p for p, pats in _PLATFORM_WORDS.items() if _has(low, pats)]


_TOPIC_END = r"(?=\s*(?:[,.;:!?]|\band\b|\bon\b|\bfor\b|\bto\b|\bschedul|\bpublish|\bwith\b|\bin\b|\babout\b|$))"
_TOPIC_PATTERNS = (
    # "for our TerraRun shoe" names the product; "about carbon plates" names a subject
    r"\bfor\s+(?:our|my)\s+([A-Za-z0-9][\w\-' ]{1,60}?)" + _TOPIC_END,
    r"\b(?:for|about|on|promoting|announcing|launching)\s+(?:our|the|my|a|an)?\s*"
    r"([A-Za-z0-9][\w\-' ]{1,60}?)" + _TOPIC_END,
)


def extract_topic(text: str) -> str:
    """The product or subject: 'for our TerraRun shoe' -> 'TerraRun shoe'."""
    for pattern in _TOPIC_PATTERNS:
        for m in re.finditer(pattern, text):
            topic = m.group(1).strip()
            if topic.lower() not in _VAGUE_TOPIC and not mentioned_platforms(topic):
                return topic
    caps = re.findall(r"\b[A-Z][a-z]+[A-Z][A-Za-z]+\b", text)  # CamelCase product names
    return caps[0] if caps else ""


def publish_phrase(text: str) -> str | None:
    """The time expression in the request, e.g. 'Tuesday 9am', or None."""
    from dateparser.search import search_dates

    found = search_dates(text, languages=["en"], settings={"PREFER_DATES_FROM": "future"})
    if not found:
        return None
    # ignore bare numbers and words dateparser over-eagerly reads as dates
    for phrase, _ in found:
        if (
            re.search(r"[a-zA-Z]", phrase)
            and len(phrase) > 2
            and phrase.lower() not in {"now", "x"}
        ):
            return phrase
    return None


def heuristic_plan(
    request: str,
    *,
    artifacts: Mapping[str, Mapping[str, Any]] | None = None,
    allowed_platforms: Sequence[str] | None = None,
    has_brief: bool = False,
) -> Plan:
    text = request.strip()
    low = text.lower()
    artifacts = artifacts or {}
    allowed = list(allowed_platforms or known_platforms())
    platforms = mentioned_platforms(text)
    kinds = [k for k, pats in _KIND_WORDS.items() if _has(low, pats)]
    wants_research = _has(low, _RESEARCH)
    wants_publish = _has(low, _PUBLISH)
    # "campaign" asks for the whole set; "launch" only when no single deliverable is named
    campaign = _has(low, _CAMPAIGN) or (_has(low, _LAUNCH) and not platforms and not kinds)
    topic = extract_topic(text)
    when = publish_phrase(text) if wants_publish else None

    about_marketing = _has(low, _MARKETING) or (bool(artifacts) and _has(low, _REVISE))
    if not about_marketing and not platforms and not kinds:
        return Plan(
            action="decline",
            reasoning="The request is not about marketing research, copy, social posts or publishing.",
        )

    steps: list[PlanStep] = []

    # --- follow-ups on earlier artifacts --------------------------------------------------------
    if artifacts and _has(low, _REVISE) and not (campaign and not platforms and not kinds):
        targets: list[str] = []
        for p in platforms:
            targets += [a for a, art in artifacts.items() if art.get("platform") == p]
        for k in kinds:
            targets += [a for a, art in artifacts.items() if art.get("kind") == k]
        if not targets and len(artifacts) == 1:
            targets = list(artifacts)
        if not targets and re.search(r"\b(posts?|tweets?)\b", low):
            targets = [a for a, art in artifacts.items() if art.get("kind") == "post"]
        if targets:
            for aid in dict.fromkeys(targets):
                art = artifacts[aid]
                agent = "social" if art.get("kind") == "post" else "content"
                steps.append(
                    PlanStep(
                        id=f"revise-{aid}",
                        agent=agent,
                        task=f"Revise the existing {aid}: {text}",
                        platform=art.get("platform") if agent == "social" else None,
                        revise=aid,
                    )
                )
            republish = [
                s.id for s in steps if artifacts[s.revise or ""].get("status") == "scheduled"
            ]
            if wants_publish or republish:
                steps.append(
                    PlanStep(
                        id="publish",
                        agent="publishing",
                        task="Ask approval for the revised items and schedule them.",
                        depends_on=[s.id for s in steps],
                    )
                )
            return Plan(
                action="execute",
                topic=topic,
                steps=steps,
                publish_at=when,
                reasoning="Follow-up: revise the referenced earlier output.",
            )
        return Plan(
            action="clarify",
            topic=topic,
            question="Which piece should I change: " + ", ".join(sorted(artifacts)) + "?",
            reasoning="A change was asked for but it is unclear which earlier output it refers to.",
        )

    # --- "now the same for Instagram" -----------------------------------------------------------
    if artifacts and platforms and _has(low, _SAME) and not kinds:
        for p in platforms:
            steps.append(
                PlanStep(
                    id=f"post-{p}",
                    agent="social",
                    task=f"Write the {p} post, consistent with the earlier campaign.",
                    platform=p,
                )
            )
    else:
        if campaign and not kinds:
            # a campaign without named pieces: a blog post plus posts on the first platforms
            kinds = ["blog"]
            if not platforms:
                platforms = allowed[:2]
        if _has(low, _SOCIAL) and not platforms and (campaign or kinds or topic):
            platforms = [p for p in ("linkedin", "x") if p in allowed] or allowed[:1]
        if not (wants_research or kinds or platforms):
            return Plan(
                action="clarify",
                topic=topic,
                question="What should I produce — a research brief, a blog post, an email, a "
                "landing page or social posts (which platforms) — and for which product?",
                reasoning="No deliverable named.",
            )
        if not topic and not has_brief:
            return Plan(
                action="clarify",
                question="Which product or topic is this for?",
                reasoning="The request names deliverables but no product or topic.",
            )
        if wants_research or (campaign and not has_brief):
            steps.append(
                PlanStep(
                    id="research",
                    agent="research",
                    task=f"Research {topic or 'the topic'}: {text}",
                )
            )
        deps = ["research"] if steps else []
        for k in kinds:
            steps.append(
                PlanStep(
                    id=k.replace("_", "-"),
                    agent="content",
                    task=f"Write the {k.replace('_', ' ')} about {topic}.",
                    kind=k,
                    depends_on=deps,
                )
            )
        for p in platforms:
            steps.append(
                PlanStep(
                    id=f"post-{p}",
                    agent="social",
                    task=f"Write the {p} post about {topic}.",
                    platform=p,
                    depends_on=deps,
                )
            )
    producers = [s.id for s in steps if s.agent in ("content", "social")]
    if wants_publish and producers:
        steps.append(
            PlanStep(
                id="publish",
                agent="publishing",
                task="Ask for approval, then schedule the approved items"
                + (f" for {when}." if when else " as soon as approved."),
                depends_on=producers,
            )
        )
    return Plan(
        action="execute",
        topic=topic,
        steps=steps,
        publish_at=when,
        reasoning="Deliverables named in the request, research first when asked for, "
        "independent pieces in parallel, publishing last.",
    )
