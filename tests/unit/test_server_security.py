"""Error shape, body limit, rate limit, CORS for Studio, metrics, secrets in logs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app import apikeys
from app.db import AppDB, open_sqlite_db
from app.redact import forget_secrets
from app.server import metrics
from app.server.security import describe_validation_errors
from app.settings import Settings
from tests.helpers import http_scope
from tests.security_app import build_app

RUN = {"assistant_id": "supervisor"}
JSON = {"content-type": "application/json"}
TEXT = {"content-type": "text/plain"}
STUDIO = "https://smith.langchain.com"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "model_provider": "scripted",
        "data_dir": tmp_path / "data",
        "rate_limit": None,
        "auth_failure_rate_limit": None,
    }
    return Settings(**(base | overrides))  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AppDB]:
    opened, conn = await open_sqlite_db(tmp_path / "app.sqlite")
    await opened.migrate()
    yield opened
    await conn.close()
    forget_secrets()


def client_for(settings: Settings, db: AppDB, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(
        app=build_app(settings, db), client=(ip, 50000), raise_app_exceptions=False
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# ---------------------------------------------------------------------------------------------
# one error shape
# ---------------------------------------------------------------------------------------------


async def test_invalid_bodies_get_422_naming_the_field(tmp_path: Path, db: AppDB) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        missing = await client.post("/threads/t1/runs", json={"input": {}})
        assert missing.status_code == 422
        assert missing.json() == {"detail": "body.assistant_id: Field required"}
        wrong_type = await client.post(
            "/threads/t1/runs", json={"assistant_id": "a", "metadata": "x"}
        )
        assert wrong_type.json()["detail"].startswith("body.metadata: Input should be")
        bad_query = await client.get("/threads", params={"limit": 1000})
        assert bad_query.status_code == 422
        assert bad_query.json()["detail"].startswith("query.limit: ")
        not_json = await client.post(
            "/threads/t1/runs",
            content=b'{"assistant_id": ',
            headers={"content-type": "application/json"},
        )
        assert not_json.status_code == 422
        assert not_json.json()["detail"].startswith("body: invalid JSON at position 17")


async def test_rejected_values_are_not_echoed(tmp_path: Path, db: AppDB) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        response = await client.post(
            "/threads/t1/runs", json={"assistant_id": "", "metadata": "sk-SECRET-VALUE-123456789"}
        )
        assert response.status_code == 422
        assert "SECRET" not in response.text
        assert "body.assistant_id" in response.text and "body.metadata" in response.text


def test_validation_message_caps_the_number_of_fields() -> None:
    errors = [
        {"loc": ("body", f"f{i}"), "msg": "Field required", "type": "missing"} for i in range(8)
    ]
    message = describe_validation_errors(errors)
    assert message.count("Field required") == 5 and message.endswith("and 3 more")


async def test_app_errors_unknown_routes_and_crashes_share_one_shape(
    tmp_path: Path, db: AppDB, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        missing = await client.post("/threads/missing/runs", json=RUN)
        assert missing.status_code == 404
        assert missing.json() == {"detail": "thread 'missing' does not exist (see `mkt threads`)"}
        assert (await client.get("/nowhere")).json() == {"detail": "Not Found"}
        assert (await client.delete("/threads")).status_code == 405
        with caplog.at_level(logging.ERROR):
            crash = await client.post("/threads/boom/runs", json=RUN)
    assert crash.status_code == 500
    detail = crash.json()["detail"]
    assert set(crash.json()) == {"detail"} and detail.startswith("internal error (ref ")
    assert "hunter2" not in crash.text and "RuntimeError" not in crash.text
    ref = detail.split("ref ")[1].split(")")[0]
    assert any(ref in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_database_that_cannot_answer_now_gives_503_with_retry_after(
    tmp_path: Path, db: AppDB, caplog: pytest.LogCaptureFixture
) -> None:
    """No pooled connection free in time, a lost connection, SQLite's lock: the request may
    succeed when repeated, so 503 + Retry-After (the SDK's clients and proxies know it), not 500.
    A database error that repeating would not cure (a missing table, a program limit) stays a
    500."""
    async with client_for(make_settings(tmp_path), db) as client:
        with caplog.at_level(logging.WARNING):
            for thread in ("pool-dry", "locked", "shutdown"):
                busy = await client.post(f"/threads/{thread}/runs", json=RUN)
                assert busy.status_code == 503, busy.text
                assert busy.headers["retry-after"] == "1"
                detail = busy.json()["detail"]
                assert detail.startswith("the database is busy or unreachable (")
                assert "DB_POOL_MAX_SIZE" in detail
        assert "PoolTimeout" in caplog.text  # the log names what happened
        for thread in ("no-table", "too-big"):  # repeating would not help
            bug = await client.post(f"/threads/{thread}/runs", json=RUN)
            assert bug.status_code == 500 and bug.json()["detail"].startswith("internal error")


# ---------------------------------------------------------------------------------------------
# 413
# ---------------------------------------------------------------------------------------------


async def test_body_over_the_limit_gets_413_with_or_without_content_length(
    tmp_path: Path, db: AppDB
) -> None:
    settings = make_settings(tmp_path, api_body_limit_bytes=2048)
    big = b'{"assistant_id": "' + b"x" * 4096 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    async with client_for(settings, db) as client:
        declared = await client.post(
            "/threads/t1/runs", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert "limit of 2048 bytes" in declared.json()["detail"]
        streamed = await client.post(
            "/threads/t1/runs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "limit of 2048 bytes" in streamed.json()["detail"]
        # any route, even one that reads no body, before authentication
        assert (await client.post("/nowhere", content=big)).status_code == 413
        small = b'{"assistant_id": "' + b"x" * 1000 + b'"}'
        fits = await client.post(
            "/threads/t1/runs", content=small, headers={"content-type": "application/json"}
        )
        assert fits.status_code == 200


async def test_json_bodies_are_checked_before_the_route_and_handed_on_unchanged(
    tmp_path: Path, db: AppDB
) -> None:
    """Invalid UTF-8 got FastAPI's generic 400 "There was an error parsing the body"; bodies
    nested too deep, with NaN or a lone surrogate reached the route. Each is a 422 naming `body`
    (streamed or not); a valid body reaches the route as sent, streamed or not."""
    settings = make_settings(tmp_path)
    deep = b'{"assistant_id": "a", "input": ' + b"[" * 70 + b"]" * 70 + b"}"

    async def streamed(body: bytes) -> AsyncIterator[bytes]:  # no Content-Length
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    async with client_for(settings, db) as client:
        for body, detail in [
            (b'{"assistant_id": "\xff"}', "body: not valid UTF-8 (at byte 18)"),
            (deep, "body: nested deeper than 64 levels of objects and arrays"),
            (b'{"assistant_id": "a", "input": {"x": NaN}}', "body: NaN, Infinity"),
            (b'{"assistant_id": "a\\udfff"}', "body: a string holds an unpaired UTF-16"),
        ]:
            for content in (body, streamed(body)):
                r = await client.post("/threads/t1/runs", content=content, headers=JSON)
                assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text
        good = b'{"assistant_id": "caf\\u00e9 \\ud83d\\ude00", "input": {"x": 1.5}}'
        for content in (good, streamed(good)):
            r = await client.post("/threads/t1/runs", content=content, headers=JSON)
            assert r.status_code == 200 and r.json()["assistant_id"] == "caf\u00e9 \U0001f600"
        # not declared JSON: not checked here (the route refuses what it cannot read)
        text = await client.post("/threads/t1/runs", content=b"\xff", headers=TEXT)
        assert text.status_code == 422 and "not valid UTF-8" not in text.text


async def test_a_nul_in_a_path_is_404_and_a_value_postgres_refuses_is_422(
    tmp_path: Path, db: AppDB
) -> None:
    """Postgres refuses a NUL character in text (psycopg.DataError): a path id with one was a
    500 on every route; no id holds one, so it is a 404 before any route. A value Postgres
    refuses that no route caught is a 422, not a 500."""
    async with client_for(make_settings(tmp_path), db) as client:
        for method, path in [("GET", "/threads/a%00b"), ("POST", "/threads/a%00b/runs")]:
            r = await client.request(method, path, json=RUN)
            assert r.status_code == 404 and "NUL" in r.json()["detail"], r.text
        r = await client.post("/threads/nul-text/runs", json=RUN)
        assert r.status_code == 422 and r.json()["detail"].startswith("request: a value cannot")


async def test_content_length_must_be_a_number(tmp_path: Path, db: AppDB) -> None:
    app = build_app(make_settings(tmp_path), db)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = http_scope("POST", "/threads/t1/runs", [(b"content-length", b"lots")])
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 400
    assert b"Content-Length is not a byte count" in sent[1]["body"]  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------
# 429
# ---------------------------------------------------------------------------------------------


async def test_rate_limit_per_key_with_retry_after(tmp_path: Path, db: AppDB) -> None:
    metrics.reset()
    _, first = await apikeys.create_key(db, role="viewer", tenant="acme")
    _, second = await apikeys.create_key(db, role="viewer", tenant="acme")
    async with client_for(make_settings(tmp_path, rate_limit="3/minute"), db) as client:
        for _ in range(3):
            assert (await client.get("/threads", headers={"x-api-key": first})).status_code == 200
        limited = await client.get("/threads", headers={"x-api-key": first})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "rate limit exceeded" in limited.json()["detail"]
        # another key has its own budget; health checks and scrapes are never limited
        assert (await client.get("/threads", headers={"x-api-key": second})).status_code == 200
        for _ in range(5):
            assert (await client.get("/ok")).status_code == 200
    assert "mkt_rate_limited_total 1.0" in metrics.render()[0].decode()


async def test_rate_limit_per_client_address_in_open_mode(tmp_path: Path, db: AppDB) -> None:
    settings = make_settings(tmp_path, rate_limit="2/minute")
    app = build_app(settings, db)

    def client(ip: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 1))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    async with client("127.0.0.1") as one, client("127.0.0.2") as two:
        assert [(await one.get("/threads")).status_code for _ in range(3)] == [200, 200, 429]
        assert (await two.get("/threads")).status_code == 200


async def test_guessing_keys_is_throttled_per_address(tmp_path: Path, db: AppDB) -> None:
    await apikeys.create_key(db, role="viewer", tenant="acme")
    settings = make_settings(tmp_path, auth_failure_rate_limit="2/minute")
    async with client_for(settings, db) as client:
        codes = []
        for _ in range(3):
            _, guess = apikeys.new_token()
            codes.append((await client.get("/threads", headers={"x-api-key": guess})).status_code)
        assert codes == [401, 401, 429]


async def test_throttled_key_guesses_cost_no_database_read(
    tmp_path: Path, db: AppDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an address has spent its failed-authentication budget, a key not in the lookup
    cache is refused with 429 before it is looked up: each throttled guess cost a read of the
    api_keys table. A key already in the cache (known good) still works from that address."""
    _, good = await apikeys.create_key(db, role="viewer", tenant="acme")
    reads = 0
    original = db.get_api_key

    async def counting(key_id: str) -> dict[str, object] | None:
        nonlocal reads
        reads += 1
        return await original(key_id)

    monkeypatch.setattr(db, "get_api_key", counting)
    settings = make_settings(tmp_path, auth_failure_rate_limit="2/minute", api_key_cache_s=60)
    async with client_for(settings, db) as client:
        assert (await client.get("/threads", headers={"x-api-key": good})).status_code == 200
        reads = 0
        codes = []
        for _ in range(20):
            _, guess = apikeys.new_token()  # well-formed, unknown
            codes.append((await client.get("/threads", headers={"x-api-key": guess})).status_code)
        assert codes[:2] == [401, 401] and set(codes[2:]) == {429}
        assert reads == 2  # the two guesses within the budget
        assert (await client.get("/threads", headers={"x-api-key": good})).status_code == 200
        _, unknown = apikeys.new_token()
        throttled = await client.get("/threads", headers={"x-api-key": unknown})
        assert throttled.status_code == 429 and "retry-after" in throttled.headers
    assert reads == 2


async def test_open_mode_budget_is_the_address_whatever_key_is_sent(
    tmp_path: Path, db: AppDB
) -> None:
    """In open mode presented keys are ignored for auth; each made-up x-api-key value got a
    fresh request budget, so one client escaped RATE_LIMIT by sending a new one each time."""
    settings = make_settings(tmp_path, rate_limit="2/minute")
    async with client_for(settings, db) as client:
        codes = [
            (await client.get("/threads", headers={"x-api-key": f"junk-{i}"})).status_code
            for i in range(4)
        ]
        assert codes == [200, 200, 429, 429]
        assert (await client.get("/threads")).status_code == 429  # the same budget


def test_rate_limit_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="write it like '120/minute'"):
        Settings(rate_limit="lots")
    assert Settings(rate_limit="").rate_limit is None
    assert Settings(rate_limit="20/second;1000/hour").rate_limit == "20/second;1000/hour"
    with pytest.raises(ValueError, match="redis://"):
        Settings(redis_url="localhost:6379")


