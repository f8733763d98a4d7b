"""Ingest files and folders into the `documents` collection.

Per file: parse and chunk it completely first (an unreadable or unsupported file is reported and
skipped before anything is written), then compare its content hash with what is stored:

* same hash, all chunks present -> unchanged, nothing is written;
* new or changed -> the new chunks are written under ids derived from (source, hash, index), and only
  then the previous version's chunks are deleted. A failure while writing removes the partial new
  chunks and leaves the old version in place; a crash in between leaves the old version plus a
  partial new one, which the next ingest of the same file completes and cleans up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tools.chunking import chunk_sections
from tools.knowledge import DEFAULT_TENANT
from tools.parsers import SUPPORTED_SUFFIXES, ParseError, UnsupportedFileError, parse_file
from tools.qdrant_kb import (
    DOCUMENTS,
    DocumentChunk,
    KnowledgeBaseError,
    QdrantKnowledgeBase,
    chunk_point_id,
)

FileStatus = Literal["added", "updated", "unchanged", "skipped"]
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".data"}


@dataclass
class FileResult:
    path: str
    status: FileStatus
    chunks: int = 0
    reason: str = ""


@dataclass
class IngestSummary:
    files: list[FileResult] = field(default_factory=list)

    def count(self, status: FileStatus) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def chunks_written(self) -> int:
        return sum(f.chunks for f in self.files if f.status in ("added", "updated"))

    @property
    def skipped(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "skipped"]

    def as_dict(self) -> dict[str, object]:
        return {
            "files": len(self.files),
            "added": self.count("added"),
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "skipped": [{"path": f.path, "reason": f.reason} for f in self.skipped],
            "chunks_written": self.chunks_written,
            "details": [f.__dict__ for f in self.files],
        }


class IngestPathError(ValueError):
    """A path given to ingest does not exist."""


def discover(paths: Iterable[Path]) -> Iterator[tuple[Path, str | None]]:
    """Files to ingest, with a reason when one will be skipped. Folders are walked recursively
    (hidden files and VCS / virtualenv folders skipped); files named explicitly are always
    considered, so an unsupported one is reported rather than silently ignored."""
    for root in paths:
        if not root.exists():
            raise IngestPathError(f"{root} does not exist")
        if root.is_file():
            yield root, None
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d[:1] != ".")
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                    yield path, f"unsupported file type {path.suffix or '(none)'}"
                else:
                    yield path, None


def file_hash(path: Path, chunk_chars: int, overlap: int) -> str:
    """Content hash of the file, salted with the chunking settings (a new chunk size re-ingests)."""
    digest = hashlib.sha256(f"chunks={chunk_chars}/{overlap};".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest_file(
    kb: QdrantKnowledgeBase,
    path: Path,
    *,
    tenant: str = DEFAULT_TENANT,
    chunk_chars: int = 1200,
    overlap: int = 200,
    on_chunks: Callable[[int], None] | None = None,
) -> FileResult:
    source = str(path.resolve())
    try:
        doc = parse_file(path)
        content_hash = file_hash(path, chunk_chars, overlap)
    except (UnsupportedFileError, ParseError) as exc:
        return FileResult(source, "skipped", reason=str(exc))
    except OSError as exc:
        return FileResult(source, "skipped", reason=f"cannot read: {exc.strerror or exc}")
    chunks = chunk_sections(doc.sections, max_chars=chunk_chars, overlap_chars=overlap)
    if not chunks:
        return FileResult(source, "skipped", reason="no text found")
    versions = kb.source_versions(source, tenant)
    current = versions.get(content_hash, [])
    stale = [pid for h, ids in versions.items() if h != content_hash for pid in ids]
    if len(current) == len(chunks) and not stale:
        return FileResult(source, "unchanged", chunks=len(chunks))
    records = [
        DocumentChunk(
            doc_id=f"{source}#{c.index}",
            text=c.text,
            title=doc.title,
            source=source,
            chunk_index=c.index,
            chunk_count=len(chunks),
            content_hash=content_hash,
            section=c.section,
            doc_type=doc.doc_type,
            tenant=tenant,
        )
        for c in chunks
    ]
    planned = [chunk_point_id(tenant, source, content_hash, c.index) for c in chunks]
    try:
        kb.upsert_chunks(records, progress=on_chunks)
    except (KnowledgeBaseError, KeyboardInterrupt):
        # remove the partial new version (an older one stays in place); if even that fails,
        # the next ingest of this file completes and cleans it up
        with contextlib.suppress(KnowledgeBaseError):
            kb.delete_points(DOCUMENTS, [p for p in planned if p not in set(current)])
        raise
    extra = set(current) - set(planned)  # chunks of an older run with the same hash
    kb.delete_points(DOCUMENTS, stale + sorted(extra))
    return FileResult(source, "updated" if versions else "added", chunks=len(chunks))


def ingest_paths(
    kb: QdrantKnowledgeBase,
    paths: Iterable[Path],
    *,
    tenant: str = DEFAULT_TENANT,
    chunk_chars: int = 1200,
    overlap: int = 200,
    on_file: Callable[[Path, int, int], None] | None = None,
    on_chunks: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest every file under `paths`; `on_file(path, n, total)` before each file."""
    found = list(discover(paths))
    summary = IngestSummary()
    for n, (path, skip_reason) in enumerate(found, start=1):
        if on_file is not None:
            on_file(path, n, len(found))
        if skip_reason:
            summary.files.append(FileResult(str(path.resolve()), "skipped", reason=skip_reason))
            continue
        summary.files.append(
            ingest_file(
                kb,
                path,
                tenant=tenant,
                chunk_chars=chunk_chars,
                overlap=overlap,
                on_chunks=on_chunks,
            )
        )
    return summary
