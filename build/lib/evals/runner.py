"""`mkt eval`: runs the suites, checks gates and the baseline, writes reports.

Entry point for the CLI: :func:`main` (returns the exit code: 0 all gates pass, 1 a gate, a
critical case or a regression against the baseline failed, 2 harness error). Tests call
:func:`run_evals` directly to inject test doubles (a model factory, a Runner class, a knowledge
base)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.models import ModelFactory, resolve_provider
from app.runner import Runner
from app.settings import Settings, reset_settings_cache
from evals.config import EvalConfig, Mode, load_config
from evals.gates import (
    check_critical,
    check_gates,
    check_regressions,
    load_baseline,
    write_baseline,
)
from evals.harness import add_usage, open_eval_runner
from evals.metrics import percentile
from evals.report import write_all
from evals.suites import Suite, SuiteEnv, all_suites
from evals.types import SUITES, CaseResult, GateResult, HarnessError, SuiteResult
from evals.upload import langsmith_enabled, upload

BASELINE_DIR = Path(__file__).with_name("baselines")
DEFAULT_OUT = Path("eval-out")
ModeChoice = Literal["auto", "offline", "live"]


@dataclass
class EvalOptions:
    suite: str = "all"
    mode: ModeChoice = "auto"
    model: str | None = None
    repeat: int = 1
    concurrency: int = 4
    baseline: Path | None = None
    update_baseline: bool = False
    out: Path | None = None
    progress: bool = False


@dataclass
class EvalOutcome:
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)
    suites: list[SuiteResult] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "failed"]


def resolve_mode(mode: ModeChoice) -> Mode:
    if mode != "auto":
        return mode
    try:
        provider, _ = resolve_provider(Settings())
    except ValueError:
        return "offline"
    return "live" if provider == "openai" else "offline"


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{'-dirty' if dirty else ''}" if rev else "unknown"


@contextmanager
def _offline_env(mode: Mode) -> Iterator[None]:
    """Offline: no web search key, no tracing — nothing leaves the machine."""
    saved = {
        k: os.environ.get(k)
        for k in ("TAVILY_API_KEY", "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2")
    }
    if mode == "offline":
        os.environ.pop("TAVILY_API_KEY", None)
        os.environ["LANGSMITH_TRACING"] = "false"
        os.environ["LANGCHAIN_TRACING_V2"] = "false"
        reset_settings_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_settings_cache()


def _settings(mode: Mode, model: str | None, data_dir: Path) -> Settings:
    # the knowledge base is always the embedded one in the run's temporary DATA_DIR: evals seed
    # it and must never write into a configured Qdrant server
    if mode == "offline":
        return Settings(
            model_provider="scripted",
            data_dir=data_dir,
            qdrant_url=None,
            embedding_provider="wordllama",
        )
    extra: dict[str, Any] = {"data_dir": data_dir, "qdrant_url": None}
    if model:
        extra["model_name"] = model
    s = Settings(**extra)
    try:
        provider, _ = resolve_provider(s)
    except ValueError as exc:
        raise HarnessError(str(exc)) from exc
    if provider not in ("openai", "local"):
        raise HarnessError(
            "live mode needs an OpenAI-compatible model: set OPENAI_API_KEY or OPENAI_BASE_URL "
            "(or run with --mode offline)"
        )
    return s


def _selected(suite: str) -> list[str]:
    if suite == "all":
        return list(SUITES)
    if suite not in SUITES:
        raise HarnessError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)} or all")
    return [suite]


async def _run_suite(
    suite: Suite, env: SuiteEnv, opts: EvalOptions, progress: Progress | None
) -> SuiteResult:
    result = SuiteResult(suite.name)
    cases = suite.load()
    reason = suite.skip_reason(env)
    if reason:
        result.skip_reason = reason
        return result
    task = progress.add_task(suite.name, total=len(cases) * opts.repeat) if progress else None
    sem = asyncio.Semaphore(max(1, opts.concurrency))

    async def one(case: Any, rep: int) -> CaseResult:
        async with sem:
            res = await suite.run_case(case, env)
        res.repeat = rep
        if progress is not None and task is not None:
            progress.advance(task)
        return res

    jobs = [one(c, r) for r in range(opts.repeat) for c in cases]
    result.cases = list(await asyncio.gather(*jobs))
    result.metrics, result.skipped_metrics = suite.aggregate(result.cases, env)
    return result


def _summary(
    mode: Mode, model: str, opts: EvalOptions, suites: list[SuiteResult], started: float
) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    usage: dict[str, dict[str, Any]] = {}
    cases = [c for s in suites for c in s.cases]
    for s in suites:
        metrics.update({f"{s.name}.{k}": v for k, v in s.metrics.items()})
        skipped.update({f"{s.name}.{k}": v for k, v in s.skipped_metrics.items()})
        if s.skipped:
            skipped[f"{s.name}.*"] = s.skip_reason or "suite skipped"
    for c in cases:
        add_usage(usage, c.usage)
    timed = [c.latency_s for c in cases if c.suite != "retrieval"]
    p50, p95 = percentile(timed, 50), percentile(timed, 95)
    if p50 is not None and p95 is not None:
        metrics["latency.p50_s"], metrics["latency.p95_s"] = p50, p95
    tokens = sum(u["input_tokens"] + u["output_tokens"] for u in usage.values())
    cost = round(sum(u["cost_usd"] for u in usage.values()), 6)
    metrics["cost.total_usd"] = cost
    metrics["cost.total_tokens"] = float(tokens)
    summary: dict[str, Any] = {
        "mode": mode,
        "model": model,
        "git_revision": git_revision(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 2),
        "repeat": opts.repeat,
        "suites": {
            s.name: {
                "status": "skipped" if s.skipped else "ran",
                "skip_reason": s.skip_reason,
                "cases": len(s.cases),
                "failed": sum(1 for c in s.cases if c.passed is False),
                "metrics": s.metrics,
                "skipped_metrics": s.skipped_metrics,
            }
            for s in suites
        },
        "metrics": metrics,
        "skipped_metrics": skipped,
        "tokens": {"total": tokens, "by_agent": usage},
        "cost_usd": cost,
        "latency": {
            "p50_s": p50,
            "p95_s": p95,
            "by_suite": {
                s.name: {
                    "p50_s": percentile([c.latency_s for c in s.cases], 50),
                    "p95_s": percentile([c.latency_s for c in s.cases], 95),
                }
                for s in suites
                if s.cases
            },
        },
        "cases": {
            "total": len(cases),
            "failed": sum(1 for c in cases if c.passed is False),
            "skipped": sum(1 for c in cases if c.passed is None)
            + sum(1 for s in suites if s.skipped),
        },
    }
    return summary, metrics, skipped


async def run_evals(
    opts: EvalOptions,
    *,
    factory: ModelFactory | None = None,
    runner_cls: type[Runner] = Runner,
    knowledge_base: Any = None,
    config: EvalConfig | None = None,
    console: Console | None = None,
) -> EvalOutcome:
    """Run the selected suites; raises HarnessError for harness problems."""
    started = time.perf_counter()
    if opts.repeat < 1 or opts.concurrency < 1:
        raise HarnessError("--repeat and --concurrency must be at least 1")
    mode = resolve_mode(opts.mode)
    cfg = config or load_config(mode)
    names = _selected(opts.suite)
    registry = all_suites()
    baseline_path = opts.baseline or BASELINE_DIR / f"{mode}.json"
    if opts.baseline is not None and not opts.update_baseline and not opts.baseline.exists():
        raise HarnessError(f"baseline file {opts.baseline} does not exist")
    baseline = None if opts.update_baseline else load_baseline(baseline_path)
    console = console or Console(stderr=True, highlight=False)
    with _offline_env(mode), tempfile.TemporaryDirectory(prefix="mkt-evals-") as tmp:
        settings = _settings(mode, opts.model, Path(tmp))
        async with open_eval_runner(settings, factory=factory, runner_cls=runner_cls) as runner:
            model = runner.factory.info().describe()
            judges: dict[str, Any] = {}
            if mode == "live" and "content" in names:
                from evals.judge import build_judges

                judges = build_judges(runner.factory, cfg.judge_model)
            env = SuiteEnv(runner, cfg, judges, knowledge_base)
            progress = (
                Progress(
                    TextColumn("{task.description:<11}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                )
                if opts.progress
                else None
            )
            results: list[SuiteResult] = []
            if progress is not None:
                progress.start()
            try:
                for name in names:
                    results.append(await _run_suite(registry[name], env, opts, progress))
            finally:
                if progress is not None:
                    progress.stop()
    summary, metrics, skipped = _summary(mode, model, opts, results, started)
    gates = check_gates(metrics, skipped, cfg, set(names))
    gates += check_critical([c for s in results for c in s.cases])
    if baseline is not None:
        gates += check_regressions(metrics, baseline, cfg)
    failed = any(g.status == "failed" for g in gates)
    summary["gates"] = [g.__dict__ for g in gates]
    summary["baseline"] = str(baseline_path) if baseline is not None else None
    summary["exit_code"] = 1 if failed else 0
    if opts.update_baseline:
        if failed:
            summary["baseline_update"] = "not written: gates failed"
        else:
            write_baseline(
                baseline_path,
                metrics,
                {"mode": mode, "model": model, "git_revision": summary["git_revision"]},
            )
            summary["baseline_update"] = f"written to {baseline_path}"
    if langsmith_enabled():
        summary["langsmith"] = upload(summary, results)
    out = opts.out or DEFAULT_OUT
    write_all(out, summary, results, gates)
    summary["out"] = str(out)
    return EvalOutcome(1 if failed else 0, summary, results, gates)


def print_summary(outcome: EvalOutcome, console: Console) -> None:
    table = Table(
        title=f"mkt eval — {outcome.summary.get('mode')} · {outcome.summary.get('model')}"
    )
    for col in ("suite", "cases", "failed", "metrics"):
        table.add_column(col)
    for s in outcome.suites:
        if s.skipped:
            table.add_row(s.name, "–", "–", f"[yellow]SKIPPED[/]: {s.skip_reason}")
            continue
        metrics = ", ".join(f"{k} {v:g}" for k, v in s.metrics.items())
        extra = "".join(
            f"\n[yellow]{k}: SKIPPED[/] ({why})" for k, why in s.skipped_metrics.items()
        )
        failed = sum(1 for c in s.cases if c.passed is False)
        table.add_row(
            s.name, str(len(s.cases)), f"[red]{failed}[/]" if failed else "0", metrics + extra
        )
    console.print(table)
    lat = outcome.summary.get("latency", {})
    console.print(
        f"tokens {outcome.summary['tokens']['total']}, cost ${outcome.summary['cost_usd']:.4f}, "
        f"p50 {lat.get('p50_s')} s, p95 {lat.get('p95_s')} s"
    )
    for g in outcome.failed_gates():
        console.print(f"[bold red]FAIL[/] {g.name}: {g.message}", soft_wrap=True)
    skipped = [g for g in outcome.gates if g.status == "skipped"]
    for g in skipped:
        console.print(f"[yellow]SKIPPED[/] {g.name}: {g.message}", soft_wrap=True)
    verdict = "[bold red]FAILED[/]" if outcome.exit_code else "[bold green]PASSED[/]"
    console.print(f"{verdict} — reports in {outcome.summary.get('out')}")
    if outcome.summary.get("baseline_update"):
        console.print(f"baseline {outcome.summary['baseline_update']}")


def main(
    suite: str = "all",
    mode: ModeChoice = "auto",
    model: str | None = None,
    repeat: int = 1,
    concurrency: int = 4,
    baseline: Path | None = None,
    update_baseline: bool = False,
    out: Path | None = None,
    *,
    progress: bool | None = None,
    console: Console | None = None,
) -> int:
    """CLI entry: run and print; returns the exit code (0 pass, 1 gate/regression, 2 harness)."""
    console = console or Console(stderr=True, highlight=False)
    opts = EvalOptions(
        suite,
        mode,
        model,
        repeat,
        concurrency,
        baseline,
        update_baseline,
        out,
        progress=console.is_terminal if progress is None else progress,
    )
    try:
        outcome = asyncio.run(run_evals(opts, console=console))
    except HarnessError as exc:
        console.print(f"[bold red]eval harness error:[/] {exc}", soft_wrap=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything unexpected is a harness error
        console.print(
            f"[bold red]eval harness error:[/] {type(exc).__name__}: {exc}", soft_wrap=True
        )
        return 2
    print_summary(outcome, console)
    return outcome.exit_code
