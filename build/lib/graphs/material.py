"""Turning state into prompt material: the brief, source artifacts and the piece being revised,
all wrapped as untrusted data."""

from __future__ import annotations

from graphs.state import AgentInput, Artifact, Brief
from prompts import data_block


def brief_points(brief: Brief | None) -> list[str]:
    if not brief:
        return []
    return [p["point"] for p in brief["key_points"]]


def brief_text(brief: Brief | None) -> str:
    if not brief:
        return "(no research brief)"
    lines = [brief["summary"], "", *[f"- {p}" for p in brief_points(brief)]]
    return "\n".join(lines)


def artifact_text(art: Artifact) -> str:
    tags = " ".join(f"#{h}" for h in art.get("hashtags") or [])
    return f"[{art['id']} v{art['version']}] {art['title']}\n{art['body']}\n{tags}".strip()


def material(state: AgentInput) -> str:
    parts = [data_block("research brief", brief_text(state.get("brief")))]
    for art in state.get("sources") or []:
        parts.append(data_block(f"earlier output {art['id']}", artifact_text(art)))
    revise = state.get("revise")
    if revise:
        parts.append(
            data_block(f"the current version of {revise['id']} to rewrite", artifact_text(revise))
        )
    return "\n\n".join(parts)
