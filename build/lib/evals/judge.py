"""Live-only LLM-as-judge evaluators (openevals `create_async_llm_as_judge`) for brand voice and
relevance. Offline they are never built: the metrics are reported as skipped, never as passed."""

from __future__ import annotations

from typing import Any

from app.models import ModelFactory

BRAND_VOICE_PROMPT = """You grade marketing copy for how well it follows a brand's voice.
<brand>
{inputs}
</brand>
<copy>
{outputs}
</copy>
Score 1.0 when the copy sounds exactly like the described voice and respects the audience, 0.0
when it clearly contradicts it (e.g. hype for a no-hype brand)."""

RELEVANCE_PROMPT = """You grade marketing copy for relevance to the request it was written for.
<request>
{inputs}
</request>
<copy>
{outputs}
</copy>
Score 1.0 when the copy is about the requested product and fulfils the request, 0.0 when it is
off-topic or generic."""


def build_judges(factory: ModelFactory, judge_model: str = "") -> dict[str, Any]:
    """{'brand_voice': evaluator, 'relevance': evaluator} on the app's model factory (the same
    provider as the run: OpenAI-compatible or the local server), `judge_model` if set."""
    from openevals.llm import create_async_llm_as_judge

    model = factory.judge(judge_model)
    return {
        "brand_voice": create_async_llm_as_judge(
            prompt=BRAND_VOICE_PROMPT, judge=model, continuous=True, feedback_key="brand_voice"
        ),
        "relevance": create_async_llm_as_judge(
            prompt=RELEVANCE_PROMPT, judge=model, continuous=True, feedback_key="relevance"
        ),
    }


class JudgeOutputError(ValueError):
    """The judge's score is not a number in [0, 1]."""


async def judge_score(evaluator: Any, inputs: str, outputs: str) -> float:
    result = await evaluator(inputs=inputs, outputs=outputs)
    score = float(result["score"])
    if not 0.0 <= score <= 1.0:  # a weak judge model ignoring the scale is an error, not a grade
        raise JudgeOutputError(f"judge returned {score:g}, outside [0, 1]")
    return score
