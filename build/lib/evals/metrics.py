"""Pure metric functions (no I/O): set F1, retrieval recall@k and MRR, percentiles."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def set_f1(predicted: Iterable[str], expected: Iterable[str]) -> float:
    """F1 of two sets; two empty sets agree perfectly."""
    p, e = set(predicted), set(expected)
    if not p and not e:
        return 1.0
    tp = len(p & e)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(p), tp / len(e)
    return 2 * precision * recall / (precision + recall)


def recall_at_k(retrieved: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Fraction of the relevant ids found in the first `k` retrieved ids."""
    rel = set(relevant)
    if not rel:
        return 1.0
    return len(rel & set(retrieved[:k])) / len(rel)


def reciprocal_rank(retrieved: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / rank of the first relevant id (0 when none is retrieved)."""
    rel = set(relevant)
    for rank, doc_id in enumerate(retrieved, start=1):
        if doc_id in rel:
            return 1.0 / rank
    return 0.0


def mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile, q in [0, 100]."""
    vals = sorted(values)
    if not vals:
        return None
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[min(rank, len(vals)) - 1]


def ratio(flags: Iterable[bool]) -> float | None:
    items = list(flags)
    return sum(1 for f in items if f) / len(items) if items else None
