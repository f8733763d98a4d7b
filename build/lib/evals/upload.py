"""Optional LangSmith upload: only when LANGSMITH_API_KEY is set; best effort (a failure is a
warning in the summary, never a failed eval)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from evals.types import SuiteResult


def langsmith_enabled() -> bool:
    return bool(os.environ.get("LANGSMITH_API_KEY"))


def upload(summary: dict[str, Any], suites: list[SuiteResult]) -> str:
    """One run per case in project `mkt-evals-<mode>`, scores as feedback. Returns a status line."""
    if not langsmith_enabled():
        return "skipped: LANGSMITH_API_KEY not set"
    try:
        from langsmith import Client

        client = Client()
        project = f"mkt-evals-{summary['mode']}"
        for suite in suites:
            for case in suite.cases:
                run_id = uuid.uuid4()
                client.create_run(
                    name=f"{suite.name}/{case.name}",
                    run_type="chain",
                    id=run_id,
                    project_name=project,
                    inputs={"case": case.case_id, "detail": case.detail},
                    outputs={
                        "passed": case.passed,
                        "failures": case.failures,
                        "trajectory": case.trajectory,
                    },
                    extra={
                        "metadata": {
                            "git_revision": summary["git_revision"],
                            "model": summary["model"],
                        }
                    },
                )
                for key, score in case.scores.items():
                    client.create_feedback(run_id, key=key, score=score)
        return f"uploaded to LangSmith project {project}"
    except Exception as exc:  # noqa: BLE001 - upload is best effort
        return f"LangSmith upload failed: {type(exc).__name__}: {exc}"[:300]
