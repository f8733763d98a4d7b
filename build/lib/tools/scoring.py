"""Offline content-quality heuristics for long-form copy (blog, email, landing_page).

:func:`score_content` combines four components, each in [0, 1], into a weighted average
(weights in :data:`WEIGHTS`; a skipped component is left out and the rest re-normalised):

* ``length`` (0.30): 1.0 inside the kind's word range (:data:`LENGTH_RANGES`); below it
  ``words / min``, above it ``max / words`` — continuous, so it degrades smoothly.
* ``readability`` (0.25): Flesch reading ease (``textstat``) divided by the kind's target
  (:data:`READABILITY_TARGETS`), clamped to [0, 1]. Skipped for texts under
  :data:`MIN_WORDS_FOR_READABILITY` words, where the formula is meaningless.
* ``keywords`` (0.35): fraction of the keywords present (case-insensitive, on word
  boundaries; a plural "s"/"es" is accepted). Skipped when no keywords are given.
* ``banned_terms`` (0.10): 1.0 when no banned term occurs, else 0.0. Independently of the
  score, any banned term makes ``passed`` False.

``passed`` = ``score >= threshold`` and no banned term found. ``feedback`` holds actionable
sentences (for a writer model's revision) for every component that is not perfect.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

import textstat
from pydantic import BaseModel, Field

__all__ = [
    "LENGTH_RANGES",
    "MIN_WORDS_FOR_READABILITY",
    "READABILITY_TARGETS",
    "WEIGHTS",
    "ScoreReport",
    "find_banned_terms",
    "find_terms",
    "score_content",
    "word_count",
]

# Target word counts per kind: (minimum, maximum).
LENGTH_RANGES: dict[str, tuple[int, int]] = {
    "blog": (500, 1500),
    "email": (120, 400),
    "landing_page": (250, 800),
}

# Flesch reading ease that earns the full readability component (60-70 = plain English).
READABILITY_TARGETS: dict[str, float] = {
    "blog": 50.0,
    "email": 60.0,
    "landing_page": 60.0,
}

WEIGHTS: dict[str, float] = {
    "length": 0.30,
    "readability": 0.25,
    "keywords": 0.35,
    "banned_terms": 0.10,
}

MIN_WORDS_FOR_READABILITY = 30


class ScoreReport(BaseModel):
    """Outcome of :func:`score_content`."""

    score: float = Field(ge=0.0, le=1.0)
    passed: bool
    threshold: float
    components: dict[str, float]
    word_count: int
    readability: float | None = Field(description="Flesch reading ease; None under 30 words")
    missing_keywords: list[str]
    banned_terms_found: list[str]
    feedback: list[str]


# --------------------------------------------------------------------------- text helpers

_WORD_RE = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    return text.replace("’", "'").replace("‘", "'").replace("‐", "-").replace("‑", "-")


def _plain_text(text: str) -> str:
    """Strip light Markdown/HTML so it does not count as words or distort readability;
    headings and list items without end punctuation get a full stop (they are sentences)."""
    text = _normalize(text)
    text = re.sub(r"```.*?```", " ", text, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [label](url) -> label
    text = re.sub(r"https?://\S+|www\.\S+", " ", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        structural = re.match(r"^(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)", stripped)
        stripped = re.sub(r"^(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)", "", stripped)
        stripped = re.sub(r"[*_`~]+", "", stripped).strip()
        if structural and stripped and stripped[-1] not in ".!?:;":
            stripped += "."
        lines.append(stripped)
    return "\n".join(lines)


def word_count(text: str) -> int:
    """Words in ``text`` (Markdown/HTML markup and URLs do not count)."""
    return len(_WORD_RE.findall(_plain_text(text)))


def _term_pattern(term: str, *, allow_plural: bool) -> re.Pattern[str] | None:
    words = _normalize(term).strip().split()
    if not words:
        return None
    # spaces or hyphens between the words of a multi-word term: "game changer" = "game-changer"
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    plural = r"(?:e?s)?" if allow_plural else ""
    return re.compile(rf"(?<!\w){body}{plural}(?!\w)", re.IGNORECASE)


def find_terms(text: str, terms: list[str], *, allow_plural: bool = False) -> list[str]:
    """The ``terms`` that occur in ``text`` (case-insensitive, on word boundaries; multi-word
    terms match across any whitespace or hyphens). Returned as given, in the order of
    ``terms``, without duplicates; blank terms are ignored."""
    norm = _normalize(text)
    found: list[str] = []
    seen: set[str] = set()
    for term in terms:
        key = " ".join(_normalize(term).casefold().split())
        if key in seen:
            continue
        pattern = _term_pattern(term, allow_plural=allow_plural)
        if pattern is not None and pattern.search(norm):
            seen.add(key)
            found.append(term)
    return found


def find_banned_terms(text: str, banned_terms: list[str]) -> list[str]:
    """The banned terms present in ``text`` (see :func:`find_terms`; no plural matching)."""
    return find_terms(text, banned_terms)


def _flesch(text: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(textstat.flesch_reading_ease(text))


def _words_per_sentence(text: str) -> float:
    sentences = [s for s in re.split(r"[.!?]+(?:\s+|$)", text) if _WORD_RE.search(s)]
    return len(_WORD_RE.findall(text)) / max(1, len(sentences))


def _normalize_kind(kind: str) -> str:
    key = re.sub(r"[\s-]+", "_", kind.strip().casefold())
    if key not in LENGTH_RANGES:
        raise ValueError(f"unknown content kind {kind!r}; known kinds: {', '.join(LENGTH_RANGES)}")
    return key


def _quote(terms: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in terms)


# --------------------------------------------------------------------------- scoring


def score_content(
    text: str,
    *,
    kind: str,
    keywords: list[str],
    banned_terms: list[str],
    threshold: float = 0.7,
) -> ScoreReport:
    """Score long-form copy offline; see the module docstring for the components."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    kind = _normalize_kind(kind)
    label = ("an " if kind[0] in "aeiou" else "a ") + kind.replace("_", " ")
    plain = _plain_text(text)
    words = len(_WORD_RE.findall(plain))
    components: dict[str, float] = {}
    feedback: list[str] = []

    # length
    lo, hi = LENGTH_RANGES[kind]
    if words < lo:
        components["length"] = words / lo
        feedback.append(
            f"The draft has {words} words but {label} should have {lo}-{hi}: add about "
            f"{lo - words} words of substance (examples, specifics, a clear call to action)."
        )
    elif words > hi:
        components["length"] = hi / words
        feedback.append(
            f"The draft has {words} words but {label} should have {lo}-{hi}: cut about "
            f"{words - hi} words (remove repetition and filler)."
        )
    else:
        components["length"] = 1.0

    # readability (skipped for short texts)
    readability: float | None = None
    if words >= MIN_WORDS_FOR_READABILITY:
        readability = round(_flesch(plain), 2)
        target = READABILITY_TARGETS[kind]
        components["readability"] = min(1.0, max(0.0, readability / target))
        if readability < target:
            feedback.append(
                f"Readability is low (Flesch reading ease {readability:.0f}, target {target:.0f}+;"
                f" {_words_per_sentence(plain):.0f} words per sentence): use shorter sentences"
                " and plainer, shorter words."
            )

    # keywords
    missing: list[str] = []
    wanted = [k for k in dict.fromkeys(keywords) if k.strip()]
    if wanted:
        present = find_terms(plain, wanted, allow_plural=True)
        missing = [k for k in wanted if k not in present]
        components["keywords"] = len(present) / len(wanted)
        if missing:
            feedback.append(
                f"Work these missing keywords into the text naturally: {_quote(missing)}."
            )

    # banned terms
    banned = find_banned_terms(text, banned_terms)
    components["banned_terms"] = 0.0 if banned else 1.0
    if banned:
        feedback.append(
            f"Remove or rephrase the banned term(s) {_quote(banned)}; the draft cannot be "
            "approved while they appear."
        )

    total_weight = sum(WEIGHTS[name] for name in components)
    score = sum(WEIGHTS[name] * value for name, value in components.items()) / total_weight
    score = round(min(1.0, max(0.0, score)), 4)
    passed = score >= threshold and not banned
    if not passed and not feedback:  # e.g. a threshold of 1.0 that rounding misses
        feedback.append(f"The score {score:.2f} is below the threshold {threshold:.2f}.")

    return ScoreReport(
        score=score,
        passed=passed,
        threshold=threshold,
        components={name: round(value, 4) for name, value in components.items()},
        word_count=words,
        readability=readability,
        missing_keywords=missing,
        banned_terms_found=banned,
        feedback=feedback,
    )
