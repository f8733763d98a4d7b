"""Social platform rules (length, hashtags, style) and deterministic post checks.

The rules live in ``platform_rules.toml`` next to this module (the single data file);
this module loads them into typed, frozen models and provides:

* :func:`count_chars` — a post's length in the platform's own unit. X uses the twitter-text
  v3 weighted length (URLs count ``url_weight``, CJK and emoji count 2, NFC normalisation);
  the other platforms count UTF-16 code units of the NFC text.
* :func:`extract_hashtags`, :func:`check_post` and :func:`fit_post` (make any text fit).

X counting uses the ``twitter-text-parser`` package (module ``twitter_text``). Its 3.0.0
release imports ``pkg_resources``, which setuptools >= 81 no longer ships; when that import
fails we load it with a tiny stand-in for the one function it uses. If the package is not
installed at all, a built-in implementation of the documented v3 configuration is used
(see :func:`twitter_backend`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import sys
import tomllib
import types
import unicodedata
import warnings
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PlatformRules",
    "PostCheck",
    "UnknownPlatformError",
    "check_post",
    "count_chars",
    "extract_hashtags",
    "fit_post",
    "get_rules",
    "known_platforms",
    "load_platform_rules",
    "twitter_backend",
]

log = logging.getLogger(__name__)

RULES_FILE = "platform_rules.toml"
_PACKAGE = __package__ or "tools"

ELLIPSIS = "…"
HASHTAG_SEPARATOR = "\n\n"

Counting = Literal["twitter_weighted", "chars"]


class PlatformRules(BaseModel):
    """One platform's rules, mirroring a table of ``platform_rules.toml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="canonical platform id (the TOML table name)")
    display_name: str
    aliases: tuple[str, ...] = ()
    max_chars: int = Field(gt=0)
    counting: Counting
    url_weight: int | None = Field(default=None, gt=0)
    max_hashtags: int | None = Field(default=None, ge=0, description="hard platform limit")
    recommended_hashtags: int | None = Field(default=None, ge=0, description="best practice")
    preview_chars: int | None = Field(default=None, gt=0)
    links_clickable: bool = True
    tone: str = ""
    format_hints: str = ""

    @property
    def hashtag_cap(self) -> int | None:
        """How many hashtags :func:`fit_post` keeps: the hard limit, else the recommendation."""
        return self.max_hashtags if self.max_hashtags is not None else self.recommended_hashtags


class UnknownPlatformError(ValueError):
    """Raised for a platform id that is neither a known platform nor an alias."""

    def __init__(self, platform: str, known: list[str], aliases: dict[str, str]) -> None:
        self.platform = platform
        self.known = list(known)
        alias_text = ", ".join(f"{a} → {p}" for a, p in sorted(aliases.items()))
        message = f"unknown platform {platform!r}; known platforms: {', '.join(self.known)}"
        if alias_text:
            message += f" (aliases: {alias_text})"
        super().__init__(message)


# --------------------------------------------------------------------------- loading


def _norm_key(name: str) -> str:
    return re.sub(r"[\s._-]+", "", name.strip().casefold())


@functools.cache
def load_platform_rules() -> dict[str, PlatformRules]:
    """Read ``platform_rules.toml`` (packaged with this module), in file order."""
    raw = resources.files(_PACKAGE).joinpath(RULES_FILE).read_text(encoding="utf-8")
    data = tomllib.loads(raw)
    rules: dict[str, PlatformRules] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"{RULES_FILE}: {name!r} must be a table")
        rules[name] = PlatformRules(name=name, **table)
    _alias_map(rules)  # validates that ids and aliases are unambiguous
    return rules


def _alias_map(rules: dict[str, PlatformRules]) -> dict[str, str]:
    """Normalised id-or-alias -> canonical id."""
    mapping: dict[str, str] = {}
    for name, rule in rules.items():
        for key in (name, *rule.aliases):
            norm = _norm_key(key)
            if mapping.get(norm, name) != name:
                raise ValueError(f"{RULES_FILE}: {key!r} names both {mapping[norm]} and {name}")
            mapping[norm] = name
    return mapping


