"""Knowledge-base benchmark: ingest throughput and search latency of the embedded (local-mode)
Qdrant knowledge base at 10k and 100k points, against brute-force numpy cosine over the same
vectors measured in the same run (the floor), plus hybrid-vs-dense quality on the labelled set.

Per size N, in a fresh temporary DATA_DIR:

1. ingest: `QdrantKnowledgeBase.upsert_chunks` (WordLlama embedding + BM25 sparse encoding +
   Qdrant upsert) of N synthetic chunks, as chunks/s; the embedding and sparse-encoding shares are
   timed separately on the same texts, so the Qdrant share is the rest;
2. reopen: closing and opening the store again (local mode loads every point from disk);
3. search latency p50/p95 over the same queries:
   - numpy: `M @ q` + `argpartition` over the N x 256 unit vectors (the floor);
   - dense: Qdrant query on the dense vector;
   - hybrid: dense + BM25 prefetch fused with RRF (Qdrant query API);
   - dense+filter: dense with a payload filter matching 1 point in 10 (how `past_outputs`
     examples are filtered by brand/kind/platform);
   - kb.search: the call the agents make (embeds the query, searches `documents` and
     `past_outputs`, merges), in the default search mode.

Usage: `.venv/bin/python -m bench.kb [--sizes 10000,100000] [--queries 50] [--out PATH]`
(`make bench-kb`). Targets are reported, never asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models
from rich.console import Console
from rich.table import Table

from app.settings import Settings
from tools.qdrant_kb import (
    DENSE,
    DOCUMENTS,
    SPARSE,
    DocumentChunk,
    QdrantKnowledgeBase,
    embed_text,
)
from tools.sparse import encode_document, encode_query

DEFAULT_OUT = Path("bench/results/kb.json")
TARGET_P95_MS_10K = 20.0
BRANDS = [f"brand-{i}" for i in range(10)]
_WORD_TEXT = """
trail shoe carbon plate drop grip outsole upper recycled polyester runners downhill stability
toe box narrow wide sizing returns warranty launch teaser embargo retail countries press kit
thermostat heating energy schedule install boiler heat pump window alert report rebate utility
privacy encrypted opt-in device usage data lamp light warm dimming tunable flicker port desk
standing posture frame motor height preset assembly hex key companies volume pricing on-site
blog newsletter post caption hashtag campaign audience persona weekend durability speed reviews
results open rate leads email calendar Tuesday Thursday morning legal claims medical benefits
comparative test competitor price market lead smart customers weekly story team tested weeks
people listened worked simple trust benefit details clear explain plain words grip rock wet
"""
_WORDS = _WORD_TEXT.split()


@dataclass
class Series:
    name: str
    samples_ms: list[float] = field(default_factory=list)

    def stat(self) -> dict[str, float]:
        a = np.asarray(self.samples_ms)
        return {
            "n": float(len(a)),
            "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3),
        }


def corpus(n: int, seed: int = 7) -> list[DocumentChunk]:
    """N synthetic chunks of ~120 words (Zipf-distributed vocabulary plus product codes)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(_WORDS))]
    codes = [f"TR-{i}" for i in range(500)] + [f"#Tag{i}" for i in range(500)]
    chunks = []
    for i in range(n):
        words = rng.choices(_WORDS, weights=weights, k=110) + rng.sample(codes, 3)
        rng.shuffle(words)
        text = " ".join(words).capitalize() + "."
        chunks.append(
            DocumentChunk(
                doc_id=f"bench-{i}",
                text=text,
                title=f"Synthetic document {i // 8}",
                source=f"bench/doc-{i // 8}.md",
                chunk_index=i % 8,
                chunk_count=8,
                content_hash=f"h{i // 8}",
                doc_type="bench",
                extra={"brand": BRANDS[i % len(BRANDS)]},
            )
        )
    return chunks


def queries_from(chunks: list[DocumentChunk], count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for c in rng.sample(chunks, count):
        words = c.text.rstrip(".").split()
        start = rng.randrange(0, max(1, len(words) - 6))
        out.append(" ".join(words[start : start + 6]))
    return out


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - start) * 1000, out


