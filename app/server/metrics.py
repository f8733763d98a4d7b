"""Prometheus metrics for `GET /metrics`.

INTERFACE (stable, called by the run executor and stream routes):
`run_started()`, `run_finished(status, duration_s)`, `stream_opened()`, `stream_closed()`,
`usage_recorded(agent, input_tokens, output_tokens, cost_usd)`; `render(accept=None) ->
(bytes, content_type)` for `GET /metrics` (pass the request's Accept header to negotiate). Also
`rate_limited()` and `auth_failed(reason)` (called by the security layer).

The series live in a registry of our own (not `prometheus_client`'s global default), so a test can
start from zero with `reset()` and nothing else in the process (other libraries' collectors)
leaks into the exposition.

Several processes (`mkt serve --workers N`: runs execute in the workers, streams and requests are
counted in the server): the server calls `enable_multiprocess(dir)` before it starts the workers,
which inherit `PROMETHEUS_MULTIPROC_DIR`; every process then keeps its series in its own memory-
mapped files there (`prometheus_client`'s multiprocess mode) and `render()` in any of them sums
all the files: counters and histograms of every process that ever ran (a restarted worker's
predecessor included), gauges of the live ones (`process_dead(pid)` drops a dead worker's).
A standalone `mkt worker` elsewhere serves its own series (`mkt worker --metrics-port`).

| series | type | labels |
| --- | --- | --- |
| `mkt_runs_started_total` | counter | |
| `mkt_runs_total` | counter | `status` (success, error, interrupted, timeout, released, ...) |
| `mkt_run_duration_seconds` | histogram | `status` |
| `mkt_active_runs` | gauge | |
| `mkt_active_streams` | gauge | |
| `mkt_tokens_total` | counter | `agent`, `direction` (input, output) |
| `mkt_cost_usd_total` | counter | `agent` |
| `mkt_rate_limited_total` | counter | |
| `mkt_auth_failures_total` | counter | `reason` (missing, unknown, revoked, no_keys, throttled: refused with 429 before the key is looked up) |
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# agent runs take from milliseconds (scripted model) to minutes (a real model writing a campaign)
RUN_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_LABEL = re.compile(r"[^a-z0-9_:-]")


def _label(value: str) -> str:
    """Label values come from our own code, but keep them short and tame anyway (cardinality)."""
    return _LABEL.sub("_", value.strip().lower())[:40] or "unknown"


class Metrics:
    """One set of series in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_started = Counter(
            "mkt_runs_started", "Runs started (including resumes).", registry=r
        )
        self.runs = Counter("mkt_runs", "Runs finished, by final status.", ["status"], registry=r)
        self.run_duration = Histogram(
            "mkt_run_duration_seconds",
            "Wall time of finished runs, by final status.",
            ["status"],
            buckets=RUN_DURATION_BUCKETS,
            registry=r,
        )
        # in multiprocess mode: the sum over live processes (ignored in a single process)
        self.active_runs = Gauge(
            "mkt_active_runs", "Runs executing now.", registry=r, multiprocess_mode="livesum"
        )
        self.active_streams = Gauge(
            "mkt_active_streams",
            "Open SSE streams (run streams and joins).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.notify_queue_usage = Gauge(
            "mkt_postgres_notification_queue_usage",
            "How full Postgres's notification queue is (0-1), read at each scrape. Streams get "
            "their events in notifications only while it is under half full; a value that "
            "keeps rising means a listening session is stuck.",
            registry=r,
            multiprocess_mode="mostrecent",  # set by the server process only
        )
        self.tokens = Counter(
            "mkt_tokens",
            "Model tokens used, by agent and direction (input, output).",
            ["agent", "direction"],
            registry=r,
        )
        self.cost = Counter(
            "mkt_cost_usd", "Model cost in US dollars, by agent.", ["agent"], registry=r
        )
        self.rate_limited_requests = Counter(
            "mkt_rate_limited", "Requests refused with 429.", registry=r
        )
        self.auth_failures = Counter(
            "mkt_auth_failures", "Requests refused with 401, by reason.", ["reason"], registry=r
        )


_lock = threading.Lock()
_current = Metrics()


