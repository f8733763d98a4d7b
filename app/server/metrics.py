"""Prometheus metrics hooks.

INTERFACE (stable, called by the run executor and stream routes; no-ops until implemented):
`run_started()`, `run_finished(status, duration_s)`, `stream_opened()`, `stream_closed()`,
`usage_recorded(agent, input_tokens, output_tokens, cost_usd)`; `render() -> (bytes, content_type)`
for `GET /metrics`.
"""

from __future__ import annotations


def run_started() -> None:
    return None


def run_finished(status: str, duration_s: float) -> None:
    return None


def stream_opened() -> None:
    return None


def stream_closed() -> None:
    return None


def usage_recorded(agent: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
    return None


def render() -> tuple[bytes, str]:
    return b"", "text/plain; version=0.0.4"
