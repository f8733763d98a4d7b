"""The Qdrant knowledge base itself: collections and what they record, the embedding check and
`reindex`, persistence across a process restart, the local-mode lock, tenant isolation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from tools.embeddings import normalise
from tools.knowledge import (
    EmbeddingMismatchError,
    KnowledgeBaseLockedError,
    PastOutput,
    is_successful,
)
from tools.qdrant_kb import (
    DENSE,
    DOCUMENTS,
    INDEXES,
    PAST_OUTPUTS,
    SPARSE,
    DocumentChunk,
    QdrantKnowledgeBase,
)

ROOT = Path(__file__).resolve().parents[2]


class HashEmbedder:
    """A deterministic stand-in embedding of another model and dimension."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"test/hash-{dim}"

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                rows[i, hash(word) % self.dim] += 1.0
        return normalise(rows)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


@pytest.fixture
def kb(settings: Settings) -> Iterator[QdrantKnowledgeBase]:
    store = QdrantKnowledgeBase(settings)
    store.open()
    yield store
    store.close()


def chunk(doc_id: str, text: str, *, tenant: str = "default", source: str = "") -> DocumentChunk:
    return DocumentChunk(
        doc_id=doc_id,
        text=text,
        title=doc_id,
        source=source or f"kb/{doc_id}.md",
        content_hash="h1",
        tenant=tenant,
    )


def test_collections_record_their_embedding_and_index_the_filtered_fields(
    kb: QdrantKnowledgeBase,
) -> None:
    stats = {c.name: c for c in kb.stats()}
    assert set(stats) == {DOCUMENTS, PAST_OUTPUTS}
    for name in (DOCUMENTS, PAST_OUTPUTS):
        assert stats[name].embedding_model == "wordllama/l2_supercat"
        assert stats[name].embedding_dim == 256
        assert stats[name].physical == f"{name}_1", "the name is an alias of a physical collection"
        info = kb.call(lambda c, n=name: c.get_collection(f"{n}_1"))
        assert info.config.params.vectors[DENSE].size == 256  # type: ignore[index]
        assert SPARSE in (info.config.params.sparse_vectors or {})
    # the filters used by search and examples are the indexed fields
    assert {"tenant", "source", "content_hash"} <= set(INDEXES[DOCUMENTS])
    assert {"tenant", "brand", "kind", "platform", "successful", "thread_id"} <= set(
        INDEXES[PAST_OUTPUTS]
    )


def test_opening_with_another_embedding_names_reindex_and_reindex_fixes_it(
    settings: Settings,
) -> None:
    first = QdrantKnowledgeBase(settings)
    first.upsert_chunks([chunk("spec", "TerraRun weighs 280 g with an 8 mm drop")])
    first.close()

    other = QdrantKnowledgeBase(settings, embedder=HashEmbedder(64))
    with pytest.raises(EmbeddingMismatchError) as info:
        other.open()
    message = str(info.value)
    assert "mkt kb reindex" in message
    assert "wordllama/l2_supercat (256 dimensions" in message and "64 dimensions" in message

    done = other.reindex()
    assert done == {DOCUMENTS: 1, PAST_OUTPUTS: 0}
    stats = {c.name: c for c in other.stats()}
    assert stats[DOCUMENTS].embedding_dim == 64
    assert stats[DOCUMENTS].physical == "documents_2", "a new physical collection behind the alias"
    assert [h.id for h in other.search_sync("TerraRun weight", k=1)] == ["spec"]
    other.close()


def test_points_persist_across_a_process_restart(settings: Settings, tmp_path: Path) -> None:
    """This process ingests and closes the store (releasing its lock); a new process opens the
    same folder and finds the chunk."""
    from tools.ingest import ingest_paths

    doc = tmp_path / "spec.md"
    doc.write_text("# TR-2 GTX\n\nThe TR-2 GTX costs 219 dollars.\n")
    kb = QdrantKnowledgeBase(settings)
    assert ingest_paths(kb, [doc]).count("added") == 1
    kb.close()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from app.settings import Settings
        from tools.qdrant_kb import QdrantKnowledgeBase
        kb = QdrantKnowledgeBase(Settings(data_dir=Path({str(settings.data_dir)!r})))
        for hit in kb.search_sync("TR-2 GTX price", k=1):
            print(hit.source, "|", hit.text.replace("\\n", " "))
        kb.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{doc.resolve()} |") and "219 dollars" in out.stdout


