"""Cross-cutting HTTP concerns installed on the app: one JSON error shape (`{"detail": ...}`),
413 body limit, 429 per-key rate limit, CORS for LangGraph Studio (incl. Private Network Access),
and redaction of secrets in every log record.

INTERFACE (stable): `install_security(app, settings)` is called once by `create_app`, before the
app serves its first request. It sets `app.state.settings` (when unset), `app.state.rate_limiter`
and the middleware below (do not also pass `max_body_size` to `FastAPI(...)`).

Errors, whatever raised them, leave as `{"detail": "<message>"}`:
- `HTTPException(status, detail)` -> that status (headers such as `Retry-After` kept);
- request validation -> 422 naming each offending field (`body.assistant_id: Field required`);
  the rejected values are never echoed (they may hold secrets); a JSON body that is not UTF-8,
  nests deeper than `MAX_JSON_DEPTH`, holds NaN/Infinity or a lone surrogate -> 422 naming `body`
  (`JSONBodyCheckMiddleware`), before any route sees it;
- `psycopg.DataError` (Postgres refused a value of the request, e.g. a NUL in text) -> 422;
- `app.errors.AppError` subclasses -> their `.status` and message;
- anything else -> 500 `internal error (ref <id>)`, the traceback only in the (redacted) log.

Middleware, outermost first: CORS -> rate limit -> 404 for a path with a NUL character -> early
body-size check (Content-Length) -> Starlette's body limit (counts streamed bodies sent without
Content-Length) -> JSON body check -> the app. No GZip:
SSE must not be buffered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db import AppDB
from app.errors import AppError
from app.redact import install_log_redaction
from app.server import metrics
from app.server.auth import authenticator, token_from
from app.server.ratelimit import RateLimiter
from app.settings import Settings

log = logging.getLogger(__name__)

# health checks and scrapers are not rate limited
RATE_LIMIT_EXEMPT_PATHS = frozenset({"/ok", "/metrics"})
# response headers a browser client (Studio) may read: the SDK takes the run id from
# Content-Location and reconnects to Location; searches send pagination headers
EXPOSED_HEADERS = [
    "Content-Location",
    "Location",
    "Retry-After",
    "X-Pagination-Total",
    "X-Pagination-Next",
]
MAX_FIELD_ERRORS = 5


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def too_large_message(limit: int) -> str:
    return (
        f"request body is larger than the server's limit of {limit} bytes "
        "(the server's API_BODY_LIMIT_BYTES setting)"
    )


# ---------------------------------------------------------------------------------------------
# validation messages
# ---------------------------------------------------------------------------------------------


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """`body.assistant_id: Field required; query.limit: Input should be ...` (no input values)."""
    parts: list[str] = []
    for error in errors[:MAX_FIELD_ERRORS]:
        loc = tuple(error.get("loc") or ())
        if error.get("type") == "json_invalid":
            position = loc[1] if len(loc) > 1 else "?"
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"body: invalid JSON at position {position}: {reason}".rstrip(": "))
        else:
            parts.append(f"{_loc(loc)}: {error.get('msg', 'invalid value')}")
    more = len(errors) - MAX_FIELD_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


# ---------------------------------------------------------------------------------------------
# exception handlers
# ---------------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code < 200 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)  # no body allowed
    detail: Any = exc.detail
    if exc.status_code == 413:
        detail = too_large_message(request.app.state.settings.api_body_limit_bytes)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe_validation_errors(exc.errors()))


async def _model_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A pydantic model validated inside a route (a body field checked by hand) is bad input."""
    assert isinstance(exc, ValidationError)
    return error_response(422, describe_validation_errors(exc.errors()))


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status", 400)
    return error_response(status if 400 <= status < 600 else 400, str(exc))


# the database cannot answer now: no pooled connection free in time (psycopg_pool.PoolTimeout is
# one), a lost connection, a restart, SQLite's "database is locked" (`retryable` narrows them)
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    sqlite3.OperationalError,
)
RETRY_AFTER_S = 1
# SQLSTATE classes and codes worth repeating: connection exception, insufficient resources (too
# many connections), operator intervention (shutdown, cannot connect now, query canceled),
# transaction rollback (serialization failure, deadlock), lock not available
_RETRYABLE_CLASSES = ("08", "53", "57", "40")
_RETRYABLE_CODES = ("55P03",)


