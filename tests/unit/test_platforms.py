"""Unit tests for tools.platforms (no network)."""

from __future__ import annotations

import re

import pytest

from tools import platforms
from tools.platforms import (
    PlatformRules,
    UnknownPlatformError,
    check_post,
    count_chars,
    extract_hashtags,
    fit_post,
    get_rules,
    known_platforms,
    load_platform_rules,
)

PLATFORMS = ["x", "linkedin", "instagram", "facebook"]


# --------------------------------------------------------------------------- rules file


def test_rules_file_has_the_four_platforms_with_their_limits() -> None:
    rules = load_platform_rules()
    assert list(rules) == PLATFORMS
    assert known_platforms() == PLATFORMS
    assert {name: r.max_chars for name, r in rules.items()} == {
        "x": 280,
        "linkedin": 3000,
        "instagram": 2200,
        "facebook": 63206,
    }
    assert rules["x"].counting == "twitter_weighted"
    assert rules["x"].url_weight == 23
    assert {r.counting for n, r in rules.items() if n != "x"} == {"chars"}
    assert rules["instagram"].max_hashtags == 30
    # X has no hard hashtag limit, only a recommendation
    assert rules["x"].max_hashtags is None
    assert rules["x"].recommended_hashtags is not None
    assert rules["x"].hashtag_cap == rules["x"].recommended_hashtags
    assert rules["instagram"].hashtag_cap == 30
    assert all(r.tone and r.format_hints and r.display_name for r in rules.values())


def test_rules_are_frozen_and_cached() -> None:
    rules = get_rules("x")
    with pytest.raises(ValueError):
        rules.max_chars = 1  # type: ignore[misc]
    assert load_platform_rules() is load_platform_rules()


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("twitter", "x"),
        ("Twitter", "x"),
        ("X", "x"),
        (" x ", "x"),
        ("LinkedIn", "linkedin"),
        ("INSTAGRAM", "instagram"),
        ("ig", "instagram"),
        ("fb", "facebook"),
    ],
)
def test_get_rules_is_case_insensitive_and_knows_aliases(alias: str, expected: str) -> None:
    assert get_rules(alias).name == expected


def test_unknown_platform_error_lists_known_platforms() -> None:
    with pytest.raises(UnknownPlatformError) as info:
        get_rules("myspace")
    message = str(info.value)
    assert "myspace" in message
    for name in PLATFORMS:
        assert name in message
    assert isinstance(info.value, ValueError)
    assert info.value.known == PLATFORMS
    with pytest.raises(UnknownPlatformError):
        check_post("hello", "tiktok")


# --------------------------------------------------------------------------- counting


@pytest.fixture(scope="module")
def x_rules() -> PlatformRules:
    return get_rules("x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", 5),
        ("日本語", 6),  # CJK counts 2 each
        ("こんにちは世界", 14),
        ("😷", 2),  # emoji count 2
        ("👨\u200d👩\u200d👧\u200d👦", 2),  # a ZWJ family sequence is one emoji
        ("👍🏽", 2),  # emoji + skin tone
        ("🇯🇵", 2),  # flag
        ("https://example.com/a/very/long/path/that/goes/on?and=on&on=1", 23),  # URL = 23
        ("see https://example.com now", 4 + 23 + 4),
        ("english text 日本語 😷 https://example.com", 46),
        ("…", 2),  # U+2026 is outside the weight-100 ranges
        ("cafe\u0301", 4),  # NFC: e + combining acute = é
        ("a" * 300, 300),
    ],
)
def test_x_weighted_length(x_rules: PlatformRules, text: str, expected: int) -> None:
    assert count_chars(text, x_rules) == expected


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii text",
        "日本語のテキスト 😷 and more",
        "👨\u200d👩\u200d👧\u200d👦 family 👍🏽 🇯🇵 #️⃣ ©",
        "read https://example.com/blog/post?id=3 today → now",
        "cafe\u0301 naïve — “quotes” ‘single’",
    ],
)
def test_builtin_x_counter_agrees_with_library(x_rules: PlatformRules, text: str) -> None:
    if platforms.twitter_backend() != "twitter-text-parser":
        pytest.skip("twitter-text-parser is not importable here")
    assert platforms._builtin_weighted_length(text, 23) == count_chars(text, x_rules)


