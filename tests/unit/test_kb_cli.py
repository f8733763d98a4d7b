"""`mkt kb search / stats / reindex` and the embedded store's one-process rule at the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.settings import get_settings


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "gtx.md").write_text(
        "# TR-2 GTX\n\nThe TR-2 GTX is waterproof and costs 219 dollars.\n"
    )
    (folder / "aurora.md").write_text("# Aurora\n\nAurora needs a C-wire or the PA-1 adapter.\n")
    code, out = invoke("kb", "ingest", str(folder))
    assert code == 0, out
    return folder


def test_search_shows_hits_with_scores_and_sources(docs: Path) -> None:
    code, out = invoke("kb", "search", "TR-2 GTX price", "--json", "-k", "2")
    assert code == 0, out
    hits = json.loads(out)
    assert hits[0]["source"] == str((docs / "gtx.md").resolve())
    assert hits[0]["score"] > hits[1]["score"] and hits[0]["collection"] == "documents"
    code, out = invoke("kb", "search", "PA-1 adapter", "--collection", "all")
    assert code == 0 and "aurora.md" in out and "score" in out
    code, out = invoke("kb", "search", "x", "--collection", "tweets")
    assert code == 2 and "use documents, past_outputs or all" in out
    code, out = invoke("kb", "search", "x", "--mode", "fuzzy")
    assert code == 2 and "use auto, hybrid or dense" in out


def test_stats_and_reindex(docs: Path) -> None:
    code, out = invoke("kb", "stats", "--json")
    assert code == 0, out
    stats = json.loads(out)
    docs_stats = next(c for c in stats["collections"] if c["name"] == "documents")
    assert docs_stats["points"] == 2 and docs_stats["embedding_model"] == "wordllama/l2_supercat"
    assert stats["resolved_modes"] == {"documents": "hybrid", "past_outputs": "hybrid"}
    assert set(stats["sources"]) == {str(p.resolve()) for p in docs.iterdir()}

    code, out = invoke("kb", "reindex")
    assert code == 0, out
    assert "documents (2 points)" in out and "wordllama/l2_supercat (256 dimensions)" in out
    code, out = invoke("kb", "search", "TR-2 GTX", "--json", "-k", "1")
    assert json.loads(out)[0]["source"].endswith("gtx.md")


@pytest.fixture
def held_store() -> Iterator[None]:
    """Another process holding the embedded store (as `mkt serve` would)."""
    path = get_settings().qdrant_path
    path.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent(
        f"""
        import sys
        from qdrant_client import QdrantClient
        client = QdrantClient(path={str(path)!r})
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def test_cli_commands_name_the_fix_when_another_process_holds_the_store(held_store: None) -> None:
    for args in (("kb", "stats"), ("kb", "search", "x"), ("chat", "--json", "Write a blog post")):
        code, out = invoke(*args)
        flat = " ".join(out.split())
        assert code == 2, (args, out)
        assert "open in another process" in flat and "mkt serve" in flat and "QDRANT_URL" in flat
    code, out = invoke("threads")  # commands that do not need the knowledge base still work
    assert code == 0, out
