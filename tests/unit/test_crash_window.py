"""A process killed after every task of a superstep saved its writes, but before the next
checkpoint: the thread's `next` is empty (LangGraph leaves out tasks that have writes), yet the
run is not over. Recovery must look at the tasks, not at `next`."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph

from app.server.executor import thread_status_of


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


class DiesOnPut(InMemorySaver):
    def __init__(self, die_at: int) -> None:
        super().__init__()
        self.puts = 0
        self.die_at = die_at

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.puts += 1
        if self.puts == self.die_at:
            raise Killed
        return super().put(*args, **kwargs)


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def graph(saver: InMemorySaver) -> Any:
    g = StateGraph(State)
    g.add_node("write", lambda s: {"log": ["write"]})
    g.add_node("publish", lambda s: {"log": ["publish"]})
    g.add_edge(START, "write")
    g.add_edge("write", "publish")
    g.add_edge("publish", END)
    return g.compile(checkpointer=saver)


def test_a_thread_killed_between_a_tasks_writes_and_the_next_checkpoint_is_not_finished() -> None:
    saver = DiesOnPut(die_at=3)  # input, step 0 (write runs), then the kill before step 1
    app = graph(saver)
    config = {"configurable": {"thread_id": "t"}}
    with pytest.raises(Killed):
        app.invoke({"log": []}, config, durability="sync")
    snap = app.get_state(config)
    assert snap.next == ()  # `write` has saved its writes: LangGraph does not list it
    assert [t.name for t in snap.tasks] == ["write"] and snap.tasks[0].result == {"log": ["write"]}
    assert thread_status_of(snap) != "idle"  # more to do: resumable, not finished

    saver.die_at = 0
    app.invoke(None, config, durability="sync")  # continuing runs what is left
    done = app.get_state(config)
    assert done.values["log"] == ["write", "publish"] and not done.tasks
    assert thread_status_of(done) == "idle"
