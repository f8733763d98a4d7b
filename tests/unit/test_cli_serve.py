"""`mkt serve`, `mkt worker` and `mkt keys` refuse bad flags, bad settings, an unusable database
and a busy port with exit code 2 and a message naming the fix — never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.settings import reset_settings_cache

cli = CliRunner()


def refused(args: list[str]) -> str:
    """The command exits with code 2 by itself (not an exception) and says why."""
    result = cli.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def test_serve_help_explains_itself() -> None:
    for command, words in (
        (["serve"], ("--host", "--port", "--workers", "loopback", "chat")),
        (["worker"], ("--metrics-port", "queued runs")),
    ):
        result = cli.invoke(app, [*command, "--help"])
        assert result.exit_code == 0
        text = " ".join(result.output.split())
        for word in words:
            assert word in text, (command, word)


def test_an_unknown_log_level_is_a_usage_error() -> None:
    out = refused(["serve", "--log-level", "loud"])
    assert "--log-level" in out and "debug" in out


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("SERVE_WORKERS", "abc", ["serve"]),
        ("RATE_LIMIT", "lots", ["serve"]),
        ("WORKER_CONCURRENCY", "many", ["worker"]),
        ("RATE_LIMIT", "lots", ["keys", "list"]),
        ("API_KEY_CACHE_S", "soon", ["keys", "create", "--role", "admin", "--tenant", "acme"]),
    ],
)
def test_a_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, command: list[str]
) -> None:
    monkeypatch.setenv(variable, value)
    reset_settings_cache()
    out = refused(command)
    assert "invalid setting" in out and variable in out


def test_an_unusable_database_is_an_error_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("DATA_DIR", str(not_a_dir / "data"))
    reset_settings_cache()
    for command in (["serve"], ["keys", "list"], ["keys", "revoke", "0123456789ab"]):
        out = refused(command)
        assert "cannot open the database" in out and "DATA_DIR" in out, command


def test_keys_list_of_another_tenant_does_not_claim_open_mode() -> None:
    created = cli.invoke(app, ["keys", "create", "--role", "admin", "--tenant", "acme"])
    assert created.exit_code == 0, created.output
    for args in (["--tenant", "globex"], ["--tenant", "globex", "--active"]):
        listed = cli.invoke(app, ["keys", "list", *args])
        assert listed.exit_code == 0
        assert "runs open" not in listed.output and "globex" in listed.output


@pytest.mark.integration  # binds a loopback socket
def test_serve_on_a_busy_port_says_so_before_starting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = refused(["serve", "--port", str(port)])
    assert f"port {port}" in out and "in use" in out and "--port" in out


def test_a_bad_provider_flag_is_named_as_such() -> None:
    for command in (["serve"], ["worker"], ["chat", "hi"]):
        out = refused([*command, "--provider", "bogus"])
        assert "--provider" in out and "MODEL_PROVIDER" in out and "scripted" in out, command


def test_serve_refuses_when_another_process_holds_the_embedded_knowledge_base() -> None:
    """Another process (here: a client of the same folder) holds the embedded store this server
    would open: refused before start-up with the fix named, not uvicorn's traceback and exit 3."""
    from qdrant_client import QdrantClient

    from app.settings import get_settings

    path = get_settings().qdrant_path
    path.mkdir(parents=True)
    holder = QdrantClient(path=str(path))
    try:
        out = refused(["serve", "--workers", "0"])
    finally:
        holder.close()
    assert "open in another process" in out and "QDRANT_URL" in out


def test_with_a_worker_serve_waits_for_the_knowledge_base_as_the_worker_would(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With workers, the store may be held by a worker of a stopped server finishing its runs:
    the check waits (saying so) and goes on once it is released."""
    import threading

    import typer
    from qdrant_client import QdrantClient

    from app.cli import _check_embedded_store
    from app.settings import get_settings

    settings = get_settings()
    settings.qdrant_path.mkdir(parents=True)
    holder = QdrantClient(path=str(settings.qdrant_path))
    with pytest.raises(typer.Exit) as refused_now:
        _check_embedded_store(settings, 0.0)
    assert refused_now.value.exit_code == 2
    releasing = threading.Timer(0.3, holder.close)
    releasing.start()
    try:
        _check_embedded_store(settings, 60.0)  # returns once the holder lets go
    finally:
        releasing.join()
    assert "waiting up to 60 s" in capsys.readouterr().err


def test_serve_off_loopback_without_keys_refuses_naming_the_fix() -> None:
    out = refused(["serve", "--host", "0.0.0.0"])
    assert "without API keys" in out and "mkt keys create --role admin --tenant" in out


@pytest.mark.integration  # binds a socket
def test_worker_metrics_on_an_address_not_of_this_machine_names_the_host() -> None:
    out = refused(["worker", "--metrics-port", "0", "--metrics-host", "203.0.113.9"])
    assert "203.0.113.9" in out and "--metrics-host" in out and "--metrics-port" not in out
