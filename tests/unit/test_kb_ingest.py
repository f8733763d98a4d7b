"""Ingesting files into `documents`: every supported type from a real sample file, chunking along
headings and paragraphs, idempotent re-ingest, changed files replacing their chunks, unreadable or
unsupported files reported and never half-written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import app as cli_app
from app.settings import Settings
from tools import qdrant_kb
from tools.chunking import Section, chunk_sections
from tools.ingest import ingest_paths
from tools.knowledge import KnowledgeBaseError
from tools.parsers import parse_file
from tools.qdrant_kb import DOCUMENTS, QdrantKnowledgeBase

FACT = "The Lumen Halo L3 ships with a USB-C port and a five-year warranty."


@pytest.fixture
def kb(settings: Settings) -> Iterator[QdrantKnowledgeBase]:
    store = QdrantKnowledgeBase(settings)
    store.open()
    yield store
    store.close()


def write_md(path: Path) -> None:
    path.write_text(f"# Lumen guide\n\nIntro to our lamps.\n\n## Ports\n\n{FACT}\n")


def write_txt(path: Path) -> None:
    path.write_text(f"Lumen notes\n\n{FACT}\n")


def write_html(path: Path) -> None:
    path.write_text(
        "<html><head><title>Lumen page</title><script>var secret = 1;</script></head><body>"
        f"<nav>Home | Shop</nav><h1>Lumen</h1><h2>Ports</h2><p>{FACT}</p></body></html>"
    )


def write_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Lumen spec sheet")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, "Lumen spec sheet.\n\n" + FACT)
    pdf.output(str(path))


def write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Lumen handbook", 0)
    document.add_heading("Ports", 1)
    document.add_paragraph(FACT)
    table = document.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "model", "price"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "Halo L3", "89 dollars"
    document.save(str(path))


def write_csv(path: Path) -> None:
    path.write_text(f'model,notes\nHalo L3,"{FACT}"\nHalo L2,older model\n')


WRITERS: dict[str, Callable[[Path], None]] = {
    ".md": write_md,
    ".txt": write_txt,
    ".html": write_html,
    ".pdf": write_pdf,
    ".docx": write_docx,
    ".csv": write_csv,
}


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_each_file_type_ingests_a_real_file_and_is_found(
    suffix: str, tmp_path: Path, kb: QdrantKnowledgeBase
) -> None:
    path = tmp_path / f"lumen{suffix}"
    WRITERS[suffix](path)
    summary = ingest_paths(kb, [path])
    assert [(f.status, f.reason) for f in summary.files] == [("added", "")]
    hits = kb.search_sync("Which lamp has a USB-C port?", k=1)
    assert hits and hits[0].source == str(path.resolve())
    assert "USB-C port" in hits[0].text
    assert "secret" not in hits[0].text and "Home | Shop" not in hits[0].text  # html chrome


def test_parsers_keep_titles_headings_and_table_rows(tmp_path: Path) -> None:
    for suffix, title in (
        (".md", "Lumen guide"),
        (".html", "Lumen page"),
        (".pdf", "Lumen spec sheet"),
        (".docx", "Lumen handbook"),
    ):
        path = tmp_path / f"lumen{suffix}"
        WRITERS[suffix](path)
        assert parse_file(path).title == title, suffix
    md = parse_file(tmp_path / "lumen.md")
    assert [s.heading for s in md.sections] == ["Lumen guide", "Lumen guide > Ports"]
    docx_doc = parse_file(tmp_path / "lumen.docx")
    assert "model: Halo L3; price: 89 dollars" in docx_doc.sections[-1].paragraphs
    path = tmp_path / "prices.csv"
    write_csv(path)
    assert parse_file(path).sections[0].paragraphs[1] == "model: Halo L2; notes: older model"


def test_chunks_respect_headings_overlap_and_size() -> None:
    para = " ".join(f"Sentence {i} about grip." for i in range(12))  # ~300 chars
    sections = [
        Section("Guide > Grip", [para, para.replace("grip", "wet rock"), para]),
        Section("Guide > Sizing", ["Runs half a size small. " * 10]),
    ]
    chunks = chunk_sections(sections, max_chars=700, overlap_chars=320, min_chars=100)
    assert all(len(c.text) <= 700 for c in chunks)
    grip = [c for c in chunks if c.section == "Guide > Grip"]
    sizing = [c for c in chunks if c.section == "Guide > Sizing"]
    assert len(grip) >= 2 and len(sizing) == 1
    assert sizing[0].text.startswith("## Sizing") and "grip" not in sizing[0].text
    # consecutive chunks of one section share a paragraph (the overlap) and repeat the heading
    assert all(c.text.startswith("## Grip") for c in grip)
    assert set(grip[0].text.split("\n\n")[1:]) & set(grip[1].text.split("\n\n")[1:])
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_reingesting_unchanged_files_does_nothing_and_changed_files_replace_their_chunks(
    tmp_path: Path, kb: QdrantKnowledgeBase
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_md(docs / "lumen.md")
    (docs / "aurora.md").write_text("# Aurora\n\nAurora cuts heating energy use by 20 percent.\n")
    first = ingest_paths(kb, [docs])
    assert (first.count("added"), first.chunks_written) == (2, 2)
    points = kb.stats()[0].points

    again = ingest_paths(kb, [docs])
    assert (again.count("unchanged"), again.chunks_written) == (2, 0)
    assert kb.stats()[0].points == points

    (docs / "lumen.md").write_text("# Lumen guide\n\nThe Halo L3 now has two USB-C ports.\n")
    changed = ingest_paths(kb, [docs])
    assert (changed.count("updated"), changed.count("unchanged")) == (1, 1)
    assert kb.stats()[0].points == points
    texts = " ".join(h.text for h in kb.search_sync("Halo L3 USB-C", k=5))
    assert "two USB-C ports" in texts and "five-year warranty" not in texts


def test_unsupported_and_unreadable_files_are_reported_and_skipped(
    tmp_path: Path, kb: QdrantKnowledgeBase
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_md(docs / "good.md")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n")
    (docs / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (docs / "empty.csv").write_text("just,a,header\n")
    (docs / ".hidden.md").write_text("# not ingested")
    summary = ingest_paths(kb, [docs])
    reasons = {Path(f.path).name: f.reason for f in summary.skipped}
    assert set(reasons) == {"photo.png", "latin1.txt", "broken.pdf", "empty.csv"}
    assert "unsupported file type .png" in reasons["photo.png"]
    assert "UTF-8" in reasons["latin1.txt"]
    assert "PDF" in reasons["broken.pdf"]
    assert "header row and at least one data row" in reasons["empty.csv"]
    assert summary.count("added") == 1
    assert set(kb.source_counts()) == {str((docs / "good.md").resolve())}


def test_a_failed_write_leaves_no_half_written_file(
    tmp_path: Path, kb: QdrantKnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "long.md"
    path.write_text("# Long\n\n" + "\n\n".join(f"Paragraph {i}. " * 40 for i in range(8)))
    assert ingest_paths(kb, [path], chunk_chars=600, overlap=0).count("added") == 1
    before = kb.source_counts()[str(path.resolve())]
    assert before > 2

    path.write_text("# Long\n\n" + "\n\n".join(f"Changed {i}. " * 40 for i in range(8)))
    monkeypatch.setattr(qdrant_kb, "UPSERT_BATCH", 2)
    calls = {"n": 0}
    original = kb.upsert_chunks

    def failing_upsert(chunks: Any, **kw: Any) -> list[str]:
        # the first batch reaches Qdrant, then the connection "drops"
        calls["n"] += 1
        original(chunks[:2], **kw)
        raise KnowledgeBaseError("Qdrant went away")

    monkeypatch.setattr(kb, "upsert_chunks", failing_upsert)
    with pytest.raises(KnowledgeBaseError):
        ingest_paths(kb, [path], chunk_chars=600, overlap=0)
    assert calls["n"] == 1
    assert kb.source_counts()[str(path.resolve())] == before, "old version intact, no new chunks"
    texts = {h.text for h in kb.search_sync("Paragraph Changed", k=20)}
    assert not any("Changed" in t for t in texts)
    assert kb.call(lambda c: c.count(kb.physical_name(DOCUMENTS) or "", exact=True).count) == before


def test_cli_ingest_prints_a_summary_with_skipped_files(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_md(docs / "lumen.md")
    (docs / "notes.rtf").write_text("{\\rtf1}")
    result = CliRunner().invoke(cli_app, ["kb", "ingest", str(docs)])
    assert result.exit_code == 0, result.output
    assert "2 file(s): 1 added, 0 updated, 0 unchanged, 1 skipped" in result.output
    assert "notes.rtf: unsupported file type .rtf" in result.output
    again = CliRunner().invoke(cli_app, ["kb", "ingest", str(docs)])
    assert "0 added, 0 updated, 1 unchanged" in again.output
    missing = CliRunner().invoke(cli_app, ["kb", "ingest", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
