"""Secrets are masked in log records and event payloads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.apikeys import new_token
from app.redact import (
    MASK,
    RedactingFilter,
    forget_secrets,
    install_log_redaction,
    redact,
    redact_obj,
    register_secret,
    uninstall_log_redaction,
)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    forget_secrets()


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("OPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwx", "sk-abcdefghijklmnopqrstuvwx"),
        ("openai_api_key: 'local-key-1234'", "local-key-1234"),
        ('{"TAVILY_API_KEY": "tvly-dev-0123456789abcdef"}', "tvly-dev-0123456789abcdef"),
        ("calling with tvly-0123456789abcdef now", "tvly-0123456789abcdef"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
        ("headers={'authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz"),
        ("x-api-key=lsv2_pt_0123456789abcdef0123", "lsv2_pt_0123456789abcdef0123"),
        ("postgresql://app:s3cr3t-pw@db:5432/mkt", "s3cr3t-pw"),
        ("redis://:redispass@cache:6379/0", "redispass"),
        ("error from https://api.openai.com (key sk-proj-AbCdEf0123456789xyz)", "AbCdEf0123"),
    ],
)
def test_credentials_are_masked(text: str, leaked: str) -> None:
    masked = redact(text)
    assert leaked not in masked
    assert MASK in masked


def test_our_keys_keep_their_public_id() -> None:
    key_id, token = new_token()
    for text in (f"key {token} used", f"x-api-key: {token}", f"Bearer {token}"):
        masked = redact(text)
        assert token.split("_", 2)[2] not in masked
        assert f"mkt_{key_id}_{MASK}" in masked


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        "tokens in 120 / out 40 ($0.0012)",
        "GET /threads/3f2a/runs 200",
        "the api key setting is documented in README",
        "input_tokens=5 output_tokens=7",
    ):
        assert redact(text) == text


def test_registered_values_are_masked_whatever_their_format() -> None:
    register_secret("correct-horse-battery", None, "short")
    assert redact("model said correct-horse-battery twice") == f"model said {MASK} twice"
    assert redact("short stays") == "short stays"  # too short to mask safely


def test_redact_obj_masks_sensitive_keys_and_strings() -> None:
    _, token = new_token()
    event: dict[str, Any] = {
        "headers": {"Authorization": "Bearer abc", "x-api-key": token, "accept": "*/*"},
        "config": {"configurable": {"openai_api_key": "sk-whatever-0123456789abcdef"}},
        "messages": [f"my key is {token}", 3, None],
        "tuple": ("password=hunter22",),
    }
    masked = redact_obj(event)
    assert masked["headers"] == {"Authorization": MASK, "x-api-key": MASK, "accept": "*/*"}
    assert masked["config"]["configurable"]["openai_api_key"] == MASK
    assert token not in masked["messages"][0] and masked["messages"][1:] == [3, None]
    assert masked["tuple"] == (f"password={MASK}",)
    assert event["headers"]["x-api-key"] == token  # the original is untouched


def test_log_records_are_redacted_for_every_logger(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # uvicorn's logging config (applied by any earlier test that ran a server in this process)
    # stops `uvicorn.access` from propagating to the root logger, where caplog listens
    # (and may have raised its level)
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "disabled", False)
    level = access.level
    access.setLevel(logging.INFO)  # setLevel also clears the loggers' isEnabledFor caches
    _, token = new_token()
    install_log_redaction(["my-configured-provider-key"])
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("uvicorn.access").info(
                '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/x?key={token}", "1.1", 200
            )
            logging.getLogger("some.library").warning(
                "retrying with %(key)s", {"key": "my-configured-provider-key"}
            )
            try:
                raise ValueError(f"bad header Authorization: Bearer {token}")
            except ValueError:
                logging.getLogger("app").exception("request failed")
    finally:
        uninstall_log_redaction()
        access.setLevel(level)
    assert token not in caplog.text
    assert "my-configured-provider-key" not in caplog.text
    assert '"GET /x?key=mkt_' in caplog.text and " 200" in caplog.text  # %d still formats
    assert "ValueError: bad header Authorization" in caplog.text  # traceback kept, key masked


def test_redacting_filter_for_handler_configs() -> None:
    _, token = new_token()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (token,), None)
    assert RedactingFilter().filter(record) is True
    assert token not in record.getMessage()