def test_a_store_held_by_another_process_gives_an_error_naming_the_fix(
    settings: Settings,
) -> None:
    path = settings.qdrant_path
    path.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from qdrant_client import QdrantClient
                client = QdrantClient(path={str(path)!r})
                print("ready", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(KnowledgeBaseLockedError) as info:
            QdrantKnowledgeBase(settings).open()
        message = str(info.value)
        assert "another process" in message
        assert "mkt serve" in message and "QDRANT_URL" in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    kb = QdrantKnowledgeBase(settings)  # free again once the other process is gone
    kb.open()
    kb.close()


def test_two_handles_in_one_process_share_the_store(settings: Settings) -> None:
    a, b = QdrantKnowledgeBase(settings), QdrantKnowledgeBase(settings)
    a.upsert_chunks([chunk("one", "Aurora thermostat saves energy")])
    assert [h.id for h in b.search_sync("Aurora energy", k=1)] == ["one"]
    a.close()
    assert [h.id for h in b.search_sync("Aurora energy", k=1)] == ["one"], "still open for b"
    b.close()


def test_tenants_never_see_each_others_documents(kb: QdrantKnowledgeBase) -> None:
    kb.upsert_chunks([chunk("acme-plan", "Launch plan for the TerraRun shoe", tenant="acme")])
    # one tenant only: its searches see its documents, other tenants see nothing
    assert [h.id for h in kb.search_sync("launch plan", tenant="acme")] == ["acme-plan"]
    assert kb.search_sync("launch plan", tenant="globex") == []
    kb.upsert_chunks([chunk("globex-plan", "Launch plan for the Aurora", tenant="globex")])
    # two tenants: the tenant filter applies
    assert [h.id for h in kb.search_sync("launch plan", tenant="acme")] == ["acme-plan"]
    assert [h.id for h in kb.search_sync("launch plan", tenant="globex")] == ["globex-plan"]
    assert kb.search_sync("launch plan") == [], "the default tenant has no documents"


def test_search_modes_return_documents_with_scores_and_sources(kb: QdrantKnowledgeBase) -> None:
    kb.upsert_chunks(
        [
            chunk("gtx", "The TR-2 GTX is waterproof and costs 219 dollars."),
            chunk("sizing", "TerraRun runs half a size small."),
        ]
    )
    for mode in ("hybrid", "dense"):
        hits = kb.search_sync("TR-2 GTX", k=2, mode=mode)  # type: ignore[arg-type]
        assert hits[0].id == "gtx" and hits[0].source == "kb/gtx.md"
        assert hits[0].score > hits[1].score


@pytest.mark.parametrize(
    ("status", "rating", "successful"),
    [
        ("approved", None, True),
        ("edited", None, True),
        ("approved", 3, True),
        ("approved", 2, False),
        ("approved", 1, False),
        ("unreviewed", None, False),
        ("unreviewed", 4, True),
        ("rejected", 5, False),
    ],
)
def test_the_learning_rule(status: str, rating: int | None, successful: bool) -> None:
    assert is_successful(status, rating) is successful


def past(text: str, **kw: object) -> PastOutput:
    values: dict[str, object] = {
        "text": text,
        "agent": "social",
        "kind": "post",
        "platform": "x",
        "brand": "TerraRun Co",
        "status": "approved",
        "thread_id": "t1",
        "artifact_id": "post-x",
    }
    values.update(kw)
    return PastOutput(**values)  # type: ignore[arg-type]


async def test_examples_are_successful_same_brand_and_platform_without_near_duplicates(
    kb: QdrantKnowledgeBase,
) -> None:
    base = "Meet TerraRun: grip that holds on wet rock, out October 16. #RunWild"
    await kb.record_output(past(base, thread_id="t1"))
    await kb.record_output(past(base.replace("holds", "sticks"), thread_id="t2"))  # near-dup
    await kb.record_output(past("TerraRun trail shoes for long downhill runs.", thread_id="t3"))
    await kb.record_output(
        past("TerraRun wet rock grip, rejected", thread_id="t4", status="rejected")
    )
    await kb.record_output(past("TerraRun wet rock grip rated 1", thread_id="t5", rating=1))
    await kb.record_output(past("TerraRun grip on LinkedIn", thread_id="t6", platform="linkedin"))
    await kb.record_output(past("TerraRun grip for another brand", thread_id="t7", brand="Other"))

    found = await kb.examples(
        "TerraRun grip on wet rock", brand="TerraRun Co", kind="post", platform="x", k=5
    )
    threads = [o.thread_id for o in found]
    assert len(found) == 2, threads
    assert set(threads) in ({"t1", "t3"}, {"t2", "t3"}), "one of the near-duplicates, and t3"
    # the piece being rewritten is never its own example
    found = await kb.examples(
        "TerraRun grip on wet rock",
        brand="TerraRun Co",
        kind="post",
        platform="x",
        k=5,
        exclude=("t3", "post-x"),
    )
    assert "t3" not in [o.thread_id for o in found]


async def test_recording_the_same_decision_again_is_idempotent_and_keeps_the_rating(
    kb: QdrantKnowledgeBase,
) -> None:
    pid = await kb.record_output(past("Meet TerraRun."))
    [rated] = kb.rate_sync(kb.thread_outputs("t1"), 5, "great hook")
    assert rated.id == pid and rated.successful
    again = await kb.record_output(past("Meet TerraRun."))  # e.g. the node re-ran after a crash
    assert again == pid
    [stored] = kb.thread_outputs("t1")
    assert (stored.rating, stored.comment, stored.status) == (5, "great hook", "approved")
    assert kb.stats()[1].points == 1


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, "wordllama"),
        ({"openai_api_key": "sk-x"}, "openai"),
        ({"openai_api_key": "sk-x", "model_provider": "scripted"}, "wordllama"),
        ({"openai_api_key": "sk-x", "openai_base_url": "http://127.0.0.1:11434/v1"}, "wordllama"),
        ({"embedding_provider": "openai", "openai_base_url": "http://h/v1"}, "openai"),
        ({"openai_api_key": "sk-x", "embedding_provider": "wordllama"}, "wordllama"),
    ],
)
def test_embedding_provider_follows_the_configured_models(
    env: dict[str, str], provider: str, tmp_path: Path
) -> None:
    from tools.embeddings import embedding_provider

    values: dict[str, object] = {"model_provider": "auto", "data_dir": tmp_path, **env}
    assert embedding_provider(Settings(**values)) == provider  # type: ignore[arg-type]


def test_chunk_overlap_must_be_smaller_than_the_chunk() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="KB_CHUNK_OVERLAP"):
        Settings(kb_chunk_chars=500, kb_chunk_overlap=500)


async def test_a_small_past_outputs_collection_does_not_outrank_better_documents(
    kb: QdrantKnowledgeBase,
) -> None:
    """Searching both collections fuses global rankings: the one remembered output is not
    ranked as if it were the best match just because it is the best of its own collection."""
    kb.upsert_chunks(
        [
            chunk("price", "The Aurora thermostat costs 149 dollars."),
            chunk("install", "Install the Aurora thermostat in 30 minutes."),
            chunk("rebate", "Utility rebates give 50 to 100 dollars back on the thermostat cost."),
            chunk("app", "The Aurora app shows a weekly energy report."),
        ]
    )
    await kb.record_output(past("We love Aurora.", kind="blog", platform=None))
    hits = await kb.search("How much does the Aurora thermostat cost in dollars?", k=5)
    ids = [h.id for h in hits]
    assert ids[0] == "price"
    assert ids.index("t1/post-x/v1") >= 3, ids
    assert {h.collection for h in hits} == {"documents", "past_outputs"}