def known_platforms() -> list[str]:
    """Canonical platform ids, in file order."""
    return list(load_platform_rules())


def get_rules(platform: str) -> PlatformRules:
    """Rules for ``platform`` (case-insensitive; aliases such as "twitter" → "x" work)."""
    rules = load_platform_rules()
    name = _alias_map(rules).get(_norm_key(platform))
    if name is None:
        aliases = {a: n for n, r in rules.items() for a in r.aliases}
        raise UnknownPlatformError(platform, list(rules), aliases)
    return rules[name]


# --------------------------------------------------------------------------- twitter-text


def _import_twitter_text() -> Any | None:
    """Import ``twitter_text``; work around its ``pkg_resources`` import if needed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' own deprecation warning
            return importlib.import_module("twitter_text")
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            log.warning("twitter-text-parser is not installed; using built-in X counting")
            return None

    # setuptools >= 81 dropped pkg_resources; twitter_text only calls resource_string().
    def resource_string(package: str, resource: str) -> bytes:
        module = sys.modules.get(package)
        anchor = (module.__package__ if module is not None else None) or package
        return resources.files(anchor).joinpath(resource).read_bytes()

    shim = types.ModuleType("pkg_resources")
    shim.resource_string = resource_string  # type: ignore[attr-defined]
    for mod_name in [m for m in sys.modules if m.split(".")[0] == "twitter_text"]:
        del sys.modules[mod_name]  # leftovers of the failed import
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module("twitter_text")
    except Exception:  # noqa: BLE001 - any failure here means "use the fallback"
        log.warning("twitter-text-parser failed to import; using built-in X counting")
        return None
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


@functools.cache
def _twitter_text() -> Any | None:
    return _import_twitter_text()


def twitter_backend() -> Literal["twitter-text-parser", "builtin"]:
    """Which implementation :func:`count_chars` uses for X."""
    return "builtin" if _twitter_text() is None else "twitter-text-parser"


# twitter-text v3 configuration (config/v3.json of twitter/twitter-text).
_V3_SCALE = 100
_V3_DEFAULT_WEIGHT = 200
_V3_EMOJI_WEIGHT = 200
_V3_RANGES = ((0, 4351, 100), (8192, 8205, 100), (8208, 8223, 100), (8242, 8247, 100))
_INVALID_CHARS = re.compile("[\ufffe\ufeff\uffff]")


def _twitter_options(rules: PlatformRules) -> dict[str, Any]:
    return {
        "version": 3,
        "max_weighted_tweet_length": rules.max_chars,
        "scale": _V3_SCALE,
        "default_weight": _V3_DEFAULT_WEIGHT,
        "emoji_parsing_enabled": True,
        "transformed_url_length": rules.url_weight or 23,
        "ranges": [{"start": s, "end": e, "weight": w} for s, e, w in _V3_RANGES],
    }


# Fallback URL matcher: scheme URLs, or bare domains with a common TLD.
_COMMON_TLDS = (
    "com|org|net|edu|gov|io|co|ai|app|dev|info|biz|me|tv|ly|so|us|uk|de|fr|es|it|nl|eu|ca|"
    "au|jp|cn|in|br|ru|ch|se|no|dk|fi|pl|be|at|nz|ie|xyz|online|site|tech|store|shop|blog"
)
_URL_RE = re.compile(
    r"(?<![\w@.])(?:https?://[^\s<>\"]+|(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+"
    rf"(?:{_COMMON_TLDS})(?![\w-])(?:[/?#][^\s<>\"]*)?)",
    re.IGNORECASE,
)
_URL_TRAILING_PUNCT = ".,:;!?'\")]}"


def _fallback_url_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _URL_RE.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAILING_PUNCT:
            end -= 1
        spans.append((m.start(), end))
    return spans


def _url_spans(text: str) -> list[tuple[int, int]]:
    """Code-point spans of URLs (twitter-text's URL rules when available)."""
    tt = _twitter_text()
    if tt is None:
        return _fallback_url_spans(text)
    return [(d["indices"][0], d["indices"][1]) for d in tt.extract_urls_with_indices(text)]


_ZWJ = 0x200D


def _is_emoji_start(cp: int) -> bool:
    return (
        0x1F000 <= cp <= 0x1FAFF
        or 0x2600 <= cp <= 0x27BF
        or 0x2B00 <= cp <= 0x2BFF
        or 0x2190 <= cp <= 0x21FF
        or 0x2300 <= cp <= 0x23FF
        or cp in (0x00A9, 0x00AE, 0x203C, 0x2049, 0x2122, 0x2139, 0x3030, 0x303D)
    )


def _is_emoji_modifier(cp: int) -> bool:
    return cp in (0xFE0F, 0x20E3) or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F


def _emoji_end(text: str, i: int) -> int:
    """End of an emoji sequence starting at ``i`` (``i`` itself when there is none)."""
    n = len(text)
    cp = ord(text[i])
    keycap = text[i] in "#*0123456789"
    if not (_is_emoji_start(cp) or keycap):
        return i
    if keycap and not (i + 1 < n and ord(text[i + 1]) in (0xFE0F, 0x20E3)):
        return i
    j = i + 1
    if 0x1F1E6 <= cp <= 0x1F1FF and j < n and 0x1F1E6 <= ord(text[j]) <= 0x1F1FF:
        return j + 1  # flag: a pair of regional indicators
    while j < n:
        c = ord(text[j])
        if _is_emoji_modifier(c):
            j += 1
        elif c == _ZWJ and j + 1 < n and _is_emoji_start(ord(text[j + 1])):
            j += 2
        else:
            break
    return j


def _builtin_weighted_length(text: str, url_weight: int) -> int:
    """twitter-text v3 weighted length without the library (close approximation)."""
    text = re.sub(r"\r\n|\r", "\n", unicodedata.normalize("NFC", text))
    urls = dict(_fallback_url_spans(text))
    total = 0
    i = 0
    while i < len(text):
        if i in urls:
            total += url_weight * _V3_SCALE
            i = urls[i]
            continue
        end = _emoji_end(text, i)
        if end > i:
            total += _V3_EMOJI_WEIGHT
            i = end
            continue
        cp = ord(text[i])
        total += next((w for s, e, w in _V3_RANGES if s <= cp <= e), _V3_DEFAULT_WEIGHT)
        i += 1
    return total // _V3_SCALE


def count_chars(text: str, rules: PlatformRules) -> int:
    """Length of ``text`` in the unit the platform limits (see module docstring)."""
    if rules.counting == "twitter_weighted":
        tt = _twitter_text()
        if tt is None:
            return _builtin_weighted_length(text, rules.url_weight or 23)
        return int(tt.parse_tweet(text, _twitter_options(rules)).weightedLength)
    nfc = unicodedata.normalize("NFC", text)
    return len(nfc.encode("utf-16-le")) // 2


# --------------------------------------------------------------------------- hashtags


def _is_tag_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M")


def _hashtag_spans(text: str) -> list[tuple[int, int]]:
    """Spans of hashtags ("#" included), following twitter-text's basic rules."""
    urls = _url_spans(text) if "#" in text or "＃" in text else []
    spans = []
    for m in re.finditer("[#＃]", text):
        i = m.start()
        if i > 0 and (_is_tag_char(text[i - 1]) or text[i - 1] in "&#＃"):
            continue
        j = i + 1
        while j < len(text) and _is_tag_char(text[j]):
            j += 1
        body = text[i + 1 : j]
        if not any(c.isalpha() or unicodedata.category(c).startswith("M") for c in body):
            continue  # "#1", "#️⃣" and a lone "#" are not hashtags
        if any(s <= i < e for s, e in urls):
            continue  # fragment of a URL, e.g. https://example.com/page#section
        spans.append((i, j))
    return spans


def extract_hashtags(text: str) -> list[str]:
    """Hashtags in ``text`` in order of appearance, "#"-prefixed, without case-insensitive
    duplicates (the first spelling is kept). Hashtags inside URLs and all-digit tags are
    ignored."""
    text = unicodedata.normalize("NFC", text)
    seen: set[str] = set()
    tags = []
    for s, e in _hashtag_spans(text):
        tag = "#" + text[s + 1 : e]
        if tag.casefold() not in seen:
            seen.add(tag.casefold())
            tags.append(tag)
    return tags


def _normalize_hashtag(raw: str) -> str | None:
    """'#growth-hacking' -> '#GrowthHacking', 'AI marketing' -> '#AIMarketing', '2024' -> None."""
    text = unicodedata.normalize("NFC", raw).strip().lstrip("#＃")
    text = text.replace("'", "").replace("’", "")
    words: list[str] = []
    current = ""
    for ch in text:
        if _is_tag_char(ch):
            current += ch
        elif current:
            words.append(current)
            current = ""
    if current:
        words.append(current)
    if not words:
        return None
    joined = words[0] if len(words) == 1 else "".join(w[:1].upper() + w[1:] for w in words)
    tag = "#" + joined
    return tag if extract_hashtags(tag) == [tag] else None


# --------------------------------------------------------------------------- checks


class PostCheck(BaseModel):
    """Result of :func:`check_post`. ``ok`` is False iff ``problems`` is non-empty."""

    ok: bool
    length: int
    max_chars: int
    hashtags: int
    problems: list[str]
    warnings: list[str] = Field(default_factory=list)


def check_post(text: str, platform: str) -> PostCheck:
    """Check ``text`` against the platform's hard rules (``problems``) and
    recommendations (``warnings``, which do not make the post fail)."""
    rules = get_rules(platform)
    length = count_chars(text, rules)
    tags = extract_hashtags(text)
    problems: list[str] = []
    notes: list[str] = []
    if not text.strip():
        problems.append("The post is empty.")
    if length > rules.max_chars:
        problems.append(
            f"The post is {length} characters; {rules.display_name} allows at most "
            f"{rules.max_chars}. Cut {length - rules.max_chars}."
        )
    if rules.max_hashtags is not None and len(tags) > rules.max_hashtags:
        problems.append(
            f"The post has {len(tags)} hashtags; {rules.display_name} allows at most "
            f"{rules.max_hashtags}."
        )
    if _INVALID_CHARS.search(text):
        problems.append("The post contains invalid characters (U+FFFE, U+FEFF or U+FFFF).")
    if rules.recommended_hashtags is not None and len(tags) > rules.recommended_hashtags:
        notes.append(
            f"{len(tags)} hashtags; {rules.recommended_hashtags} or fewer is recommended "
            f"on {rules.display_name}."
        )
    if not rules.links_clickable and _url_spans(text):
        notes.append(f"Links are not clickable in {rules.display_name} posts; say 'link in bio'.")
    return PostCheck(
        ok=not problems,
        length=length,
        max_chars=rules.max_chars,
        hashtags=len(tags),
        problems=problems,
        warnings=notes,
    )


# --------------------------------------------------------------------------- fitting

_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*$")
_TRAILING_JUNK = " \t\n,;:-–—(["
# code points a cut must not separate from the preceding character
_NO_CUT_BEFORE = re.compile("[\u200d\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]")


def _compose(body: str, tags: list[str]) -> str:
    if not tags:
        return body
    return f"{body}{HASHTAG_SEPARATOR}{' '.join(tags)}" if body else " ".join(tags)


def _largest_fitting(n: int, fits: Callable[[int], bool]) -> int | None:
    """Largest k in [0, n) with fits(k) by bisection (fits is monotone at word boundaries:
    a longer prefix never counts less); None when not even k = 0 fits."""
    lo, hi, best = 0, n - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _with_ellipsis(prefix: str, urls: list[tuple[int, int]]) -> str:
    end = len(prefix.rstrip())
    if not any(s < end <= e for s, e in urls):  # never trim the tail of a URL
        end = len(prefix.rstrip(_TRAILING_JUNK))
    if end == 0:
        return ELLIPSIS
    glue = " " if any(s < end <= e for s, e in urls) else ""  # keep "…" out of the URL
    return prefix[:end] + glue + ELLIPSIS


def _shorten(body: str, fits: Callable[[str], bool]) -> str:
    """Longest shortening of ``body`` that fits: at a sentence end when that keeps most of the
    text, else at a word boundary plus "…"; URLs and hashtags are never cut."""
    urls = _url_spans(body)
    ends = [m.end() for m in re.finditer(r"\S+", body)]
    k = _largest_fitting(len(ends), lambda i: fits(_with_ellipsis(body[: ends[i]], urls)))
    if k is not None:
        word_end = ends[k]
        for end in reversed(ends[: k + 1]):
            if end < 0.6 * word_end:
                break
            if _SENTENCE_END.search(body, max(0, end - 8), end) and fits(body[:end]):
                return body[:end]
        return _with_ellipsis(body[:word_end], urls)

    # Even the first word is too long: cut inside it, but not inside a URL, hashtag or emoji.
    protected = urls + _hashtag_spans(body)
    cuts = [
        c
        for c in range(1, len(body))
        if not any(s < c < e for s, e in protected) and not _NO_CUT_BEFORE.match(body, c)
    ]
    k = _largest_fitting(len(cuts), lambda i: fits(_with_ellipsis(body[: cuts[i]], urls)))
    return ELLIPSIS if k is None else _with_ellipsis(body[: cuts[k]], urls)


def _drop_excess_body_hashtags(body: str, limit: int) -> str:
    """Remove the hashtags after the first ``limit`` distinct ones from ``body``."""
    order: dict[str, int] = {}
    pieces: list[str] = []
    last = 0
    for s, e in _hashtag_spans(body):
        rank = order.setdefault(body[s:e].casefold(), len(order))
        if rank >= limit:
            pieces.append(body[last:s].rstrip(" \t"))
            last = e
    pieces.append(body[last:])
    joined = " ".join(p for p in pieces if p) if len(pieces) > 1 else pieces[0]
    return re.sub(r"[ \t]{2,}", " ", joined).strip()


def fit_post(text: str, hashtags: list[str], platform: str) -> str:
    """Deterministically turn ``text`` + ``hashtags`` into a post that passes :func:`check_post`.

    * hashtags are normalised ("growth hacking" → "#GrowthHacking"; all-digit or empty
      ones are dropped), de-duplicated case-insensitively and against the hashtags already in
      ``text``, capped so the post has at most ``rules.hashtag_cap`` hashtags (the hard
      limit, else the recommendation), and appended after a blank line;
    * the body's own hashtags are only removed when they exceed a hard limit;
    * if the post is too long, appended hashtags are dropped from the end first, then the
      body is shortened: at a sentence end (no ellipsis) when that keeps at least 60% of what
      a word-boundary cut would, else at a word boundary followed by "…". URLs and hashtags
      are never cut.

    Raises ValueError when there is nothing to post (empty text and no usable hashtag).
    """
    rules = get_rules(platform)
    body = unicodedata.normalize("NFC", text)
    body = _INVALID_CHARS.sub("", re.sub(r"\r\n|\r", "\n", body)).strip()
    if rules.max_hashtags is not None:
        body = _drop_excess_body_hashtags(body, rules.max_hashtags)

    present = {t.casefold() for t in extract_hashtags(body)}
    tags: list[str] = []
    for raw in hashtags:
        tag = _normalize_hashtag(raw)
        if tag is not None and tag.casefold() not in present:
            present.add(tag.casefold())
            tags.append(tag)
    cap = rules.hashtag_cap
    if cap is not None:
        tags = tags[: max(0, cap - len(extract_hashtags(body)))]
    if not body and not tags:
        raise ValueError("nothing to post: the text is empty and no usable hashtag was given")

    def fits(candidate: str) -> bool:
        return count_chars(candidate, rules) <= rules.max_chars

    while tags and not fits(_compose(body, tags)):
        tags.pop()
    post = _compose(body, tags)
    if not fits(post):
        post = _shorten(body, fits)

    report = check_post(post, rules.name)
    if not report.ok:  # pragma: no cover - a bug, not an input problem
        raise RuntimeError(f"fit_post produced an invalid post: {report.problems}")
    return post