def test_x_counting_uses_twitter_text_parser() -> None:
    # The library is a declared dependency; it must load even on setuptools without
    # pkg_resources (the module works around that).
    assert platforms.twitter_backend() == "twitter-text-parser"


def test_other_platforms_count_utf16_units_of_nfc_text() -> None:
    li = get_rules("linkedin")
    assert count_chars("hello", li) == 5
    assert count_chars("日本語", li) == 3
    assert count_chars("cafe\u0301", li) == 4
    assert count_chars("😷", li) == 2  # astral plane: a surrogate pair
    assert count_chars("https://example.com/" + "a" * 100, li) == 120  # URLs count in full


# --------------------------------------------------------------------------- hashtags


def test_extract_hashtags() -> None:
    text = (
        "Launch day! #AI and #ai again, #2024 is not a tag, see "
        "https://example.com/page#section, x#nope &#amp; #café #日本 #growth_hacking."
    )
    assert extract_hashtags(text) == ["#AI", "#café", "#日本", "#growth_hacking"]
    assert extract_hashtags("no tags here") == []


def test_check_post_reports_length_and_hashtags() -> None:
    ok = check_post("Hello world #ai", "linkedin")
    assert ok.ok and ok.problems == []
    assert (ok.length, ok.max_chars, ok.hashtags) == (15, 3000, 1)

    too_long = check_post("a" * 281, "x")
    assert not too_long.ok
    assert too_long.length == 281 and too_long.max_chars == 280
    assert any("280" in p for p in too_long.problems)

    assert check_post("日" * 140, "x").ok
    assert not check_post("日" * 141, "x").ok  # 282 weighted

    assert not check_post("   ", "facebook").ok


def test_instagram_hashtag_hard_limit_in_check_post() -> None:
    thirty = " ".join(f"#tag{i}" for i in range(30))
    thirty_one = thirty + " #tag30"
    assert check_post(thirty, "instagram").ok
    report = check_post(thirty_one, "instagram")
    assert not report.ok
    assert report.hashtags == 31
    assert any("30" in p for p in report.problems)


def test_recommended_hashtags_only_warn() -> None:
    report = check_post("Post #one #two #three #four", "x")
    assert report.ok  # no hard limit on X
    assert report.warnings


# --------------------------------------------------------------------------- fit_post


def test_fit_post_appends_normalised_deduplicated_hashtags() -> None:
    post = fit_post(
        "We shipped the new planner. #AI",
        ["ai", "#Marketing", "growth hacking", "  ", "2024", "#marketing", "B2B-SaaS"],
        "linkedin",
    )
    body, _, tags = post.partition("\n\n")
    assert body == "We shipped the new planner. #AI"
    # "#ai" is already in the text, "2024" is not a hashtag, duplicates are dropped,
    # and LinkedIn's recommendation (3 in total) caps the count.
    assert tags == "#Marketing #GrowthHacking"
    assert check_post(post, "linkedin").ok


def test_fit_post_instagram_caps_at_30_hashtags() -> None:
    tags = [f"topic{i}" for i in range(45)]
    post = fit_post("New drop today.", tags, "instagram")
    found = extract_hashtags(post)
    assert len(found) == 30
    assert found == [f"#topic{i}" for i in range(30)]
    assert check_post(post, "instagram").ok


def test_fit_post_removes_body_hashtags_beyond_a_hard_limit() -> None:
    body = "Caption " + " ".join(f"#b{i}x" for i in range(35))
    post = fit_post(body, ["extra"], "instagram")
    assert extract_hashtags(post) == [f"#b{i}x" for i in range(30)]
    assert check_post(post, "instagram").ok


def test_fit_post_x_respects_recommended_cap() -> None:
    post = fit_post("Short post.", ["one", "two", "three", "four"], "twitter")
    assert post == "Short post.\n\n#one #two"


def test_fit_post_drops_hashtags_before_shortening_body() -> None:
    body = "b" * 270  # fits alone (270), not with "\n\n#alpha" (278) + " #beta"
    post = fit_post(body, ["alpha", "beta"], "x")
    assert post == body + "\n\n#alpha"
    body = "b" * 279
    assert fit_post(body, ["alpha"], "x") == body


