"""Secrets stay in process settings: never in checkpoints, app tables or CLI output."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.settings import get_settings
from tests.helpers import CAMPAIGN

SECRET = "sk-test-SHOULD-NEVER-BE-STORED-1234"


def test_api_key_is_not_written_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MODEL_PROVIDER", "scripted")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["chat", "--auto-approve", "--json", CAMPAIGN])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    settings = get_settings()
    assert SECRET not in repr(settings)
    files = list(settings.data_dir.rglob("*"))
    assert any(f.name == "mkt.sqlite" for f in files)
    for f in files:
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"secret found in {f}"