# ---------------------------------------------------------------------------------------------
# CORS for LangGraph Studio
# ---------------------------------------------------------------------------------------------


async def test_studio_preflight_including_private_network_access(tmp_path: Path, db: AppDB) -> None:
    await apikeys.create_key(db, role="viewer", tenant="acme")  # preflights carry no key
    settings = make_settings(tmp_path, rate_limit="1/minute")
    preflight = {
        "Origin": STUDIO,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type, last-event-id",
        "Access-Control-Request-Private-Network": "true",
    }
    async with client_for(settings, db) as client:
        for _ in range(2):  # never rate limited
            response = await client.options("/threads/t1/runs", headers=preflight)
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == STUDIO
            assert response.headers["access-control-allow-private-network"] == "true"
            assert "POST" in response.headers["access-control-allow-methods"]
            allowed = response.headers["access-control-allow-headers"].lower()
            assert "x-api-key" in allowed and "last-event-id" in allowed
        stranger = await client.options(
            "/threads/t1/runs", headers=preflight | {"Origin": "https://evil.example"}
        )
        assert stranger.status_code == 400
        assert "access-control-allow-origin" not in stranger.headers
        # actual responses, errors included, are readable by Studio, with the run headers
        denied = await client.get("/threads", headers={"Origin": STUDIO})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == STUDIO
        exposed = denied.headers["access-control-expose-headers"].lower()
        assert "content-location" in exposed and "location" in exposed


