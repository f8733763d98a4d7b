"""Prometheus series across processes (`mkt serve --workers N`): runs execute in worker
processes, but the server's `/metrics` shows them — every process keeps its series in files of
one shared directory and the exposition sums them. A worker that died keeps its counts in the
totals but leaves the live gauges. A standalone `mkt worker` serves its own `/metrics`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.server import metrics

# what a worker process does for one run (the executor's calls), and how it may leave it
CHILD = textwrap.dedent(
    """
    import sys
    from app.server import metrics
    metrics.run_started()
    metrics.usage_recorded("content", 100, 40, 0.25)
    if sys.argv[1] == "finish":
        metrics.run_finished("success", 1.5)
    # "die": exits mid-run, its run still counted as active
    """
)


def lines() -> list[str]:
    return metrics.render()[0].decode().splitlines()


def run_child(how: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, how],
        env=os.environ.copy(),  # PROMETHEUS_MULTIPROC_DIR is inherited, as by `mkt worker`
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "metrics"
    metrics.enable_multiprocess(path)
    try:
        yield path
    finally:
        metrics.disable_multiprocess()
        metrics.reset()


def child_pids(path: Path) -> set[int]:
    """The processes that left live gauges in `path`, this one excepted."""
    return {
        int(f.stem.rsplit("_", 1)[1])
        for f in path.glob("gauge_livesum_*.db")
        if int(f.stem.rsplit("_", 1)[1]) != os.getpid()
    }


def test_the_servers_exposition_sums_the_series_of_its_worker_processes(
    shared_dir: Path,
) -> None:
    metrics.stream_opened()  # the server process: one open stream
    run_child("finish")
    run_child("finish")
    run_child("die")
    text = lines()
    for line in (
        "mkt_runs_started_total 3.0",
        'mkt_runs_total{status="success"} 2.0',
        'mkt_run_duration_seconds_bucket{le="2.5",status="success"} 2.0',
        'mkt_run_duration_seconds_sum{status="success"} 3.0',
        'mkt_tokens_total{agent="content",direction="input"} 300.0',
        'mkt_tokens_total{agent="content",direction="output"} 120.0',
        'mkt_cost_usd_total{agent="content"} 0.75',
        "mkt_active_streams 1.0",
        # the worker that died mid-run: its run counts as active until it is marked dead
        "mkt_active_runs 1.0",
    ):
        assert line in text, (line, text)

    for pid in child_pids(shared_dir):
        metrics.process_dead(pid)  # what the supervisor does when a worker exits
    text = lines()
    assert "mkt_active_runs 0.0" in text
    assert "mkt_runs_started_total 3.0" in text  # counts of dead workers stay in the totals
    assert "mkt_active_streams 1.0" in text  # the server process is alive


def test_a_server_start_discards_the_files_of_an_earlier_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics"
    metrics.enable_multiprocess(path)
    try:
        run_child("finish")
        assert "mkt_runs_started_total 1.0" in lines()
        metrics.enable_multiprocess(path)  # the next server, same PROMETHEUS_MULTIPROC_DIR
        assert "mkt_runs_started_total 0.0" in lines()
    finally:
        metrics.disable_multiprocess()
        metrics.reset()


def test_back_in_one_process_the_series_are_this_processes_own(shared_dir: Path) -> None:
    run_child("finish")
    metrics.disable_multiprocess()
    assert metrics.multiprocess_dir() is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    files = {f: f.read_bytes() for f in shared_dir.glob("*.db")}
    assert "mkt_runs_started_total 0.0" in lines()
    metrics.run_started()
    assert "mkt_runs_started_total 1.0" in lines()
    assert {f: f.read_bytes() for f in shared_dir.glob("*.db")} == files  # not written there


@pytest.mark.integration
def test_a_standalone_worker_serves_its_own_metrics_port() -> None:
    metrics.reset()
    port = metrics.serve_http(0)
    metrics.run_started()
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert "mkt_runs_started_total 1.0" in response.text.splitlines()
    assert "python_gc_objects_collected_total" not in response.text  # only our series
    metrics.reset()


@pytest.mark.integration
def test_a_taken_metrics_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.MetricsPortError, match="choose another --metrics-port"):
            metrics.serve_http(port)