def retryable(exc: Exception) -> bool:
    """A database error that repeating the request may well not meet again. Not, for example,
    a program limit exceeded or a configuration error: those stay 500s."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc)
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        # no SQLSTATE: the client's side (a closed connection, a pool timeout)
        return state is None or state[:2] in _RETRYABLE_CLASSES or state in _RETRYABLE_CODES
    return False


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with `Retry-After`: the request may well succeed when repeated. (A write whose
    transaction did not commit did not happen; one whose connection broke during its commit may
    have.)"""
    if not retryable(exc):
        return await _unexpected_error(request, exc)  # a missing table, a limit: a bug
    ref = uuid.uuid4().hex[:12]
    log.warning(
        "database unavailable (ref %s) on %s %s: %s: %s",
        ref,
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
    )
    return error_response(
        503,
        f"the database is busy or unreachable ({type(exc).__name__}, ref {ref}); retry in "
        f"{RETRY_AFTER_S} s — if this persists, check the database and DB_POOL_MAX_SIZE",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    """psycopg.DataError: Postgres refused a value of the request (a NUL character in text, a
    number out of range) — bad input, not a server fault. The routes check what they can first;
    this is the backstop."""
    ref = uuid.uuid4().hex[:12]
    log.warning(
        "value refused by the database (ref %s) on %s %s: %s",
        ref,
        request.method,
        request.url.path,
        type(exc).__name__,
    )
    return error_response(
        422,
        f"request: a value cannot be stored by the database (a NUL character in text, a number "
        f"out of range; ref {ref})",
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    ref = uuid.uuid4().hex[:12]
    log.error(
        "unhandled error (ref %s) on %s %s", ref, request.method, request.url.path, exc_info=exc
    )
    return error_response(500, f"internal error (ref {ref}); the server log has the details")


# ---------------------------------------------------------------------------------------------
# middleware
# ---------------------------------------------------------------------------------------------


class EarlyBodyLimitMiddleware:
    """413 before any work when Content-Length is over the limit (and 400 when it is not a
    number). Bodies without Content-Length are counted by Starlette's `RequestBodyLimitMiddleware`
    as the route reads them."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length")
            if declared is not None:
                try:
                    size = int(declared)
                except ValueError:
                    size = -1
                if size < 0:
                    response = error_response(400, "Content-Length is not a byte count")
                    await response(scope, receive, send)
                    return
                if size > self.max_body_size:
                    response = error_response(413, too_large_message(self.max_body_size))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# JSON bodies
# ---------------------------------------------------------------------------------------------

MAX_JSON_DEPTH = 64  # nested objects/arrays in a request body (the SDK's bodies use < 10)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# a \uD800-\uDFFF escape; whether it is paired is checked on the parsed text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> float:  # NaN, Infinity, -Infinity
    raise _NotFinite(text)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def json_body_problem(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What makes a JSON request body unacceptable though Python's parser would take it (or fail
    on it with a 500-prone error): not UTF-8, nested deeper than `max_depth`, NaN/Infinity or a
    number out of range, an integer of thousands of digits, a lone UTF-16 surrogate (no database
    can store it). None when it is fine, and for a syntax error (FastAPI names its position)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"body: not valid UTF-8 (at byte {exc.start}); send JSON encoded as UTF-8"
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError:
        return None
    except RecursionError:
        value, deep = None, True
    except _NotFinite:
        return "body: NaN, Infinity and numbers out of range are not JSON numbers; send a finite number"
    except ValueError:  # int() of more than sys.get_int_max_str_digits() digits
        return "body: a number has too many digits"
    else:
        deep = text.count("{") + text.count("[") > max_depth and _depth(value) > max_depth
    if deep:
        return f"body: nested deeper than {max_depth} levels of objects and arrays"
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return (
                "body: a string holds an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape "
                "without its pair); send valid Unicode text"
            )
    return None


def _is_json(scope: Scope) -> bool:
    content_type = Headers(scope=scope).get("content-type")
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("application/") and (media.endswith("/json") or media.endswith("+json"))


class JSONBodyCheckMiddleware:
    """422 naming `body` and what is wrong (`json_body_problem`) before a route sees a JSON body,
    so nothing is stored from it; the body is then handed on unchanged. Sits inside Starlette's
    body limit, so it never holds more than `API_BODY_LIMIT_BYTES`."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        ended: Message | None = None  # a disconnect while the body was read
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    ended = message
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except StarletteHTTPException as exc:  # Starlette's body limit, counting as we read
            if exc.status_code != 413:
                raise
            await error_response(413, too_large_message(self.max_body_size))(scope, receive, send)
            return
        raw = b"".join(chunks)
        problem = json_body_problem(raw) if raw and ended is None else None
        if problem is not None:
            await error_response(422, problem)(scope, receive, send)
            return
        first: Message = ended or {"type": "http.request", "body": raw, "more_body": False}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()  # later: the disconnect a streaming response waits for

        await self.app(scope, replay, send)


class NulPathMiddleware:
    """404 for a path with a NUL character: no id holds one (Postgres text cannot), and the
    database would refuse the lookup (a 500) instead of finding nothing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope["path"]:
            response = error_response(404, "not found: no id contains a NUL character")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _keys_active(request: Request) -> bool:
    """Whether the server checks keys (not open mode), from the authenticator's cached count
    (one database read per `API_KEY_CACHE_S`). Unknown (no database yet, or it cannot answer
    now): assumed active, and the route's own authentication answers."""
    if not isinstance(getattr(request.app.state, "db", None), AppDB):
        return True
    try:
        return await authenticator(request).active_key_count() > 0
    except DATABASE_UNAVAILABLE:
        return True


async def rate_limit_identity(request: Request) -> str:
    """Whose budget a request spends: the presented key's hash (so a forged key cannot spend a
    real key's budget; guesses are throttled per address by the failed-authentication budget),
    else the client address — also in open mode, where presented keys are ignored, so a client
    cannot get a fresh budget by sending a new made-up key each time."""
    token = token_from(request)
    if token and await _keys_active(request):
        return "key:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
    return "ip:" + (request.client.host if request.client else "local")


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or scope["path"] in RATE_LIMIT_EXEMPT_PATHS
            or not self.limiter.request_limits
        ):
            await self.app(scope, receive, send)
            return
        wait = await self.limiter.check_request(await rate_limit_identity(Request(scope)))
        if wait is not None:
            metrics.rate_limited()
            response = error_response(
                429,
                f"rate limit exceeded ({self.limiter.describe()}); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# installation
# ---------------------------------------------------------------------------------------------


def _secrets(settings: Settings) -> list[str | None]:
    values = [
        settings.openai_api_key,
        settings.tavily_api_key,
        settings.database_url,
        settings.qdrant_api_key,
    ]
    values.append(settings.redis_url)
    return [v.get_secret_value() if v is not None else None for v in values]


def install_security(app: FastAPI, settings: Settings) -> None:
    if getattr(app.state, "settings", None) is None:
        app.state.settings = settings
    install_log_redaction(_secrets(settings))

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(ValidationError, _model_validation_error)
    app.add_exception_handler(AppError, _app_error)
    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(psycopg.DataError, _unstorable_value)
    app.add_exception_handler(Exception, _unexpected_error)

    limiter = RateLimiter(
        settings.rate_limit,
        settings.auth_failure_rate_limit,
        settings.redis_url.get_secret_value() if settings.redis_url else None,
    )
    app.state.rate_limiter = limiter

    # add_middleware puts each new one outside the previous: innermost first.
    # Starlette counts streamed bodies (no Content-Length) as the route reads them and raises an
    # HTTPException(413) that our handler turns into the JSON shape; it sits inside the early
    # check so its own plain-text 413 for a declared length is never used. (Not FastAPI's
    # app-level `max_body_size`: that sits outside user middleware and would replace our 413.)
    app.add_middleware(JSONBodyCheckMiddleware, max_body_size=settings.api_body_limit_bytes)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.api_body_limit_bytes)
    app.add_middleware(EarlyBodyLimitMiddleware, max_body_size=settings.api_body_limit_bytes)
    app.add_middleware(NulPathMiddleware)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials="*" not in settings.cors_origins,
            allow_private_network=True,
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