def measure_size(n: int, n_queries: int, console: Console) -> dict[str, Any]:
    chunks = corpus(n)
    queries = queries_from(chunks, n_queries)
    with tempfile.TemporaryDirectory(prefix="mkt-bench-kb-") as tmp:
        settings = Settings(data_dir=Path(tmp), qdrant_url=None, embedding_provider="wordllama")
        kb = QdrantKnowledgeBase(settings)
        kb.open()
        texts = [embed_text(c.title, c.section, c.text) for c in chunks]  # what upsert embeds
        # shares of the ingest time, measured on the same texts
        t0 = time.perf_counter()
        matrix = kb.embedder.embed_documents(texts)
        embed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in texts:  # the sparse vector is built from the same text
            encode_document(t)
        sparse_s = time.perf_counter() - t0

        console.print(f"[dim]{n:,} points: ingesting…[/]")
        t0 = time.perf_counter()
        kb.upsert_chunks(chunks)
        ingest_s = time.perf_counter() - t0
        kb.close()
        t0 = time.perf_counter()
        kb = QdrantKnowledgeBase(settings)
        kb.open()
        reopen_s = time.perf_counter() - t0
        physical = kb.physical_name(DOCUMENTS) or DOCUMENTS
        assert kb.call(lambda c: c.count(physical, exact=True).count) == n

        console.print(f"[dim]{n:,} points: searching ({len(queries)} queries per mode)…[/]")
        qvecs = [kb.embedder.embed_query(q) for q in queries]
        sparse_q = [encode_query(q) for q in queries]
        brand_filter = models.Filter(
            must=[models.FieldCondition(key="brand", match=models.MatchValue(value=BRANDS[3]))]
        )
        series = {
            name: Series(name) for name in ("numpy", "dense", "hybrid", "dense+filter", "kb.search")
        }
        overlap: list[float] = []

        def numpy_search(qv: np.ndarray) -> list[int]:
            scores = matrix @ qv
            top = np.argpartition(-scores, 5)[:5]
            return [int(i) for i in top[np.argsort(-scores[top])]]

        def query(**kwargs: Any) -> list[Any]:
            return kb.call(
                lambda c: (
                    c.query_points(physical, limit=5, with_payload=["doc_id"], **kwargs).points
                )
            )

        for q, qv, sq in zip(queries, qvecs, sparse_q, strict=True):
            sparse = models.SparseVector(indices=sq.indices, values=sq.values)
            ms, floor_ids = timed(numpy_search, qv)
            series["numpy"].samples_ms.append(ms)
            ms, found = timed(lambda qv=qv: query(query=qv.tolist(), using=DENSE))
            series["dense"].samples_ms.append(ms)
            ids = {int(str(p.payload["doc_id"]).split("-")[1]) for p in found}
            overlap.append(len(ids & set(floor_ids)) / 5)
            ms, _ = timed(
                lambda qv=qv, sparse=sparse: query(
                    prefetch=[
                        models.Prefetch(query=qv.tolist(), using=DENSE, limit=20),
                        models.Prefetch(query=sparse, using=SPARSE, limit=20),
                    ],
                    query=models.FusionQuery(fusion=models.Fusion.RRF),
                )
            )
            series["hybrid"].samples_ms.append(ms)
            ms, _ = timed(
                lambda qv=qv: query(query=qv.tolist(), using=DENSE, query_filter=brand_filter)
            )
            series["dense+filter"].samples_ms.append(ms)
            ms, _ = timed(lambda q=q: kb.search_sync(q, k=5, collection=DOCUMENTS))
            series["kb.search"].samples_ms.append(ms)
        resolved = kb.resolved_mode(DOCUMENTS)
        kb.close()
    floor = series["numpy"].stat()
    stats = {name: s.stat() for name, s in series.items()}
    for st in stats.values():
        st["p50_x_numpy"] = round(st["p50_ms"] / max(floor["p50_ms"], 1e-6), 1)
        st["p95_x_numpy"] = round(st["p95_ms"] / max(floor["p95_ms"], 1e-6), 1)
    return {
        "points": n,
        "queries": len(queries),
        "search_mode_default": f"{settings.kb_search_mode} -> {resolved}",
        "ingest": {
            "seconds": round(ingest_s, 2),
            "chunks_per_s": round(n / ingest_s, 1),
            "embedding_s": round(embed_s, 2),
            "sparse_encoding_s": round(sparse_s, 2),
            "qdrant_s": round(max(ingest_s - embed_s - sparse_s, 0.0), 2),
        },
        "reopen_s": round(reopen_s, 2),
        "search": stats,
        "dense_matches_numpy_top5": round(float(np.mean(overlap)), 3),
        "samples_ms": {name: s.samples_ms for name, s in series.items()},
    }


