"""Dense text embeddings for the knowledge base.

Offline default: WordLlama (PyPI `wordllama`, 256-dimension weights shipped in the wheel, loaded
from the package folder with downloads disabled). With OpenAI configured: OpenAI embeddings through
`langchain-openai`. Every embedder returns L2-normalised float32 rows, so cosine similarity is a dot
product (the collections use Qdrant's DOT distance on these unit vectors).
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import numpy as np

from tools.knowledge import KnowledgeBaseError

if TYPE_CHECKING:
    from app.settings import Settings

WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIM = 256
OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class EmbeddingError(KnowledgeBaseError):
    """The embedding model could not be loaded or did not answer."""


class Embedder(Protocol):
    name: str  # recorded with each collection, e.g. "wordllama/l2_supercat"
    dim: int

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


_load_lock = threading.Lock()


@cache
def _wordllama() -> Any:
    """The WordLlama model, once per process (it is immutable and thread-safe to read)."""
    import wordllama
    from wordllama import WordLlama

    with _load_lock:
        try:
            return WordLlama.load(
                config=WORDLLAMA_CONFIG,
                dim=WORDLLAMA_DIM,
                cache_dir=Path(wordllama.__file__).parent,
                disable_download=True,
            )
        except (OSError, ValueError, FileNotFoundError) as exc:
            raise EmbeddingError(
                f"cannot load the bundled WordLlama model ({exc}); reinstall with `make install` "
                "or set EMBEDDING_PROVIDER=openai"
            ) from exc


class WordLlamaEmbedder:
    """Static word embeddings averaged per text: fast (about 17 ms per 1,000 short texts) and
    fully offline; weaker on paraphrase than a transformer, which is why retrieval is hybrid."""

    name = f"wordllama/{WORDLLAMA_CONFIG}"
    dim = WORDLLAMA_DIM

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise(_wordllama().embed(texts, norm=True, batch_size=256))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


class OpenAIEmbedder:
    """OpenAI (or an OpenAI-compatible server's) embeddings via `langchain-openai`."""

    def __init__(self, settings: Settings) -> None:
        from langchain_openai import OpenAIEmbeddings

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
        kwargs: dict[str, Any] = {
            "model": settings.embedding_model,
            "api_key": key,
            "timeout": settings.model_timeout_s,
            "max_retries": settings.model_max_retries,
        }
        if settings.openai_base_url:
            kwargs["base_url"] = settings.openai_base_url
            kwargs["check_embedding_ctx_length"] = False  # tiktoken ids only suit OpenAI itself
        if settings.embedding_dimensions:
            kwargs["dimensions"] = settings.embedding_dimensions
        self._client = OpenAIEmbeddings(**kwargs)
        self.name = f"openai/{settings.embedding_model}"
        known = settings.embedding_dimensions or OPENAI_DIMS.get(settings.embedding_model)
        self.dim = known or len(self.embed_query("dimension probe"))

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        import openai

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        try:
            rows = self._client.embed_documents(texts)
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise EmbeddingError(
                f"the embedding model {self.name} failed: {type(exc).__name__}: {exc}"[:500]
                + " (check OPENAI_API_KEY / OPENAI_BASE_URL, or set EMBEDDING_PROVIDER=wordllama)"
            ) from exc
        return normalise(np.asarray(rows, dtype=np.float32))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def embedding_provider(settings: Settings) -> str:
    """`auto`: OpenAI embeddings when the app's models are OpenAI's own (a key, no custom base
    URL, MODEL_PROVIDER auto or openai); otherwise the bundled WordLlama. An OpenAI-compatible
    server with an embeddings endpoint is used only with EMBEDDING_PROVIDER=openai."""
    if settings.embedding_provider != "auto":
        return settings.embedding_provider
    if (
        settings.model_provider in ("auto", "openai")
        and settings.openai_api_key is not None
        and not settings.openai_base_url
    ):
        return "openai"
    return "wordllama"


def make_embedder(settings: Settings) -> Embedder:
    if embedding_provider(settings) == "openai":
        return OpenAIEmbedder(settings)
    return WordLlamaEmbedder()
