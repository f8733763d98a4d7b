"""Retrieval: recall@k and MRR of the knowledge base over a seed set of documents and past
outputs. Runs against whatever `tools.knowledge.get_knowledge_base()` returns — the Qdrant
knowledge base `open_runner` installs (embedded, in the eval run's temporary DATA_DIR, with the
configured search mode and embedding); with only the `EmptyKnowledgeBase` the suite is reported as
SKIPPED (never as passed). The same labelled set is the unit test `tests/unit/test_kb_quality.py`."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from evals.datasets import RetrievalCase, RetrievalDoc, dataset
from evals.metrics import mean, recall_at_k, reciprocal_rank
from evals.suites import DatasetSuite, SuiteEnv
from evals.types import CaseResult
from tools.knowledge import DEFAULT_TENANT, EmptyKnowledgeBase, KnowledgeBase, get_knowledge_base


def seed_documents() -> list[RetrievalDoc]:
    return dataset("retrieval_docs", RetrievalDoc)


# the suite's documents live under their own tenant, so outputs the other suites' runs remembered
# in the same knowledge base (approvals are recorded) never compete with the labelled set
TENANT = "eval-retrieval"


async def seed(kb: Any, docs: list[RetrievalDoc], tenant: str = DEFAULT_TENANT) -> bool:
    """Give the seed documents to a knowledge base that can ingest (`add_documents(list[dict])`);
    False when it cannot (it is then expected to hold them already)."""
    add = getattr(kb, "add_documents", None)
    if add is None:
        return False
    out = add([{**d.model_dump(), "tenant": tenant} for d in docs])
    if inspect.isawaitable(out):
        await out
    return True


def _kb(env: SuiteEnv) -> KnowledgeBase:
    return env.knowledge_base if env.knowledge_base is not None else get_knowledge_base()


class RetrievalSuite(DatasetSuite):
    name = "retrieval"
    case_type = RetrievalCase

    def __init__(self) -> None:
        self._seeding: dict[int, asyncio.Task[bool]] = {}

    def skip_reason(self, env: SuiteEnv) -> str | None:
        kb = _kb(env)
        if isinstance(kb, EmptyKnowledgeBase) or getattr(kb, "name", "") == "empty":
            return "no knowledge base configured (EmptyKnowledgeBase): retrieval not measured"
        return None

    async def run_case(self, case: RetrievalCase, env: SuiteEnv) -> CaseResult:
        import time

        kb = _kb(env)
        # every case (they run concurrently) waits for the one seeding of this knowledge base
        if id(kb) not in self._seeding:
            self._seeding[id(kb)] = asyncio.ensure_future(seed(kb, seed_documents(), TENANT))
        await asyncio.shield(self._seeding[id(kb)])
        k = env.config.retrieval_k
        started = time.perf_counter()
        res = CaseResult(suite=self.name, case_id=case.id, passed=None, critical=case.critical)
        try:
            hits = await kb.search(case.query, k=k, brand=case.brand, tenant=TENANT)
        except Exception as exc:  # noqa: BLE001 - recorded on the case
            res.error = f"{type(exc).__name__}: {exc}"[:500]
            hits = []
        ids = [h.id for h in hits]
        res.latency_s = round(time.perf_counter() - started, 4)
        res.scores["recall_at_k"] = recall_at_k(ids, case.relevant, k)
        res.scores["reciprocal_rank"] = reciprocal_rank(ids, case.relevant)
        res.detail = {"query": case.query, "relevant": case.relevant, "retrieved": ids, "k": k}
        if res.scores["recall_at_k"] < 1.0:
            res.failures.append(
                f"missed {sorted(set(case.relevant) - set(ids[:k]))} in top {k}: {ids}"
            )
        if res.error:
            res.failures.append(f"error: {res.error}")
        res.passed = not res.failures
        return res

    def aggregate(
        self, results: list[CaseResult], env: SuiteEnv
    ) -> tuple[dict[str, float], dict[str, str]]:
        recall = mean(r.scores["recall_at_k"] for r in results)
        mrr = mean(r.scores["reciprocal_rank"] for r in results)
        if recall is None or mrr is None:
            return {}, {"recall_at_k": "no cases", "mrr": "no cases"}
        return {"recall_at_k": round(recall, 4), "mrr": round(mrr, 4)}, {}