async def quality() -> dict[str, dict[str, float]]:
    """Recall@5 and MRR of dense and hybrid on the labelled set (`evals/datasets/retrieval*`)."""
    from evals.datasets import RetrievalCase, dataset
    from evals.metrics import recall_at_k, reciprocal_rank
    from evals.suites.retrieval import seed, seed_documents

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mkt-bench-kbq-") as tmp:
        kb = QdrantKnowledgeBase(Settings(data_dir=Path(tmp), embedding_provider="wordllama"))
        await seed(kb, seed_documents())
        cases = dataset("retrieval", RetrievalCase)
        for mode in ("dense", "hybrid"):
            recall, rr = [], []
            for case in cases:
                hits = await kb.search(case.query, k=5, brand=case.brand, mode=mode)  # type: ignore[arg-type]
                ids = [h.id for h in hits]
                recall.append(recall_at_k(ids, case.relevant, 5))
                rr.append(reciprocal_rank(ids, case.relevant))
            out[mode] = {
                "recall_at_5": round(sum(recall) / len(cases), 4),
                "mrr": round(sum(rr) / len(cases), 4),
                "cases": float(len(cases)),
            }
        kb.close()
    return out


def print_tables(result: dict[str, Any], console: Console) -> None:
    table = Table(title="knowledge base, embedded Qdrant (local mode): ingest")
    for col in ("points", "chunks/s", "total s", "embed s", "sparse s", "qdrant s", "reopen s"):
        table.add_column(col, justify="right")
    for r in result["sizes"]:
        i = r["ingest"]
        table.add_row(
            f"{r['points']:,}",
            f"{i['chunks_per_s']:,.0f}",
            f"{i['seconds']:.1f}",
            f"{i['embedding_s']:.1f}",
            f"{i['sparse_encoding_s']:.1f}",
            f"{i['qdrant_s']:.1f}",
            f"{r['reopen_s']:.1f}",
        )
    console.print(table)
    table = Table(title="search latency, ms p50 / p95 (x numpy floor at p50)")
    table.add_column("points", justify="right")
    names = ("numpy", "dense", "hybrid", "dense+filter", "kb.search")
    for name in names:
        table.add_column(name, justify="right")
    for r in result["sizes"]:
        cells = []
        for name in names:
            st = r["search"][name]
            ratio = "" if name == "numpy" else f" ({st['p50_x_numpy']:.0f}x)"
            cells.append(f"{st['p50_ms']:.2f} / {st['p95_ms']:.2f}{ratio}")
        table.add_row(f"{r['points']:,}", *cells)
    console.print(table)
    for r in result["sizes"]:
        if r["points"] == 10_000:
            p95 = r["search"]["kb.search"]["p95_ms"]
            ok = "met" if p95 < TARGET_P95_MS_10K else "MISSED"
            console.print(
                f"target kb.search p95 < {TARGET_P95_MS_10K:.0f} ms at 10k points ({r['search_mode_default']}): "
                f"{p95:.1f} ms — {ok}; dense alone p95 {r['search']['dense']['p95_ms']:.1f} ms"
            )
    q = result.get("quality") or {}
    if q:
        console.print(
            "labelled set ({:.0f} queries): ".format(q["hybrid"]["cases"])
            + ", ".join(
                f"{m} recall@5 {v['recall_at_5']:.3f} MRR {v['mrr']:.3f}" for m, v in q.items()
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated point counts")
    parser.add_argument("--queries", type=int, default=50, help="queries per mode (<= 20k points)")
    parser.add_argument(
        "--queries-large", type=int, default=15, help="queries per mode above 20k points"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    console = Console(stderr=True, highlight=False)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    os.environ.pop("QDRANT_URL", None)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "kb",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": {p: version(p) for p in ("qdrant-client", "wordllama", "numpy")},
        "sizes": [],
    }
    result["quality"] = asyncio.run(quality())
    for n in sizes:
        q = args.queries if n <= 20_000 else args.queries_large
        result["sizes"].append(measure_size(n, q, console))
    result["duration_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_tables(result, Console(highlight=False))
    console.print(f"[dim]{result['duration_s']:.0f} s · results in {args.out}[/]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
