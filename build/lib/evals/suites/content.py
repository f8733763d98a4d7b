"""Content quality: platform limits and banned terms (100% compliance), keyword coverage,
readability band on texts of 30+ words; live only, LLM-as-judge brand voice and relevance."""

from __future__ import annotations

from typing import Any

from evals.datasets import ContentCase, Turn
from evals.harness import run_conversation, trajectory_of
from evals.judge import judge_score
from evals.metrics import mean, ratio
from evals.suites import DatasetSuite, SuiteEnv
from evals.types import CaseResult
from tools.platforms import check_post
from tools.scoring import find_terms, score_content

JUDGES = ("brand_voice", "relevance")


def readability(text: str) -> float | None:
    """Flesch reading ease, or None for texts under 30 words."""
    return score_content(text, kind="blog", keywords=[], banned_terms=[]).readability


def _wanted(art: dict[str, Any], case: ContentCase) -> bool:
    if case.platform:
        return art.get("platform") == case.platform
    return art.get("kind") == (case.kind or "blog")


class ContentSuite(DatasetSuite):
    name = "content"
    case_type = ContentCase

    async def run_case(self, case: ContentCase, env: SuiteEnv) -> CaseResult:
        context: dict[str, Any] = {
            **case.brand,
            "keywords": case.must_include,
            "banned_terms": case.must_not_include,
        }
        if case.platform:
            context["platforms"] = [case.platform]
        tr = await run_conversation(env.runner, [Turn(request=case.request)], context)
        view = await env.runner.view(tr.thread_id) if tr.thread_id else None
        artifacts = list(((view.values if view else {}).get("artifacts") or {}).values())
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
        )
        texts = []
        for art in artifacts:
            text = (
                f"{art.get('title', '')}\n\n{art['body']}"
                if not art.get("platform")
                else art["body"]
            )
            item: dict[str, Any] = {
                "id": art["id"],
                "kind": art["kind"],
                "platform": art.get("platform"),
            }
            if art.get("platform"):
                check = check_post(art["body"], art["platform"])
                item["platform_ok"] = check.ok
                if not check.ok:
                    res.failures.append(
                        f"{art['id']}: breaks {art['platform']} rules: {check.problems}"
                    )
            banned = find_terms(text, case.must_not_include)
            item["banned_found"] = banned
            if banned:
                res.failures.append(f"{art['id']}: banned terms {banned}")
            found = find_terms(text, case.must_include, allow_plural=True)
            item["keyword_coverage"] = (
                len(found) / len(case.must_include) if case.must_include else 1.0
            )
            flesch = readability(art["body"])
            item["flesch"] = flesch
            if flesch is not None:
                lo, hi = env.config.readability_band
                item["readability_ok"] = lo <= flesch <= hi
            item["body"] = art["body"]
            texts.append(item)
        produced = any(_wanted(a, case) for a in artifacts)
        res.checks["produced"] = produced
        if not produced:
            res.failures.append(f"no {case.platform or case.kind or 'blog'} artifact produced")
        posts = [t for t in texts if "platform_ok" in t]
        res.checks["platform_compliance"] = all(t["platform_ok"] for t in posts) if posts else None
        res.checks["banned_term_compliance"] = (
            all(not t["banned_found"] for t in texts) if texts else None
        )
        bands = [t["readability_ok"] for t in texts if "readability_ok" in t]
        res.checks["readability_in_band"] = all(bands) if bands else None
        if bands and not all(bands):
            res.failures.append(
                f"readability outside {env.config.readability_band}: {[t['flesch'] for t in texts]}"
            )
        cov = mean(t["keyword_coverage"] for t in texts)
        if cov is not None:
            res.scores["keyword_coverage"] = round(cov, 4)
        if env.judges and texts:
            brand = "; ".join(f"{k}: {v}" for k, v in case.brand.items()) or "(default brand)"
            copy = "\n\n---\n\n".join(t["body"] for t in texts)
            try:
                res.scores["judge_brand_voice"] = await judge_score(
                    env.judges["brand_voice"], brand, copy
                )
                res.scores["judge_relevance"] = await judge_score(
                    env.judges["relevance"], case.request, copy
                )
            except Exception as exc:  # noqa: BLE001 - a judge failure is recorded on the case
                res.failures.append(f"judge error: {type(exc).__name__}: {exc}"[:300])
        res.detail = {"request": case.request, "artifacts": texts}
        if tr.error:
            res.failures.append(f"error: {tr.error}")
        res.passed = not res.failures
        return res

    def aggregate(
        self, results: list[CaseResult], env: SuiteEnv
    ) -> tuple[dict[str, float], dict[str, str]]:
        def item_ratio(key: str) -> float | None:
            return ratio(
                bool(a[key]) for r in results for a in r.detail.get("artifacts", []) if key in a
            )

        metrics: dict[str, float | None] = {
            "platform_compliance": item_ratio("platform_ok"),
            "banned_term_compliance": ratio(
                not a["banned_found"] for r in results for a in r.detail.get("artifacts", [])
            ),
            "keyword_coverage": mean(
                r.scores["keyword_coverage"] for r in results if "keyword_coverage" in r.scores
            ),
            "readability_in_band": item_ratio("readability_ok"),
            "produced_rate": ratio(bool(r.checks.get("produced")) for r in results),
        }
        skipped: dict[str, str] = {}
        for judge in JUDGES:
            key = f"judge_{judge}"
            if not env.judges:
                skipped[key] = "LLM-as-judge runs in live mode only"
                continue
            metrics[key] = mean(r.scores[key] for r in results if key in r.scores)
        for k, v in list(metrics.items()):
            if v is None:
                skipped[k] = "nothing to measure"
                del metrics[k]
        return {k: round(v, 4) for k, v in metrics.items() if v is not None}, skipped