def current() -> Metrics:
    return _current


def reset() -> Metrics:
    """Start every series from zero (tests; a fresh server process starts at zero anyway). In
    multiprocess mode this also deletes every process's files."""
    global _current
    with _lock:
        path = multiprocess_dir()
        if path is not None:
            _fresh_files(path)
        _current = Metrics()
    return _current


def multiprocess_dir() -> Path | None:
    """The shared directory when this process is in multiprocess mode (else None)."""
    value = os.environ.get(MULTIPROC_ENV)
    if value and getattr(values.ValueClass, "_multiprocess", False):
        return Path(value)
    return None


def _close_files() -> None:
    cls = values.ValueClass
    if getattr(cls, "_multiprocess", False):
        cls.close_all_files()


def _fresh_files(path: Path) -> None:
    """Close this process's files, delete every process's, and write new ones from here on."""
    _close_files()
    for file in path.glob("*.db"):
        file.unlink(missing_ok=True)
    values.ValueClass = values.MultiProcessValue()


def enable_multiprocess(path: Path) -> None:
    """From now on this process's series are kept in `path` (emptied first: the files of an
    earlier server would be counted) and `render()` sums the files of every process there.
    Processes started afterwards inherit the directory through the environment."""
    global _current
    path.mkdir(parents=True, exist_ok=True)
    with _lock:
        os.environ[MULTIPROC_ENV] = str(path)
        _fresh_files(path)
        _current = Metrics()


def disable_multiprocess() -> None:
    """Back to series in this process's memory (at server shutdown; tests)."""
    global _current
    with _lock:
        os.environ.pop(MULTIPROC_ENV, None)
        _close_files()
        values.ValueClass = values.MutexValue
        _current = Metrics()


def process_dead(pid: int) -> None:
    """A worker `pid` has exited: its live gauges (active runs, streams) no longer count; its
    counters and histograms stay in the totals."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, str(path))


def run_started() -> None:
    m = _current
    m.runs_started.inc()
    m.active_runs.inc()


def run_finished(status: str, duration_s: float) -> None:
    m = _current
    label = _label(status)
    m.active_runs.dec()
    m.runs.labels(status=label).inc()
    m.run_duration.labels(status=label).observe(max(0.0, duration_s))


def stream_opened() -> None:
    _current.active_streams.inc()


def stream_closed() -> None:
    _current.active_streams.dec()


def usage_recorded(agent: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
    m = _current
    name = _label(agent)
    if input_tokens > 0:
        m.tokens.labels(agent=name, direction="input").inc(input_tokens)
    if output_tokens > 0:
        m.tokens.labels(agent=name, direction="output").inc(output_tokens)
    if cost_usd > 0:
        m.cost.labels(agent=name).inc(cost_usd)


def notification_queue_read(usage: float) -> None:
    _current.notify_queue_usage.set(usage)


def rate_limited() -> None:
    _current.rate_limited_requests.inc()


def auth_failed(reason: str) -> None:
    _current.auth_failures.labels(reason=_label(reason)).inc()


class _Exposed(Collector):
    """What this process exposes: its own series, or in multiprocess mode every process's."""

    def collect(self) -> Iterable[Metric]:
        path = multiprocess_dir()
        if path is None:
            return _current.registry.collect()
        return MultiProcessCollector(None, path=str(path)).collect()


EXPOSED = _Exposed()


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its content type: Prometheus text format 0.0.4, or the format the
    scraper's `Accept` header asks for (OpenMetrics, text 1.0.0) when it is passed."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(EXPOSED), content_type


class MetricsPortError(RuntimeError):
    """The metrics port cannot be bound."""


def serve_http(port: int, host: str = "127.0.0.1") -> int:
    """Serve `GET /metrics` on `host:port` from a thread (a standalone `mkt worker`, whose
    series no server collects); returns the bound port (`port` 0 picks a free one)."""
    try:
        server, _ = start_http_server(port, addr=host, registry=EXPOSED)
    except OSError as exc:
        in_use = exc.errno == errno.EADDRINUSE
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
            + ("choose another --metrics-port" if in_use else "check --metrics-host")
        ) from None
    return int(server.server_address[1])
