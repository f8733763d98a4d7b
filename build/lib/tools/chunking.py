"""Split parsed documents into overlapping chunks that respect headings and paragraphs.

A document is a list of sections (a heading path and its paragraphs). Chunks are packed from whole
paragraphs up to `max_chars`; a paragraph longer than that is split at sentence ends (and a sentence
longer than that at word boundaries). A new heading starts a new chunk unless the current one is
still shorter than `min_chars` (tiny sections are merged with the next rather than left alone).
When a section continues in a new chunk, the chunk repeats the heading line and carries the last
paragraphs (or sentences) of the previous chunk, up to `overlap_chars`, so no statement loses the
context around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"'“(\[]?[A-Z0-9#@])")


@dataclass
class Section:
    heading: str  # "Title > Section > Subsection", "" before the first heading
    paragraphs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    index: int
    section: str
    text: str


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _split_long(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`: sentences, then word windows for run-on sentences."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for sentence in split_sentences(text):
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        words, current = sentence.split(), ""
        for word in words:
            if current and len(current) + 1 + len(word) > max_chars:
                pieces.append(current)
                current = ""
            while len(word) > max_chars:  # a "word" longer than a chunk (URLs, base64...)
                pieces.append(word[:max_chars])
                word = word[max_chars:]
            current = f"{current} {word}".strip()
        if current:
            pieces.append(current)
    return pieces


def chunk_sections(
    sections: list[Section],
    *,
    max_chars: int = 1200,
    overlap_chars: int = 200,
    min_chars: int = 200,
) -> list[Chunk]:
    if max_chars < 50:
        raise ValueError("max_chars must be at least 50")
    if not 0 <= overlap_chars < max_chars:
        raise ValueError("overlap_chars must be between 0 and max_chars - 1")
    chunks: list[Chunk] = []
    units: list[str] = []  # pieces of the chunk being built
    size = 0
    chunk_section = ""

    def flush() -> None:
        nonlocal units, size
        text = "\n\n".join(units).strip()
        if text:
            chunks.append(Chunk(len(chunks), chunk_section, text))
        units, size = [], 0

    for section in sections:
        pieces = [p for para in section.paragraphs for p in _split_long(para.strip(), max_chars)]
        pieces = [p for p in pieces if p]
        if not pieces:
            continue
        heading_line = section.heading.rsplit(" > ", 1)[-1] if section.heading else ""
        if units and size >= min_chars:
            flush()
        if not units:
            chunk_section = section.heading
        if heading_line:
            units.append(f"## {heading_line}")
            size += len(heading_line) + 5
        body: list[str] = []  # this section's pieces in the current chunk (for overlap)
        for piece in pieces:
            if units and size + len(piece) + 2 > max_chars and body:
                carried: list[str] = []
                carried_size = 0
                for prev in reversed(body):
                    if carried_size + len(prev) > overlap_chars:
                        break
                    carried.insert(0, prev)
                    carried_size += len(prev) + 2
                if not carried:  # the last paragraph alone is too long: carry its last sentences
                    tail: list[str] = []
                    for sentence in reversed(split_sentences(body[-1])[1:]):
                        if carried_size + len(sentence) + 1 > overlap_chars:
                            break
                        tail.insert(0, sentence)
                        carried_size += len(sentence) + 1
                    if tail:
                        carried = [" ".join(tail)]
                flush()
                chunk_section = section.heading
                if heading_line:
                    units.append(f"## {heading_line}")
                    size += len(heading_line) + 5
                units.extend(carried)
                size += carried_size
                body = list(carried)
            units.append(piece)
            size += len(piece) + 2
            body.append(piece)
    flush()
    return chunks
