"""Schemathesis against `/openapi.json` of a live uvicorn on loopback: bad input never yields a
5xx (it gets 4xx with `{"detail": ...}`).

Two targets:
- the server (`app.server.app.create_app`), skipped with the reason printed while that module does
  not exist yet;
- the security test app (`tests/security_app.py`: the real error handlers, limits, auth and /keys
  routes around stand-in routes), which proves the harness.

Every operation gets `MAX_EXAMPLES` cases of valid data and as many of invalid data (Hypothesis
driven directly: schemathesis' pytest plugin does not work with pytest 9 in the schemathesis
version langgraph-api allows), derandomized and without shrinking, so it stays fast and a
failure reproduces (the report includes a curl command).
Open mode on loopback (no keys) and no rate limit, so generated requests reach the routes.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from app.local_llm import free_port  # noqa: E402
from app.server.security import install_security  # noqa: E402
from app.settings import Settings, reset_settings_cache  # noqa: E402
from tests.security_app import build_app  # noqa: E402

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 8
START_TIMEOUT_S = 30.0
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: CI failures reproduce locally
)


def serve(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port (lifespan included) until the test ends."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-schemathesis", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def open_loopback_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    monkeypatch.setenv("RATE_LIMIT", "")
    monkeypatch.setenv("AUTH_FAILURE_RATE_LIMIT", "")
    reset_settings_cache()
    return Settings(
        model_provider="scripted",
        data_dir=tmp_path / "data",
        rate_limit=None,
        auth_failure_rate_limit=None,
    )


@pytest.fixture
def security_app_url(open_loopback_env: Settings, tmp_path: Path) -> Iterator[str]:
    yield from serve(build_app(open_loopback_env, db_path=tmp_path / "app.sqlite"))


@pytest.fixture
def server_url(open_loopback_env: Settings) -> Iterator[str]:
    if importlib.util.find_spec("app.server.app") is None:
        reason = "app.server.app (create_app) does not exist yet"
        print(f"\nSKIP schemathesis against the server: {reason}")
        pytest.skip(reason)
    create_app = importlib.import_module("app.server.app").create_app
    params = inspect.signature(create_app).parameters
    app = create_app(settings=open_loopback_env) if "settings" in params else create_app()
    yield from serve(app)


def admin_headers(base_url: str) -> dict[str, str]:
    """An admin key made through `/keys` while the server is open, so that a generated
    `POST /keys` ending open mode half-way does not turn the rest of the run into 401s."""
    response = httpx.post(f"{base_url}/keys", json={"role": "admin", "tenant": "default"})
    if response.status_code == 404:  # no /keys routes: open mode throughout
        return {}
    assert response.status_code == 201, response.text
    return {"x-api-key": response.json()["key"]}


def problem_with(response: Any) -> str:
    if response.status_code >= 500:
        return "server error"
    is_json = "json" in response.headers.get("content-type", "")
    if response.status_code >= 400 and is_json and "detail" not in response.json():
        return "error without detail"
    return ""


def fuzz(base_url: str) -> int:
    """Every operation, with valid and invalid data; returns how many requests were made."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = admin_headers(base_url)
    failures: list[str] = []
    calls = 0

    def run(operation: Any, mode: GenerationMode) -> None:
        @HYPOTHESIS
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(headers=headers, timeout=30)
            problem = problem_with(response)
            if problem:
                failures.append(
                    f"{problem}: {case.method} {case.formatted_path} ({mode.value}) -> "
                    f"{response.status_code} {response.text[:300]}\n"
                    f"  reproduce: {case.as_curl_command()}"
                )

        try:
            call()
        except Unsatisfiable:
            # nothing about this operation can be invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, operation.label

    for result in schema.get_all_operations():
        operation = result.ok()
        run(operation, GenerationMode.POSITIVE)
        # operations with only path parameters: Hypothesis spends seconds looking for an
        # "invalid" string, and the positive cases already send arbitrary ones
        if len(operation.body) or len(operation.query):
            run(operation, GenerationMode.NEGATIVE)
    assert not failures, "\n".join(failures[:20])
    return calls


def test_security_app_never_answers_5xx(security_app_url: str) -> None:
    calls = fuzz(security_app_url)
    print(f"\nschemathesis: {calls} requests against the security test app")
    assert calls > 20  # the harness really ran


def test_the_harness_reports_a_5xx(open_loopback_env: Settings) -> None:
    """A route that crashes on one ordinary input: the fuzzer must find it and fail."""
    app = FastAPI()
    install_security(app, open_loopback_env)

    @app.get("/ratio")
    async def ratio(a: int, b: int) -> float:
        return a / b  # b=0 -> ZeroDivisionError -> 500

    for url in serve(app):
        with pytest.raises(AssertionError, match=r"server error: GET /ratio"):
            fuzz(url)


def test_server_never_answers_5xx(server_url: str) -> None:
    calls = fuzz(server_url)
    print(f"\nschemathesis: {calls} requests against create_app()")
