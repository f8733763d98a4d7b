"""Keep secrets out of logs and event payloads.

`redact(text)` masks what looks like a credential: our API keys (`mkt_<id>_<secret>` keeps the
public id), OpenAI (`sk-...`) and Tavily (`tvly-...`) keys, `OPENAI_API_KEY=...`-style
assignments, `Authorization` / `x-api-key` header values, passwords in connection URLs, and any
exact secret value registered with `register_secret` (the configured keys themselves, whatever
their format). `redact_obj` does the same through JSON-like data (and masks whole values under
keys such as `authorization`, `api_key`, `password`).

`install_log_redaction()` redacts every log record of the process at creation time (a record
factory, so it covers every logger and handler, uvicorn's included); `RedactingFilter` is the same
as a `logging.Filter` for handler configs that want it explicitly.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"

# our own API keys: `mkt_` + 12 hex id + `_` + secret; the id is public (shown by `mkt keys list`)
_MKT_KEY = re.compile(r"\b(mkt_[0-9a-f]{12})_[A-Za-z0-9_-]{8,}")
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (_MKT_KEY, r"\1_" + MASK),
    # NAME=value / NAME: value / "NAME": "value" for secret-bearing settings and headers
    (
        re.compile(
            r"""(?ix)
            (["']?\b(?:[a-z0-9_]*_api_key|api[-_]?key|x-api-key|authorization|proxy-authorization
                |password|passwd|client_secret|access_token|refresh_token)\b["']?
             \s*[=:]\s*
             ["']?)
            (?:(?:bearer|basic|token)\s+)?
            (?!mkt_[0-9a-f]{12}_\*)  # already masked, keeping the public key id
            [^\s"',;&}\]]+
            """
        ),
        r"\1" + MASK,
    ),
    # a bare `Bearer <token>` anywhere else (e.g. inside a repr of headers)
    (re.compile(r"(?i)\b(bearer)\s+(?!mkt_[0-9a-f]{12}_\*)[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # provider key formats
    (re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{16,}"), "sk-" + MASK),
    (re.compile(r"\btvly-[A-Za-z0-9_-]{10,}"), "tvly-" + MASK),
    (re.compile(r"\blsv2_[A-Za-z0-9_]{16,}"), "lsv2_" + MASK),
    # user:password@ in URLs (postgresql://user:pw@host/db, redis://:pw@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
]

_SENSITIVE_KEYS = re.compile(
    r"(?i)^(?:authorization|proxy-authorization|x-api-key|api[-_]?key|[a-z0-9_]*_api_key|password"
    r"|passwd|secret|client_secret|access_token|refresh_token|cookie|set-cookie)$"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_MIN_SECRET_LEN = 8  # shorter values would mask ordinary words


def register_secret(*values: str | None) -> None:
    """Mask these exact values wherever they appear (e.g. the configured provider keys)."""
    with _lock:
        for value in values:
            if value and len(value) >= _MIN_SECRET_LEN:
                _secrets.add(value)


def registered_secrets() -> frozenset[str]:
    return frozenset(_secrets)


def forget_secrets() -> None:
    """Tests only: drop the registered exact values."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """`text` with every credential masked."""
    if not text:
        return text
    for value in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leftovers
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_sensitive_key(key: str) -> bool:
    """A key whose value is a credential whatever it looks like (`authorization`, `api_key`,
    `openai_api_key`, `password`, ...): `redact_obj` masks such values whole."""
    return bool(_SENSITIVE_KEYS.match(key))


def redact_obj(value: Any) -> Any:
    """A copy of JSON-like data with credentials masked (strings redacted; values under
    credential-named keys replaced whole)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and _SENSITIVE_KEYS.match(k) else redact_obj(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_obj(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------


def _redact_args(args: Any) -> Any:
    if isinstance(args, tuple):
        return tuple(redact(a) if isinstance(a, str) else _redact_str_of(a) for a in args)
    if isinstance(args, dict):
        return {k: redact(v) if isinstance(v, str) else _redact_str_of(v) for k, v in args.items()}
    return args


def _redact_str_of(value: Any) -> Any:
    """Objects formatted with %s/%r (headers, exceptions, settings) are rendered and redacted;
    numbers stay numbers so %d keeps working."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    masked = redact(text)
    return value if masked == text else masked


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask credentials in a record's message, arguments and exception text, in place."""
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    else:
        masked = _redact_str_of(record.msg)
        if masked is not record.msg:
            record.msg = masked
    if record.args:
        record.args = _redact_args(record.args)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A handler filter that masks credentials in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_original_factory: Any = None


def install_log_redaction(secrets: Iterable[str | None] = ()) -> None:
    """Redact every log record of this process when it is created (idempotent). `secrets` are
    exact values to mask in addition to the patterns (pass the configured provider keys)."""
    global _original_factory
    register_secret(*secrets)
    with _lock:
        if _original_factory is not None:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return redact_record(previous(*args, **kwargs))

        _original_factory = previous
        logging.setLogRecordFactory(factory)


def uninstall_log_redaction() -> None:
    """Tests only: restore the record factory that was there before."""
    global _original_factory
    with _lock:
        if _original_factory is not None:
            logging.setLogRecordFactory(_original_factory)
            _original_factory = None
