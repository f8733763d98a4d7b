"""Read files into sections (heading path + paragraphs) for chunking.

Markdown and text are read as UTF-8; HTML with BeautifulSoup; PDF with pypdf (text layer only: a
scanned PDF without one is refused with a message saying so); DOCX with python-docx (headings from
paragraph styles, tables row by row); CSV with the standard library (one `column: value` line per
row, header names repeated so every chunk stands on its own).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from tools.chunking import Section

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx", ".csv")
MAX_FILE_BYTES = 50 * 1024 * 1024


class UnsupportedFileError(ValueError):
    """Not a file type the knowledge base reads."""


class ParseError(ValueError):
    """A supported file that could not be read; the message says why."""


@dataclass
class ParsedDocument:
    title: str
    sections: list[Section]
    doc_type: str  # md | txt | html | pdf | docx | csv

    @property
    def char_count(self) -> int:
        return sum(len(p) for s in self.sections for p in s.paragraphs)


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, inner line breaks folded to spaces (lists kept)."""
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [ln.rstrip() for ln in block.strip().split("\n") if ln.strip()]
        if not lines:
            continue
        if any(re.match(r"\s*([-*+]|\d+[.)])\s", ln) for ln in lines) or block.startswith("```"):
            out.append("\n".join(lines))
        else:
            out.append(" ".join(ln.strip() for ln in lines))
    return out


def _heading_path(stack: list[str]) -> str:
    return " > ".join(h for h in stack if h)


def parse_markdown(text: str, fallback_title: str) -> ParsedDocument:
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)  # YAML front matter
    sections: list[Section] = [Section("")]
    stack: list[str] = []
    title = ""
    buffer: list[str] = []
    in_fence = False

    def close() -> None:
        sections[-1].paragraphs.extend(_paragraphs("\n".join(buffer)))
        buffer.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m is None:
            buffer.append(line)
            continue
        close()
        level, heading = len(m.group(1)), m.group(2).strip()
        if level == 1 and not title:
            title = heading
        stack = [*stack[: level - 1], *[""] * max(0, level - 1 - len(stack)), heading]
        sections.append(Section(_heading_path(stack)))
    close()
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs], "md")


def parse_text(text: str, fallback_title: str) -> ParsedDocument:
    return ParsedDocument(fallback_title, [Section("", _paragraphs(text))], "txt")


_BLOCK_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "td", "th")


def parse_html(data: bytes | str, fallback_title: str) -> ParsedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "nav", "footer"]):
        tag.decompose()
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    sections: list[Section] = [Section("")]
    stack: list[str] = []
    body = soup.body or soup
    for el in body.find_all(_BLOCK_TAGS):
        if el.find_parent(_BLOCK_TAGS) is not None and el.name not in ("li",):
            continue  # text of nested blocks is read with the outer block
        text = re.sub(r"\s+", " ", el.get_text(" ", strip=True)).strip()
        if not text:
            continue
        if el.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            level = int(el.name[1])
            if level == 1 and not title:
                title = text
            stack = [*stack[: level - 1], *[""] * max(0, level - 1 - len(stack)), text]
            sections.append(Section(_heading_path(stack)))
        else:
            sections[-1].paragraphs.append(("- " if el.name == "li" else "") + text)
    if not any(s.paragraphs for s in sections):
        text = soup.get_text("\n", strip=True)
        sections = [Section("", _paragraphs(text))]
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs], "html")


def parse_pdf(data: bytes, fallback_title: str) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ParseError("the PDF is encrypted; save an unencrypted copy")
        title = ""
        if reader.metadata is not None and reader.metadata.title:
            title = str(reader.metadata.title).strip()
        sections = []
        for n, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            paras = _paragraphs(text)
            if len(paras) == 1 and "\n" in text:  # no blank lines: one paragraph per line group
                paras = [ln.strip() for ln in text.split("\n") if ln.strip()]
                paras = _join_short_lines(paras)
            if paras:
                sections.append(Section(f"page {n}", paras))
    except PdfReadError as exc:
        raise ParseError(f"not a readable PDF: {exc}") from exc
    if not sections:
        raise ParseError("the PDF has no text layer (a scan?); run OCR on it first")
    return ParsedDocument(title or fallback_title, sections, "pdf")


def _join_short_lines(lines: list[str]) -> list[str]:
    """Re-flow PDF lines into paragraphs: a line ending a sentence ends a paragraph."""
    out: list[str] = []
    current = ""
    for line in lines:
        current = f"{current} {line}".strip()
        if re.search(r"[.!?:]\s*$", line) or len(current) > 600:
            out.append(current)
            current = ""
    if current:
        out.append(current)
    return out


def parse_docx(data: bytes, fallback_title: str) -> ParsedDocument:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise ParseError(f"not a readable DOCX file: {exc}") from exc
    title = (document.core_properties.title or "").strip()
    sections: list[Section] = [Section("")]
    stack: list[str] = []
    for para in document.paragraphs:
        text = para.text.strip()
        if not text:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        m = re.match(r"Heading (\d)", style)
        if style == "Title":
            title = title or text
            continue
        if m:
            level = int(m.group(1))
            stack = [*stack[: level - 1], *[""] * max(0, level - 1 - len(stack)), text]
            sections.append(Section(_heading_path(stack)))
        else:
            sections[-1].paragraphs.append(("- " if "List" in style else "") + text)
    for t, table in enumerate(document.tables, start=1):
        rows = [[c.text.strip() for c in row.cells] for row in table.rows]
        if rows:
            sections.append(Section(f"table {t}", _rows_as_text(rows[0], rows[1:])))
    return ParsedDocument(title or fallback_title, [s for s in sections if s.paragraphs], "docx")


def _rows_as_text(header: list[str], rows: list[list[str]]) -> list[str]:
    out = []
    for row in rows:
        cells = [
            f"{h or f'column {i + 1}'}: {v}"
            for i, (h, v) in enumerate(zip(header, row, strict=False))
            if v
        ]
        if cells:
            out.append("; ".join(cells))
    return out


def parse_csv(text: str, fallback_title: str) -> ParsedDocument:
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [r for r in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise ParseError(f"not readable CSV: {exc}") from exc
    if len(rows) < 2:
        raise ParseError("the CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    lines = _rows_as_text(header, [[c.strip() for c in r] for r in rows[1:]])
    return ParsedDocument(fallback_title, [Section("", lines)], "csv")


def parse_bytes(data: bytes, suffix: str, fallback_title: str) -> ParsedDocument:
    suffix = suffix.lower()
    if suffix in (".md", ".markdown"):
        doc = parse_markdown(_decode(data), fallback_title)
    elif suffix == ".txt":
        doc = parse_text(_decode(data), fallback_title)
    elif suffix in (".html", ".htm"):
        doc = parse_html(data, fallback_title)
    elif suffix == ".pdf":
        doc = parse_pdf(data, fallback_title)
    elif suffix == ".docx":
        doc = parse_docx(data, fallback_title)
    elif suffix == ".csv":
        doc = parse_csv(_decode(data), fallback_title)
    else:
        raise UnsupportedFileError(
            f"unsupported file type {suffix or '(none)'}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not doc.sections:
        raise ParseError("no text found")
    return doc


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def parse_file(path: Path) -> ParsedDocument:
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileError(
            f"unsupported file type {path.suffix or '(none)'}; supported: "
            + ", ".join(SUPPORTED_SUFFIXES)
        )
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ParseError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; split it first")
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read: {exc.strerror or exc}") from exc
    return parse_bytes(data, path.suffix, path.stem.replace("_", " ").replace("-", " "))