async def test_cors_origins_are_configurable(tmp_path: Path, db: AppDB) -> None:
    settings = make_settings(
        tmp_path, cors_origins="http://localhost:3000, https://studio.example/"
    )
    assert settings.cors_origins == ["http://localhost:3000", "https://studio.example"]
    async with client_for(settings, db) as client:
        ok = await client.get("/threads", headers={"Origin": "https://studio.example"})
        assert ok.headers["access-control-allow-origin"] == "https://studio.example"
        studio = await client.get("/threads", headers={"Origin": STUDIO})
        assert "access-control-allow-origin" not in studio.headers


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


async def test_metrics_exposition_has_the_series(tmp_path: Path, db: AppDB) -> None:
    metrics.reset()
    metrics.run_started()
    metrics.run_started()
    metrics.run_finished("success", 1.5)
    metrics.stream_opened()
    metrics.stream_opened()
    metrics.stream_closed()
    metrics.usage_recorded("content", 100, 40, 0.25)
    metrics.usage_recorded("content", 10, 0, 0.0)
    async with client_for(make_settings(tmp_path), db) as client:
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for line in (
        "mkt_runs_started_total 2.0",
        'mkt_runs_total{status="success"} 1.0',
        'mkt_run_duration_seconds_bucket{le="2.5",status="success"} 1.0',
        'mkt_run_duration_seconds_bucket{le="1.0",status="success"} 0.0',
        'mkt_run_duration_seconds_sum{status="success"} 1.5',
        "mkt_active_runs 1.0",
        "mkt_active_streams 1.0",
        'mkt_tokens_total{agent="content",direction="input"} 110.0',
        'mkt_tokens_total{agent="content",direction="output"} 40.0',
        'mkt_cost_usd_total{agent="content"} 0.25',
    ):
        assert line in text.splitlines(), line
    # our own registry: nothing from prometheus_client's global default (process/gc collectors)
    assert "python_gc_objects_collected_total" not in text
    metrics.reset()
    assert "mkt_active_runs 0.0" in metrics.render()[0].decode()
    openmetrics, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert openmetrics.endswith(b"# EOF\n")


# ---------------------------------------------------------------------------------------------
# secrets in logs
# ---------------------------------------------------------------------------------------------


async def test_keys_and_provider_secrets_never_reach_the_log(
    tmp_path: Path, db: AppDB, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = await apikeys.create_key(db, role="editor", tenant="acme")
    openai_key = "sk-proj-unusual-format-but-secret-0123456789"
    settings = make_settings(tmp_path, openai_api_key=openai_key)
    async with client_for(settings, db) as client:
        with caplog.at_level(logging.INFO, logger="tests.security_app"):
            ok = await client.post(
                "/threads/t1/runs", json=RUN, headers={"Authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200
            logging.getLogger("tests.security_app").info("config %s", {"key": openai_key})
    text = caplog.text
    assert "run requested with headers" in text
    assert token not in text and token.split("_", 2)[2] not in text
    assert openai_key not in text
    assert f"mkt_{apikeys.key_id_of(token)}_***" in text  # the public key id stays, for tracing
