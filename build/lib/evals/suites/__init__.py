"""The evaluation suites. Each has `name`, `load()`, `skip_reason(env)`, `run_case(case, env)`
and `aggregate(results, env)`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from app.runner import Runner
from evals.config import EvalConfig
from evals.types import CaseResult


@dataclass
class SuiteEnv:
    runner: Runner
    config: EvalConfig
    judges: dict[str, Any] = field(default_factory=dict)  # live only: name -> evaluator
    knowledge_base: Any = None


class Suite(Protocol):
    name: str

    def load(self) -> list[Any]: ...

    def skip_reason(self, env: SuiteEnv) -> str | None: ...

    async def run_case(self, case: Any, env: SuiteEnv) -> CaseResult: ...

    def aggregate(
        self, results: list[CaseResult], env: SuiteEnv
    ) -> tuple[dict[str, float], dict[str, str]]: ...


class DatasetSuite:
    """Base for suites whose cases are the JSONL file `datasets/<name>.jsonl` of `case_type`."""

    name: str = ""
    case_type: type[Any]

    def load(self) -> list[Any]:
        from evals.datasets import dataset

        return list(dataset(self.name, self.case_type))

    def skip_reason(self, env: SuiteEnv) -> str | None:
        return None


def all_suites() -> dict[str, Suite]:
    from evals.suites.content import ContentSuite
    from evals.suites.retrieval import RetrievalSuite
    from evals.suites.routing import RoutingSuite
    from evals.suites.trajectory import TrajectorySuite

    suites: list[Suite] = [RoutingSuite(), TrajectorySuite(), ContentSuite(), RetrievalSuite()]
    return {s.name: s for s in suites}