def test_fit_post_shortens_at_word_boundary_with_ellipsis() -> None:
    text = " ".join(f"word{i}" for i in range(200))
    post = fit_post(text, ["tag"], "x")
    assert post.endswith("…")
    assert count_chars(post, get_rules("x")) <= 280
    assert "#tag" not in post
    stem = post[:-1]
    assert text.startswith(stem) and text[len(stem)] == " "  # cut between words
    # it is the longest such prefix: one more word would not fit
    next_word = text[: text.index(" ", len(stem) + 1)]
    assert count_chars(next_word + "…", get_rules("x")) > 280


def test_fit_post_prefers_sentence_boundary() -> None:
    sentence = "Our planner turns one brief into a week of posts. "
    post = fit_post(sentence * 20, [], "x")
    assert post.endswith("posts.")
    assert not post.endswith("…")
    assert count_chars(post, get_rules("x")) <= 280
    assert count_chars(post, get_rules("x")) > 280 - len(sentence)


def test_fit_post_never_cuts_urls_or_hashtags() -> None:
    pieces = []
    for i in range(300):
        pieces.append(f"https://example.com/p/{i:04d}x" if i % 3 == 0 else f"#tag{i:04d}z")
        pieces.append("filler words here")
    text = " ".join(pieces)
    for platform in PLATFORMS:
        if platform == "facebook":
            continue  # the text fits
        post = fit_post(text, [], platform)
        assert check_post(post, platform).ok
        for m in re.finditer(r"https?://\S*", post):
            assert re.fullmatch(r"https://example\.com/p/\d{4}x", m.group(0)), m.group(0)
        for m in re.finditer(r"#\w*", post):
            assert re.fullmatch(r"#tag\d{4}z", m.group(0)), m.group(0)


def test_fit_post_keeps_a_trailing_url_intact() -> None:
    text = "w " * 130 + "https://example.com/landing-page-for-the-spring-campaign more words " * 3
    post = fit_post(text, [], "x")
    assert check_post(post, "x").ok
    for m in re.finditer(r"https?://\S*", post):
        assert m.group(0) == "https://example.com/landing-page-for-the-spring-campaign"


def test_fit_post_cuts_inside_a_single_huge_word() -> None:
    post = fit_post("x" * 5000, [], "instagram")
    assert post == "x" * 2199 + "…"
    post = fit_post("日" * 500, [], "x")
    assert post == "日" * 139 + "…"


def test_fit_post_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        fit_post("   ", ["", "123"], "x")
    assert fit_post("", ["launch"], "x") == "#launch"


def test_fit_post_strips_invalid_characters() -> None:
    post = fit_post("Hello\ufeff world\ufffe", [], "x")
    assert post == "Hello world"
    assert not check_post("Hello\ufeff", "x").ok


def _sample_text(kind: str, size: int) -> str:
    """Deterministic text of roughly ``size`` characters of the given flavour."""
    units = {
        "words": "Marketing teams plan campaigns, write copy and measure results. ",
        "cjk": "日本語のマーケティング文章です。",
        "emoji": "Launch 🚀 day 🎉 with 👨‍👩‍👧 family deals! ",
        "urls": "Read https://example.com/articles/spring-launch-2025 and share, ",
        "nospace": "x",
    }
    unit = units[kind]
    return (unit * (size // len(unit) + 1))[:size]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("kind", ["words", "cjk", "emoji", "urls", "nospace"])
@pytest.mark.parametrize("factor", [0.5, 0.95, 1.0, 1.05, 1.5, 3.0])
def test_fit_post_always_within_limits(platform: str, kind: str, factor: float) -> None:
    rules = get_rules(platform)
    size = max(1, int(rules.max_chars * factor))
    if platform == "facebook":
        size = min(size, 70_000)  # keep the sweep fast; still over the 63,206 limit
    text = _sample_text(kind, size)
    hashtags = [f"tag{i}" for i in range(40)] + ["growth hacking", "#AI"]
    post = fit_post(text, hashtags, platform)
    report = check_post(post, platform)
    assert report.ok, report.problems
    assert count_chars(post, rules) <= rules.max_chars
    if rules.max_hashtags is not None:
        assert report.hashtags <= rules.max_hashtags
    assert post.strip()
    # deterministic
    assert fit_post(text, hashtags, platform) == post
    # when nothing had to be cut the body is kept whole
    if count_chars(text.strip(), rules) <= rules.max_chars:
        assert post.startswith(text.strip())
