"""Unit tests for tools.scoring (no network)."""

from __future__ import annotations

import pytest

from tools.scoring import (
    LENGTH_RANGES,
    MIN_WORDS_FOR_READABILITY,
    WEIGHTS,
    find_banned_terms,
    score_content,
    word_count,
)

PARAGRAPH = (
    "Marketing automation helps small teams save time every week. "
    "You can send the right email at the right moment. "
    "Lead scoring shows which people are ready to talk to sales. "
    "Start with one simple workflow and measure the results. "
)
KEYWORDS = ["marketing automation", "lead scoring", "email"]


def good_blog() -> str:
    # ~45 words per paragraph, 20 paragraphs: inside the blog range
    return "# Why automation matters\n\n" + "\n\n".join([PARAGRAPH] * 20)


def test_length_ranges_and_weights_are_documented_constants() -> None:
    assert LENGTH_RANGES["blog"] == (500, 1500)
    assert LENGTH_RANGES["email"] == (120, 400)
    assert LENGTH_RANGES["landing_page"] == (250, 800)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_good_blog_passes() -> None:
    report = score_content(good_blog(), kind="blog", keywords=KEYWORDS, banned_terms=["synergy"])
    assert 500 <= report.word_count <= 1500
    assert report.components["length"] == 1.0
    assert report.components["keywords"] == 1.0
    assert report.readability is not None
    assert report.passed
    assert report.score >= report.threshold == 0.7
    assert report.missing_keywords == []
    assert report.banned_terms_found == []


def test_good_blog_scores_higher_than_keywordless_one() -> None:
    with_keywords = score_content(good_blog(), kind="blog", keywords=KEYWORDS, banned_terms=[])
    without = score_content(
        good_blog(), kind="blog", keywords=["webinar", "pricing page", "CRM"], banned_terms=[]
    )
    assert with_keywords.score > without.score
    assert without.components["keywords"] == 0.0
    assert without.missing_keywords == ["webinar", "pricing page", "CRM"]
    assert not without.passed
    assert any("webinar" in f for f in without.feedback)


def test_keyword_matching_is_case_insensitive_and_on_word_boundaries() -> None:
    text = "MARKETING Automation works. Emails too. Scoring leads is not lead scoring-free."
    report = score_content(
        text,
        kind="email",
        keywords=["marketing automation", "email", "lead", "mail"],
        banned_terms=[],
    )
    # "Emails" counts for "email" (plural), "mail" must not match inside "Emails"
    assert report.missing_keywords == ["mail"]
    assert report.components["keywords"] == pytest.approx(0.75)


def test_short_text_skips_readability() -> None:
    text = "Book a demo today and see how our planner saves you hours every week."
    assert word_count(text) < MIN_WORDS_FOR_READABILITY
    report = score_content(text, kind="email", keywords=["demo"], banned_terms=[])
    assert report.readability is None
    assert "readability" not in report.components
    # the weighting excludes readability: the score is the re-normalised average of the rest
    rest = {k: v for k, v in report.components.items()}
    expected = sum(WEIGHTS[k] * v for k, v in rest.items()) / sum(WEIGHTS[k] for k in rest)
    assert report.score == pytest.approx(expected, abs=1e-3)
    assert not report.passed  # far too short for an email
    assert any("words" in f for f in report.feedback)


def test_readability_is_scored_from_30_words() -> None:
    text = " ".join(["The team writes clear short posts."] * 6)  # 36 words
    report = score_content(text, kind="email", keywords=[], banned_terms=[])
    assert report.word_count >= MIN_WORDS_FOR_READABILITY
    assert report.readability is not None
    assert 0.0 <= report.components["readability"] <= 1.0


def test_hard_text_gets_readability_feedback() -> None:
    sentence = (
        "Organizational transformational methodologies necessitate comprehensive "
        "interdepartmental communication infrastructures, notwithstanding considerable "
        "implementation complexities and institutional resistance characteristics"
    )
    text = ", ".join([sentence] * 12) + "."
    report = score_content(text, kind="landing_page", keywords=[], banned_terms=[])
    assert report.readability is not None and report.readability < 30
    assert report.components["readability"] < 0.5
    assert any("Readability" in f for f in report.feedback)


def test_banned_term_forces_failure_and_is_reported() -> None:
    text = good_blog() + "\n\nThis planner is revolutionary."
    report = score_content(text, kind="blog", keywords=KEYWORDS, banned_terms=["Revolutionary"])
    assert report.score >= report.threshold  # the rest of the draft is fine...
    assert not report.passed  # ...but a banned term blocks it
    assert report.banned_terms_found == ["Revolutionary"]
    assert report.components["banned_terms"] == 0.0
    assert any("Revolutionary" in f for f in report.feedback)


def test_multi_word_banned_terms() -> None:
    text = "Our tool is a real Game-Changer and truly best  in\nclass for teams."
    assert find_banned_terms(text, ["game changer", "best in class", "world class"]) == [
        "game changer",
        "best in class",
    ]
    report = score_content(
        good_blog() + " " + text, kind="blog", keywords=KEYWORDS, banned_terms=["game changer"]
    )
    assert not report.passed
    assert report.banned_terms_found == ["game changer"]


def test_banned_terms_match_on_word_boundaries_only() -> None:
    text = "Classic freedom, freestyle and a hardcore scam-free offer."
    assert find_banned_terms(text, ["class", "free", "core", "scam"]) == ["free", "scam"]
    assert find_banned_terms(text, ["", "  "]) == []
    assert find_banned_terms("FREE shipping", ["free", "Free"]) == ["free"]


def test_feedback_non_empty_when_failing() -> None:
    for text, kind in [
        ("Too short.", "blog"),
        ("word " * 3000, "email"),
        (good_blog(), "landing_page"),
    ]:
        report = score_content(text, kind=kind, keywords=["pricing"], banned_terms=[])
        assert not report.passed
        assert report.feedback
        assert all(isinstance(f, str) and f.strip() for f in report.feedback)


def test_length_score_degrades_smoothly() -> None:
    def length_score(words: int) -> float:
        text = " ".join(["word"] * words)
        return score_content(text, kind="email", keywords=[], banned_terms=[]).components["length"]

    assert length_score(60) == pytest.approx(0.5)
    assert length_score(119) < 1.0 < length_score(120) + 1e-9
    assert length_score(400) == 1.0
    assert 0.9 < length_score(420) < 1.0
    assert length_score(800) == pytest.approx(0.5)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="blog"):
        score_content("text", kind="tweet", keywords=[], banned_terms=[])
    with pytest.raises(ValueError):
        score_content("text", kind="blog", keywords=[], banned_terms=[], threshold=1.5)
    assert score_content("text " * 10, kind="Landing Page", keywords=[], banned_terms=[])
