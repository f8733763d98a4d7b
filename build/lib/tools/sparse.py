"""BM25-style sparse keyword vectors, built locally.

Documents get BM25's term-frequency part per term, `tf * (k1 + 1) / (tf + k1 * (1 - b + b * len /
avg_len))`; queries get 1.0 per distinct term. The collection's sparse vector is configured with
Qdrant's IDF modifier, so Qdrant multiplies in each term's inverse document frequency at query time
from its own statistics: the dot product is then the BM25 score. Exact product names, SKUs and
hashtags ("TR-2 GTX", "#RunWild") match even when the dense model does not know the word.

Tokens: lower-cased words and numbers; compounds joined by `-`, `.`, `/` or `_` are kept whole and
split into their parts; `#hashtags` and `@handles` lose the sign; English stop words are dropped;
words are stemmed with the Snowball English stemmer. A token's index is its CRC-32 (stable across
processes and versions; a collision only merges two rare words).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

K1 = 1.2
B = 0.75
AVG_DOC_TOKENS = 120.0  # typical chunk length in tokens (1,200 characters of prose)

_WORD = re.compile(r"\w+(?:[-./]\w+)*", re.UNICODE)
_SEP = re.compile(r"[-./_]+")
_STOP_WORDS = """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves"""
_STOP = frozenset(_STOP_WORDS.split())
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    if word.isdigit() or len(word) < 3:
        return word
    return str(_stemmer.stemWord(word))


def tokenize(text: str) -> list[str]:
    """Normalised terms of `text`, in order (repeats kept: they are term frequencies)."""
    out: list[str] = []
    for match in _WORD.finditer(text.lower()):
        word = match.group(0)
        if _SEP.search(word):
            parts = [p for p in _SEP.split(word) if p]
            if len(parts) > 1:
                out.append("_".join(parts))  # the compound as written: "tr-2" -> "tr_2"
            out.extend(_stem(p) for p in parts if p not in _STOP)
        elif word not in _STOP:
            out.append(_stem(word))
    return out


def token_id(token: str) -> int:
    return zlib.crc32(token.encode("utf-8"))


@dataclass(frozen=True)
class Sparse:
    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


def _sparse(weights: dict[int, float]) -> Sparse:
    items = sorted(weights.items())
    return Sparse([i for i, _ in items], [round(v, 6) for _, v in items])


def encode_document(text: str) -> Sparse:
    terms = tokenize(text)
    if not terms:
        return Sparse([], [])
    norm = K1 * (1 - B + B * len(terms) / AVG_DOC_TOKENS)
    weights: dict[int, float] = {}
    for term, tf in Counter(terms).items():
        idx = token_id(term)
        weights[idx] = weights.get(idx, 0.0) + tf * (K1 + 1) / (tf + norm)
    return _sparse(weights)


def encode_query(text: str) -> Sparse:
    return _sparse({token_id(t): 1.0 for t in set(tokenize(text))})
