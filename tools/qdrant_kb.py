"""The knowledge base in Qdrant: `documents` (chunks of ingested files) and `past_outputs`
(approved, edited, rejected and rated outputs).

* One code path for both deployments: embedded local mode on disk under `DATA_DIR/qdrant`
  (default) or a Qdrant server when `QDRANT_URL` is set. Local mode holds an exclusive file lock for
  one process; a second process gets `KnowledgeBaseLockedError`, which names the fix.
* Each collection holds a dense vector (`dense`, unit-length, DOT = cosine) and a BM25-style sparse
  vector (`bm25`, Qdrant's IDF modifier). Hybrid search prefetches both and fuses them with
  Reciprocal Rank Fusion in Qdrant's query API; dense-only search is the other mode.
* Each collection records the embedding model, its dimension and the sparse encoder in its
  metadata; opening it with a different model raises `EmbeddingMismatchError` naming
  `mkt kb reindex`, which rebuilds the collection under a new physical name and switches the alias
  (`documents` -> `documents_<n>`) atomically, so searches never see a half-built index.
* The client is synchronous; async callers go through `asyncio.to_thread` so a search never blocks
  the event loop, and local mode is serialised with a lock (its storage is not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.hybrid.fusion import reciprocal_rank_fusion

from tools import sparse as bm25
from tools.embeddings import Embedder, EmbeddingError, make_embedder
from tools.knowledge import (
    DEFAULT_TENANT,
    EmbeddingMismatchError,
    KBHit,
    KnowledgeBaseError,
    KnowledgeBaseLockedError,
    PastOutput,
    is_successful,
)

if TYPE_CHECKING:
    from app.settings import SearchMode, Settings

DOCUMENTS = "documents"
PAST_OUTPUTS = "past_outputs"
COLLECTIONS = (DOCUMENTS, PAST_OUTPUTS)
DENSE = "dense"
SPARSE = "bm25"
SPARSE_ENCODER = "bm25/crc32-snowball-en/v1"
SCHEMA_VERSION = 1
POINT_NAMESPACE = uuid.UUID("6f1d7c52-4a51-5b8e-9a53-2d1f0b7c9e41")
UPSERT_BATCH = 256
LOCAL_MODE_ADVISED_MAX_POINTS = 20_000  # qdrant-client's own advice for local mode
NEAR_DUPLICATE_COSINE = 0.97
NEAR_DUPLICATE_JACCARD = 0.7

K = models.PayloadSchemaType.KEYWORD
INDEXES: dict[str, dict[str, Any]] = {
    DOCUMENTS: {
        "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        "doc_id": K,
        "source": K,
        "content_hash": K,
        "doc_type": K,
        "ingested_at": models.PayloadSchemaType.DATETIME,
    },
    PAST_OUTPUTS: {
        "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
        "doc_id": K,
        "brand": K,
        "kind": K,
        "platform": K,
        "agent": K,
        "status": K,
        "thread_id": K,
        "successful": models.PayloadSchemaType.BOOL,
        "rating": models.PayloadSchemaType.INTEGER,
        "created_at": models.PayloadSchemaType.DATETIME,
    },
}

T = TypeVar("T")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def point_id(*parts: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, "\x1f".join(parts)))


def output_point_id(tenant: str, thread_id: str, artifact_id: str, version: int) -> str:
    return point_id("output", tenant, thread_id, artifact_id, str(version))


def chunk_point_id(tenant: str, source: str, content_hash: str, index: int) -> str:
    return point_id("doc", tenant, source, content_hash, str(index))


@dataclass
class DocumentChunk:
    """One chunk to store in `documents`."""

    doc_id: str
    text: str
    title: str
    source: str
    chunk_index: int = 0
    chunk_count: int = 1
    content_hash: str = ""
    section: str = ""
    doc_type: str = ""
    tenant: str = DEFAULT_TENANT
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, ingested_at: str) -> dict[str, Any]:
        return {
            **self.extra,
            "doc_id": self.doc_id,
            "text": self.text,
            "title": self.title,
            "source": self.source,
            "section": self.section,
            "chunk_index": self.chunk_index,
            "chunk_count": self.chunk_count,
            "content_hash": self.content_hash,
            "doc_type": self.doc_type,
            "tenant": self.tenant,
            "ingested_at": ingested_at,
        }


@dataclass
class CollectionStats:
    name: str
    physical: str
    points: int
    embedding_model: str
    embedding_dim: int
    sparse_encoder: str
    extra: dict[str, Any] = field(default_factory=dict)


def embed_text(title: str, section: str, text: str) -> str:
    """What is embedded for a chunk: its title and section give the dense model context."""
    head = " — ".join(x for x in (title, section) if x)
    return f"{head}\n{text}" if head else text


# ---------------------------------------------------------------------------------------------
# local-mode clients: one per storage folder per process (the folder lock is per process)
# ---------------------------------------------------------------------------------------------
_local_lock = threading.Lock()
_local_clients: dict[Path, tuple[QdrantClient, int]] = {}
# tenants present per physical collection of each open local store (this process is its only
# writer while it holds the folder lock, so the cache cannot go stale)
_local_tenants: dict[tuple[Path, str], set[str]] = {}
# one operation at a time per local store, across every handle on it in this process
_local_op_locks: dict[Path, threading.RLock] = {}


def _op_lock(path: Path) -> threading.RLock:
    with _local_lock:
        return _local_op_locks.setdefault(path.resolve(), threading.RLock())


def _open_local(path: Path) -> QdrantClient:
    path = path.resolve()
    with _local_lock:
        entry = _local_clients.get(path)
        if entry is not None:
            _local_clients[path] = (entry[0], entry[1] + 1)
            return entry[0]
        path.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():  # "> 20k points": `mkt kb ingest` advises instead
                warnings.filterwarnings("ignore", "Local mode is not recommended")
                client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise KnowledgeBaseLockedError.at(path) from exc
            raise
        _local_clients[path] = (client, 1)
        return client


def _release_local(path: Path) -> None:
    path = path.resolve()
    with _local_lock:
        entry = _local_clients.get(path)
        if entry is None:
            return
        client, count = entry
        if count > 1:
            _local_clients[path] = (client, count - 1)
            return
        del _local_clients[path]
        for key in [k for k in _local_tenants if k[0] == path]:
            del _local_tenants[key]
        client.close()


def tune_local_storage(client: QdrantClient, collection: str) -> bool:
    """Local mode persists each point in its own SQLite transaction; with the default rollback
    journal every point costs an fsync (about 2 ms: 10k chunks took minutes). WAL with
    synchronous=NORMAL keeps the file consistent after a crash (the last writes may roll back, and
    re-ingesting is idempotent) at a fraction of the cost. Returns False when the client's
    internals changed and the tuning could not be applied (correct, only slower)."""
    local = getattr(client, "_client", None)
    coll = getattr(local, "collections", {}).get(collection) if local is not None else None
    conn = getattr(getattr(coll, "storage", None), "storage", None)
    if conn is None or not hasattr(conn, "execute"):
        return False
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return True


# ---------------------------------------------------------------------------------------------
# the knowledge base
# ---------------------------------------------------------------------------------------------
class QdrantKnowledgeBase:
    """Documents and past outputs in Qdrant; see the module docstring."""

    name = "qdrant"

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        search_mode: SearchMode | None = None,
    ) -> None:
        self.settings = settings
        self.search_mode: SearchMode = search_mode or settings.kb_search_mode
        self._embedder = embedder
        self._client: QdrantClient | None = None
        self._local_path: Path | None = None if settings.qdrant_url else settings.qdrant_path
        # local mode: one operation at a time on the store (its SQLite and arrays are not
        # thread-safe); a server client needs no lock beyond opening and closing
        self._lock = _op_lock(self._local_path) if self._local_path else threading.RLock()
        self._checked = False

    # --- opening ----------------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return self._local_path is not None

    @property
    def description(self) -> str:
        if self._local_path is not None:
            return f"qdrant local {self._local_path}"
        url = httpx.URL(self.settings.qdrant_url or "")
        return f"qdrant {url.scheme}://{url.host}{f':{url.port}' if url.port else ''}"

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = make_embedder(self.settings)
        return self._embedder

    def open(self, *, check_embedding: bool = True) -> QdrantClient:
        """Connect (or take the folder lock) and make sure both collections exist with the
        configured embedding; idempotent."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            if not self._checked:
                for name in COLLECTIONS:
                    self._ensure_collection(name, check_embedding=check_embedding)
                self._checked = check_embedding
            return self._client

    def _connect(self) -> QdrantClient:
        if self._local_path is not None:
            return _open_local(self._local_path)
        s = self.settings
        client = QdrantClient(
            url=s.qdrant_url,
            api_key=s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None,
            timeout=int(s.qdrant_timeout_s),
        )
        try:
            client.get_collections()
        except (UnexpectedResponse, ResponseHandlingException, httpx.HTTPError) as exc:
            client.close()
            raise KnowledgeBaseError(
                f"cannot reach the Qdrant server at {self.description}: {_reason(exc)} "
                "(start it, fix QDRANT_URL / QDRANT_API_KEY, or unset QDRANT_URL for the "
                "embedded store)"
            ) from exc
        return client

    def close(self) -> None:
        with self._lock:
            if self._client is None:
                return
            if self._local_path is not None:
                _release_local(self._local_path)
            else:
                self._client.close()
            self._client = None
            self._checked = False

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # --- collections --------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "embedding_model": self.embedder.name,
            "embedding_dim": self.embedder.dim,
            "sparse_encoder": SPARSE_ENCODER,
            "schema_version": SCHEMA_VERSION,
        }

    def physical_name(self, name: str) -> str | None:
        """The collection an alias points at (or `name` itself, or None when absent)."""
        assert self._client is not None
        for alias in self._client.get_aliases().aliases:
            if alias.alias_name == name:
                return alias.collection_name
        return name if self._client.collection_exists(name) else None

    def target(self, name: str) -> str:
        """What to address for reads and writes: the alias on a server (it resolves aliases
        itself, one request saved per call), the physical collection in local mode (whose
        per-collection bookkeeping here is keyed by it; resolving is an in-process lookup)."""
        return (self.physical_name(name) or name) if self.local else name

    def _create(self, physical: str, collection: str) -> None:
        assert self._client is not None
        self._client.create_collection(
            physical,
            vectors_config={
                DENSE: models.VectorParams(size=self.embedder.dim, distance=models.Distance.DOT)
            },
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            metadata=self._metadata(),
        )
        with warnings.catch_warnings():  # local mode: "payload indexes have no effect"
            warnings.simplefilter("ignore", UserWarning)
            for field_name, schema in INDEXES[collection].items():
                self._client.create_payload_index(physical, field_name, field_schema=schema)
        if self.local:
            tune_local_storage(self._client, physical)

    def _ensure_collection(self, name: str, *, check_embedding: bool) -> None:
        assert self._client is not None
        physical = self.physical_name(name)
        if physical is None:
            physical = f"{name}_1"
            self._create(physical, name)
            self._client.update_collection_aliases(
                change_aliases_operations=[
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=physical, alias_name=name)
                    )
                ]
            )
            return
        info = self._client.get_collection(physical)
        if self.local:
            tune_local_storage(self._client, physical)
        elif check_embedding:
            missing = set(INDEXES[name]) - set(info.payload_schema or {})
            for field_name in sorted(missing):
                self._client.create_payload_index(
                    physical, field_name, field_schema=INDEXES[name][field_name]
                )
        if check_embedding:
            self._check_embedding(name, info)

    def _check_embedding(self, name: str, info: models.CollectionInfo) -> None:
        meta = info.config.metadata or {}
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        built_dim = dense.size if dense is not None else None
        want = (self.embedder.name, self.embedder.dim)
        if "embedding_model" not in meta and built_dim == want[1]:
            # no metadata (a Qdrant server older than 1.16, or a collection made elsewhere):
            # only the dimension can be checked
            return
        built_model = meta.get("embedding_model", "an unknown model")
        if (built_model, built_dim) != want or meta.get("sparse_encoder") != SPARSE_ENCODER:
            raise EmbeddingMismatchError(
                f"the `{name}` collection was built with {built_model} ({built_dim} dimensions, "
                f"sparse {meta.get('sparse_encoder', 'unknown')}) but the configured embedding is "
                f"{want[0]} ({want[1]} dimensions, sparse {SPARSE_ENCODER}): run `mkt kb reindex` "
                "to rebuild it with the configured model, or set EMBEDDING_PROVIDER / "
                "EMBEDDING_MODEL back to what it was built with"
            )

    # --- running ------------------------------------------------------------------------------
    def call(self, fn: Callable[[QdrantClient], T]) -> T:
        """Run `fn(client)` with the collections open; Qdrant failures become
        KnowledgeBaseError naming the fix. Local mode runs one call at a time; calls to a
        server run concurrently (the HTTP client is thread-safe)."""
        with self._lock if self.local else contextlib.nullcontext():
            client = self.open()
            try:
                return fn(client)
            except (UnexpectedResponse, ResponseHandlingException, httpx.HTTPError) as exc:
                raise KnowledgeBaseError(
                    f"Qdrant ({self.description}) failed: {_reason(exc)}"
                ) from exc

    async def acall(self, fn: Callable[[QdrantClient], T]) -> T:
        return await asyncio.to_thread(self.call, fn)

    # --- writing ------------------------------------------------------------------------------
    def _vectors(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        dense = self.embedder.embed_documents(list(texts))
        out = []
        for row, text in zip(dense, texts, strict=True):
            sp = bm25.encode_document(text)
            vec: dict[str, Any] = {DENSE: row.tolist()}
            if sp:
                vec[SPARSE] = models.SparseVector(indices=sp.indices, values=sp.values)
            out.append(vec)
        return out

    def _note_tenants(self, client: QdrantClient, collection: str, tenants: set[str]) -> None:
        """Local mode: record a collection's tenants in its metadata before writing their points
        (searches skip the per-point tenant filter when a collection holds one tenant only)."""
        if self._local_path is None:
            return
        known = self._known_tenants(client, collection)
        if tenants <= known:
            return
        known |= tenants
        client.update_collection(collection, metadata={"tenants": sorted(known)})
        _local_tenants[(self._local_path.resolve(), collection)] = known

    def _known_tenants(self, client: QdrantClient, collection: str) -> set[str]:
        assert self._local_path is not None
        key = (self._local_path.resolve(), collection)
        if key not in _local_tenants:
            meta = client.get_collection(collection).config.metadata or {}
            _local_tenants[key] = set(meta.get("tenants") or [])
        return set(_local_tenants[key])

    def upsert_chunks(
        self, chunks: Sequence[DocumentChunk], *, progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """Store chunks (ids: uuid5 of tenant, source, content hash and chunk index)."""
        ids: list[str] = []

        def write(client: QdrantClient) -> None:
            physical = self.target(DOCUMENTS)
            self._note_tenants(client, physical, {c.tenant for c in chunks})
            stamp = now_iso()
            for start in range(0, len(chunks), UPSERT_BATCH):
                batch = chunks[start : start + UPSERT_BATCH]
                vectors = self._vectors([embed_text(c.title, c.section, c.text) for c in batch])
                points = []
                for c, vec in zip(batch, vectors, strict=True):
                    pid = chunk_point_id(c.tenant, c.source, c.content_hash, c.chunk_index)
                    ids.append(pid)
                    points.append(models.PointStruct(id=pid, vector=vec, payload=c.payload(stamp)))
                with warnings.catch_warnings():  # local mode > 20k points: `mkt kb ingest` says it
                    warnings.filterwarnings("ignore", "Local mode is not recommended")
                    client.upsert(physical, points=points, wait=True)
                if progress is not None:
                    progress(len(batch))

        self.call(write)
        return ids

    def delete_points(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self.call(
            lambda c: c.delete(
                self.target(collection),
                points_selector=models.PointIdsList(points=list(ids)),
                wait=True,
            )
        )

    def source_versions(self, source: str, tenant: str = DEFAULT_TENANT) -> dict[str, list[str]]:
        """content_hash -> point ids, for every version of `source` in `documents`."""
        flt = _filter(tenant=tenant, source=source)
        out: dict[str, list[str]] = {}
        for point in self._scroll(DOCUMENTS, flt, payload=["content_hash", "chunk_count"]):
            out.setdefault(str((point.payload or {}).get("content_hash", "")), []).append(
                str(point.id)
            )
        return out

    def chunk_count(self, source: str, content_hash: str, tenant: str = DEFAULT_TENANT) -> int:
        """The chunk count recorded with this version of `source` (0 when absent)."""
        flt = _filter(tenant=tenant, source=source, content_hash=content_hash)
        for point in self._scroll(DOCUMENTS, flt, payload=["chunk_count"], limit=1):
            return int((point.payload or {}).get("chunk_count", 0))
        return 0

    def _scroll(
        self,
        collection: str,
        flt: models.Filter | None,
        *,
        payload: bool | list[str] = True,
        vectors: bool = False,
        limit: int | None = None,
    ) -> Iterator[models.Record]:
        offset: Any = None
        seen = 0
        while True:
            page_size = min(512, limit - seen) if limit else 512

            def page(
                c: QdrantClient, off: Any = offset, n: int = page_size
            ) -> tuple[list[models.Record], Any]:
                return c.scroll(
                    self.target(collection),
                    scroll_filter=flt,
                    limit=n,
                    offset=off,
                    with_payload=payload,
                    with_vectors=vectors,
                )

            records, offset = self.call(page)
            for r in records:
                yield r
                seen += 1
            if offset is None or (limit and seen >= limit):
                return

    async def add_documents(self, docs: list[dict[str, Any]]) -> int:
        """Seed documents and past outputs from dicts (`id`, `title`, `text`, `source`, optional
        `kind` = document | past_output, `brand`, `tenant`); used by the retrieval eval and tests."""

        def write() -> int:
            chunks = []
            for d in docs:
                if d.get("kind", "document") == "past_output":
                    self.record_output_sync(
                        PastOutput(
                            text=d["text"],
                            title=d["title"],
                            agent=d.get("agent", "content"),
                            kind=d.get("output_kind", "blog"),
                            platform=d.get("platform"),
                            brand=d.get("brand") or "",
                            topic=d.get("topic", ""),
                            status="approved",
                            successful=True,
                            thread_id=d.get("thread_id", "seed"),
                            artifact_id=d["id"],
                            tenant=d.get("tenant") or DEFAULT_TENANT,
                        ),
                        doc_id=d["id"],
                        source=d.get("source", ""),
                    )
                    continue
                chunks.append(
                    DocumentChunk(
                        doc_id=d["id"],
                        text=d["text"],
                        title=d["title"],
                        source=d["source"],
                        content_hash=hashlib.sha256(d["text"].encode()).hexdigest(),
                        doc_type="seed",
                        tenant=d.get("tenant") or DEFAULT_TENANT,
                    )
                )
            self.upsert_chunks(chunks)
            return len(docs)

        return await asyncio.to_thread(write)

    # --- past outputs -------------------------------------------------------------------------
    def record_output_sync(
        self, output: PastOutput, *, doc_id: str | None = None, source: str | None = None
    ) -> str:
        """Upsert one past output under its deterministic id; a rating or comment given earlier
        is kept (recording the same decision again changes nothing)."""
        pid = output_point_id(output.tenant, output.thread_id, output.artifact_id, output.version)

        def write(client: QdrantClient) -> None:
            physical = self.target(PAST_OUTPUTS)
            existing = client.retrieve(physical, ids=[pid], with_payload=True)
            data = output.model_dump(exclude={"id", "score"})
            stamp = now_iso()
            if existing:
                old = existing[0].payload or {}
                for key in ("rating", "comment"):
                    if data.get(key) is None and old.get(key) is not None:
                        data[key] = old[key]
                data["created_at"] = old.get("created_at") or stamp
            else:
                data["created_at"] = data.get("created_at") or stamp
            data["updated_at"] = stamp
            data["successful"] = is_successful(data["status"], data.get("rating"))
            data["doc_id"] = doc_id or f"{output.thread_id}/{output.artifact_id}/v{output.version}"
            data["source"] = source or (
                f"thread {output.thread_id} · {output.artifact_id} v{output.version}"
            )
            self._note_tenants(client, physical, {output.tenant})
            [vec] = self._vectors([_output_text(output)])
            client.upsert(
                physical, points=[models.PointStruct(id=pid, vector=vec, payload=data)], wait=True
            )

        self.call(write)
        return pid

    async def record_output(self, output: PastOutput) -> str:
        return await asyncio.to_thread(self.record_output_sync, output)

    def thread_outputs(self, thread_id: str, tenant: str = DEFAULT_TENANT) -> list[PastOutput]:
        flt = _filter(tenant=tenant, thread_id=thread_id)
        return [_past_output(r) for r in self._scroll(PAST_OUTPUTS, flt)]

    def rate_sync(
        self, outputs: Sequence[PastOutput], rating: int, comment: str | None
    ) -> list[PastOutput]:
        """Set the rating (and comment) on these outputs, creating the ones not yet stored."""
        rated = []
        for out in outputs:
            updated = out.model_copy(update={"rating": rating, "comment": comment or out.comment})
            updated.successful = is_successful(updated.status, rating)
            updated.id = self.record_output_sync(updated)
            rated.append(updated)
        return rated

    async def examples(
        self,
        query: str,
        *,
        brand: str,
        kind: str,
        platform: str | None = None,
        k: int = 3,
        tenant: str = DEFAULT_TENANT,
        exclude: tuple[str, str] | None = None,
    ) -> list[PastOutput]:
        """Top-k successful past outputs of this brand and kind (and platform), most similar to
        `query` first; never rejected ones, never near-duplicates of each other; `exclude` =
        (thread_id, artifact_id) leaves out the piece being rewritten."""
        if k <= 0:
            return []
        conditions: dict[str, Any] = {"brand": brand, "kind": kind, "successful": True}
        if platform:
            conditions["platform"] = platform
        flt = _filter(tenant=tenant, **conditions)
        if exclude is not None:
            flt.must_not = [
                models.Filter(
                    must=[_match("thread_id", exclude[0]), _match("artifact_id", exclude[1])]
                )
            ]
        points = await self.acall(
            lambda c: self._query(c, PAST_OUTPUTS, query, max(4 * k, 12), flt, with_vectors=True)
        )
        chosen: list[tuple[PastOutput, np.ndarray, set[str]]] = []
        for p in points:
            out = _past_output(p)
            vec = np.asarray(_dense_of(p), dtype=np.float32)
            terms = set(bm25.tokenize(out.text))
            if any(_near_duplicate(vec, terms, v, t) for _, v, t in chosen):
                continue
            chosen.append((out, vec, terms))
            if len(chosen) == k:
                break
        return [o for o, _, _ in chosen]

    # --- searching ----------------------------------------------------------------------------

    def _query(
        self,
        client: QdrantClient,
        collection: str,
        text: str,
        limit: int,
        flt: models.Filter,
        *,
        mode: SearchMode | Literal["sparse"] | None = None,
        with_vectors: bool = False,
    ) -> list[models.ScoredPoint]:
        physical = self.target(collection)
        tenant = _tenant_in(flt)
        if self.local and tenant is not None:
            # Local mode evaluates filters point by point in Python (~30 us a point); the tenant
            # condition is dropped when every point belongs to this tenant, and a tenant with no
            # points gets nothing. A server always filters (its tenant index makes it cheap).
            tenants = self._known_tenants(client, physical)
            if tenant not in tenants:
                return []
            if tenants == {tenant}:
                flt = _without(flt, "tenant")
        query_filter = flt if flt.must or flt.must_not else None
        vectors: Any = [DENSE] if with_vectors else False
        if mode == "sparse":
            sq = bm25.encode_query(text)
            if not sq:
                return []
            return client.query_points(
                physical,
                query=models.SparseVector(indices=sq.indices, values=sq.values),
                using=SPARSE,
                query_filter=query_filter,
                limit=limit,
                with_payload=True,
                with_vectors=vectors,
            ).points
        dense = self.embedder.embed_query(text).tolist()
        mode = self._resolve_mode(client, physical, mode)
        sp = bm25.encode_query(text) if mode == "hybrid" else None
        if not sp:
            return client.query_points(
                physical,
                query=dense,
                using=DENSE,
                query_filter=query_filter,
                limit=limit,
                with_payload=True,
                with_vectors=vectors,
            ).points
        depth = max(limit * 4, 20)
        return client.query_points(
            physical,
            prefetch=[
                models.Prefetch(query=dense, using=DENSE, limit=depth),
                models.Prefetch(
                    query=models.SparseVector(indices=sp.indices, values=sp.values),
                    using=SPARSE,
                    limit=depth,
                ),
            ],
            query=models.FusionQuery(fusion=models.Fusion.RRF),
            query_filter=query_filter,
            limit=limit,
            with_payload=True,
            with_vectors=vectors,
        ).points

    def _resolve_mode(
        self, client: QdrantClient, physical: str, requested: SearchMode | None
    ) -> SearchMode:
        mode = requested or self.search_mode
        if mode != "auto":
            return mode
        if not self.local:
            return "hybrid"
        points = client.count(physical, exact=True).count
        return "hybrid" if points <= self.settings.kb_local_hybrid_max_points else "dense"

    def resolved_mode(self, collection: str = DOCUMENTS) -> SearchMode:
        """The mode a search of `collection` uses now (`auto` resolved)."""
        return self.call(lambda c: self._resolve_mode(c, self.target(collection), None))

    def search_sync(
        self,
        query: str,
        *,
        k: int = 5,
        collection: str = DOCUMENTS,
        brand: str | None = None,
        tenant: str = DEFAULT_TENANT,
        mode: SearchMode | None = None,
    ) -> list[KBHit]:
        flt = _search_filter(collection, brand, tenant)
        points = self.call(lambda c: self._query(c, collection, query, k, flt, mode=mode))
        return [_hit(p, collection) for p in points]

    async def search(
        self,
        query: str,
        *,
        k: int = 5,
        brand: str | None = None,
        tenant: str = DEFAULT_TENANT,
        collections: Sequence[str] = COLLECTIONS,
        mode: SearchMode | None = None,
    ) -> list[KBHit]:
        """Documents and successful past outputs most relevant to `query`, best first.

        One collection: Qdrant's fused query. Several: fused rank scores of separate collections
        are not comparable (a collection of three points puts its best one first whatever it is),
        so each collection is queried dense and sparse separately, the dense candidates of all
        collections are ranked by cosine (one embedding: one scale) and the sparse candidates by
        BM25 score, and the two global rankings are fused with the same Reciprocal Rank Fusion.
        All collections use one mode: dense if `auto` resolves any of them to dense."""
        names = list(dict.fromkeys(collections))
        if len(names) == 1:
            name = names[0]
            return await asyncio.to_thread(
                lambda: self.search_sync(
                    query, k=k, collection=name, brand=brand, tenant=tenant, mode=mode
                )
            )
        return await asyncio.to_thread(self._search_many, query, k, brand, tenant, names, mode)

    def _search_many(
        self,
        query: str,
        k: int,
        brand: str | None,
        tenant: str,
        names: list[str],
        mode: SearchMode | None,
    ) -> list[KBHit]:
        resolved = {name: self.resolved_mode(name) for name in names}
        if mode is not None and mode != "auto":
            resolved = dict.fromkeys(names, mode)
        hybrid = all(m == "hybrid" for m in resolved.values())
        depth = max(k * 4, 20)
        dense: list[models.ScoredPoint] = []
        sparse: list[models.ScoredPoint] = []
        origin: dict[str, str] = {}
        for name in names:
            flt = _search_filter(name, brand, tenant)
            kw: dict[str, Any] = {"collection": name, "text": query, "limit": depth, "flt": flt}
            found = self.call(partial(self._query, mode="dense", **kw))
            origin.update({str(p.id): name for p in found})
            dense += found
            if hybrid:
                found = self.call(partial(self._query, mode="sparse", **kw))
                origin.update({str(p.id): name for p in found})
                sparse += found
        dense.sort(key=lambda p: -p.score)
        if not hybrid:
            return [_hit(p, origin[str(p.id)]) for p in dense[:k]]
        sparse.sort(key=lambda p: -p.score)
        fused = reciprocal_rank_fusion([dense, sparse], limit=k)
        return [_hit(p, origin[str(p.id)]) for p in fused]

    # --- maintenance ----------------------------------------------------------------------------
    def stats(self) -> list[CollectionStats]:
        def read(client: QdrantClient) -> list[CollectionStats]:
            out = []
            for name in COLLECTIONS:
                physical = self.physical_name(name) or name
                info = client.get_collection(physical)
                meta = info.config.metadata or {}
                count = client.count(physical, exact=True).count
                out.append(
                    CollectionStats(
                        name=name,
                        physical=physical,
                        points=count,
                        embedding_model=str(meta.get("embedding_model", "?")),
                        embedding_dim=int(meta.get("embedding_dim", 0)),
                        sparse_encoder=str(meta.get("sparse_encoder", "?")),
                        extra={"tenants": meta.get("tenants", [])},
                    )
                )
            return out

        return self.call(read)

    def source_counts(self, tenant: str | None = None) -> dict[str, int]:
        """Chunks per source in `documents`."""
        flt = _filter(tenant=tenant) if tenant else None
        counts: dict[str, int] = {}
        for r in self._scroll(DOCUMENTS, flt, payload=["source"]):
            src = str((r.payload or {}).get("source", ""))
            counts[src] = counts.get(src, 0) + 1
        return counts

    def reindex(self, progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
        """Rebuild both collections with the configured embedding: copy every point's payload
        into a new physical collection with fresh vectors, switch the alias in one operation,
        then drop the old collection. A crash leaves the old collection serving; the next
        reindex removes the half-built copy."""
        with self._lock:
            self.open(check_embedding=False)
            assert self._client is not None
            client = self._client
            done: dict[str, int] = {}
            for name in COLLECTIONS:
                old = self.physical_name(name)
                assert old is not None
                for c in client.get_collections().collections:  # leftovers of a crashed run
                    if re.fullmatch(rf"{name}_\d+", c.name) and c.name != old:
                        client.delete_collection(c.name)
                m = re.fullmatch(rf"{name}_(\d+)", old)
                new = f"{name}_{int(m.group(1)) + 1 if m else 2}"
                self._create(new, name)
                total = client.count(old, exact=True).count
                copied = 0
                offset: Any = None
                while True:
                    records, offset = client.scroll(
                        old, limit=UPSERT_BATCH, offset=offset, with_payload=True
                    )
                    if records:
                        texts = [_record_text(r) for r in records]
                        vectors = self._vectors(texts)
                        client.upsert(
                            new,
                            points=[
                                models.PointStruct(id=r.id, vector=v, payload=r.payload)
                                for r, v in zip(records, vectors, strict=True)
                            ],
                            wait=True,
                        )
                        copied += len(records)
                        if progress is not None:
                            progress(name, copied, total)
                    if offset is None:
                        break
                meta = client.get_collection(old).config.metadata or {}
                if meta.get("tenants"):
                    client.update_collection(new, metadata={"tenants": meta["tenants"]})
                ops: list[Any] = [
                    models.CreateAliasOperation(
                        create_alias=models.CreateAlias(collection_name=new, alias_name=name)
                    )
                ]
                if old != name:
                    ops.insert(
                        0,
                        models.DeleteAliasOperation(
                            delete_alias=models.DeleteAlias(alias_name=name)
                        ),
                    )
                else:  # a plain collection named like the alias (made by another tool)
                    client.delete_collection(old)
                client.update_collection_aliases(change_aliases_operations=ops)
                if old != name:
                    client.delete_collection(old)
                done[name] = copied
            if self._local_path is not None:
                for key in [k for k in _local_tenants if k[0] == self._local_path.resolve()]:
                    del _local_tenants[key]
            self._checked = False
            self.open()
            return done


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _filter(**conditions: Any) -> models.Filter:
    return models.Filter(must=[_match(k, v) for k, v in conditions.items() if v is not None])


def _search_filter(collection: str, brand: str | None, tenant: str) -> models.Filter:
    """Documents of the tenant; past outputs of the tenant that are successful (and of the
    brand, when given)."""
    if collection not in COLLECTIONS:
        raise KnowledgeBaseError(f"unknown collection {collection!r}; use {COLLECTIONS}")
    conditions: dict[str, Any] = {}
    if collection == PAST_OUTPUTS:
        conditions["successful"] = True
        if brand:
            conditions["brand"] = brand
    return _filter(tenant=tenant, **conditions)


def _tenant_in(flt: models.Filter) -> str | None:
    for cond in flt.must or []:
        if isinstance(cond, models.FieldCondition) and cond.key == "tenant" and cond.match:
            return str(getattr(cond.match, "value", ""))
    return None


def _without(flt: models.Filter, key: str) -> models.Filter:
    must = [
        c for c in (flt.must or []) if not (isinstance(c, models.FieldCondition) and c.key == key)
    ]
    return models.Filter(must=must, must_not=flt.must_not)


def _dense_of(point: models.ScoredPoint | models.Record) -> list[float]:
    vec = point.vector
    if isinstance(vec, dict):
        return list(vec.get(DENSE) or [])  # type: ignore[arg-type]
    return list(vec or [])  # type: ignore[arg-type]


def _near_duplicate(a: np.ndarray, ta: set[str], b: np.ndarray, tb: set[str]) -> bool:
    if a.size and b.size and float(a @ b) >= NEAR_DUPLICATE_COSINE:
        return True
    union = ta | tb
    return bool(union) and len(ta & tb) / len(union) >= NEAR_DUPLICATE_JACCARD


def _output_text(out: PastOutput) -> str:
    tags = " ".join(f"#{h}" for h in out.hashtags)
    return "\n".join(x for x in (out.title, out.text, tags) if x)


def _record_text(record: models.Record) -> str:
    p = record.payload or {}
    if "chunk_index" in p:
        return embed_text(str(p.get("title", "")), str(p.get("section", "")), str(p["text"]))
    tags = " ".join(f"#{h}" for h in p.get("hashtags") or [])
    return "\n".join(x for x in (str(p.get("title", "")), str(p.get("text", "")), tags) if x)


def _past_output(point: models.ScoredPoint | models.Record) -> PastOutput:
    p = dict(point.payload or {})
    fields = set(PastOutput.model_fields) - {"id", "score"}
    out = PastOutput(**{k: v for k, v in p.items() if k in fields})
    out.id = str(point.id)
    out.score = float(getattr(point, "score", 0.0) or 0.0)
    return out


def _hit(point: models.ScoredPoint, collection: str) -> KBHit:
    p = point.payload or {}
    return KBHit(
        id=str(p.get("doc_id") or point.id),
        title=str(p.get("title") or p.get("source") or ""),
        text=str(p.get("text", "")),
        source=str(p.get("source", "")),
        score=float(point.score),
        collection=collection,
        section=str(p.get("section", "")),
    )


__all__ = [
    "COLLECTIONS",
    "DOCUMENTS",
    "PAST_OUTPUTS",
    "DocumentChunk",
    "EmbeddingError",
    "EmbeddingMismatchError",
    "KnowledgeBaseError",
    "KnowledgeBaseLockedError",
    "QdrantKnowledgeBase",
    "chunk_point_id",
    "output_point_id",
    "tune_local_storage",
]
