"""A deterministic chat model for tests and offline evals.

It speaks LangChain's chat-model protocol (`bind_tools`, `with_structured_output` via forced
function calling, streaming, usage metadata) and answers from the `<task>` block every prompt in
`prompts/` carries: it plans with the keyword planner, calls research tools, and writes copy from
templates that clearly say they are scripted. Every call is logged in `SCRIPTED_CALLS` so tests can
assert on exactly what a model received.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

SCRIPTED_MODEL_NAME = "scripted"
SCRIPTED_CALLS: list[dict[str, Any]] = []
_MAX_LOG = 2000


def parse_task_block(text: str) -> dict[str, str]:
    """`key: value` lines of the last `<task>...</task>` block in a prompt."""
    blocks = re.findall(r"<task>\n?(.*?)</task>", text, flags=re.S)
    fields: dict[str, str] = {}
    if not blocks:
        return fields
    key = None
    for line in blocks[-1].splitlines():
        m = re.match(r"^([a-z_]+):\s?(.*)$", line)
        if m:
            key = m.group(1)
            fields[key] = m.group(2).strip()
        elif key and line.strip():
            fields[key] += "\n" + line.strip()
    return fields


def _sources(text: str) -> list[tuple[str, str, str]]:
    return re.findall(
        r'<source id="(S\d+)" title="([^"]*)"[^>]*>\n?(.*?)</source>', text, flags=re.S
    )


def _brief_points(prompt: str) -> list[str]:
    """The key points of the research brief data block (`- point` lines)."""
    m = re.search(r'<data label="research brief">\n.*?\n(.*?)\n</data>', prompt, flags=re.S)
    if not m:
        return []
    return [ln[2:].strip() for ln in m.group(1).split("\n") if ln.startswith("- ")]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


class ScriptedChatModel(BaseChatModel):
    """Deterministic stand-in for an LLM; see the module docstring."""

    model_name: str = SCRIPTED_MODEL_NAME
    latency_s: float = (
        0.0  # simulated model latency per call (SCRIPTED_LATENCY_MS; benchmarks, demos)
    )

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    # --- generation ------------------------------------------------------------------------------

    def _respond(
        self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None
    ) -> AIMessage:
        prompt = "\n\n".join(str(m.content) for m in messages)
        task = parse_task_block(prompt)
        names = [t["function"]["name"] for t in tools or []]
        SCRIPTED_CALLS.append(
            {
                "agent": task.get("agent", ""),
                "tools": names,
                "messages": [m.model_dump() for m in messages],
            }
        )
        del SCRIPTED_CALLS[:-_MAX_LOG]
        content = ""
        tool_calls: list[dict[str, Any]] = []
        if "Plan" in names:
            tool_calls = [self._call("Plan", self._plan(task))]
        elif "BriefDraft" in names:
            tool_calls = [self._call("BriefDraft", self._brief(task, prompt))]
        elif "LongFormDraft" in names:
            # the brief's key points come from its data block, never from the task block
            points = "\n".join(f"- {p}" for p in _brief_points(prompt))
            task = {**task, "brief_points": points}
            tool_calls = [self._call("LongFormDraft", self._long_form(task))]
        elif "SocialDraft" in names:
            tool_calls = [self._call("SocialDraft", self._social(task))]
        elif names and not isinstance(messages[-1], ToolMessage):
            tool_calls = self._research_calls(task, names)
        else:
            content = self._answer(task)
        usage_in = sum(_tokens(str(m.content)) for m in messages)
        usage_out = _tokens(content + json.dumps([c["args"] for c in tool_calls]))
        return AIMessage(
            content=content,
            tool_calls=tool_calls,
            usage_metadata={
                "input_tokens": usage_in,
                "output_tokens": usage_out,
                "total_tokens": usage_in + usage_out,
            },
            response_metadata={"model_name": self.model_name},
        )

    @staticmethod
    def _call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        n = len(SCRIPTED_CALLS)
        return {"name": name, "args": args, "id": f"call_{name.lower()}_{n}", "type": "tool_call"}

    def _plan(self, task: dict[str, str]) -> dict[str, Any]:
        from graphs.heuristic_plan import heuristic_plan

        artifacts = json.loads(task.get("artifacts") or "{}")
        plan = heuristic_plan(
            task.get("request", ""),
            artifacts=artifacts,
            allowed_platforms=_csv(task.get("allowed_platforms", "")) or None,
            has_brief=task.get("has_brief") == "yes",
        )
        return plan.model_dump()

    def _research_calls(self, task: dict[str, str], names: list[str]) -> list[dict[str, Any]]:
        query = task.get("topic") or task.get("task", "")
        calls = []
        if "search_knowledge_base" in names:
            calls.append(self._call("search_knowledge_base", {"query": query}))
        if "web_search" in names:
            calls.append(self._call("web_search", {"query": query}))
        if "fetch_url" in names:
            for url in re.findall(r"https?://[^\s)>\"']+", task.get("task", ""))[:3]:
                calls.append(self._call("fetch_url", {"url": url.rstrip(".,;")}))
        return calls

    def _brief(self, task: dict[str, str], prompt: str) -> dict[str, Any]:
        topic = task.get("topic") or "the topic"
        srcs = _sources(prompt)
        if not srcs:
            return {
                "summary": f"[scripted brief] No sources were available for {topic}; the points "
                "below are working assumptions to verify.",
                "key_points": [
                    {
                        "point": f"Lead with the concrete benefit of {topic} for the audience.",
                        "source_ids": [],
                    }
                ],
            }
        points = []
        for sid, title, body in srcs[:5]:
            first = re.split(r"(?<=[.!?])\s", body.strip(), maxsplit=1)[0][:200]
            points.append({"point": f"{title}: {first}", "source_ids": [sid]})
        cited = " ".join(f"[{sid}]" for sid, _, _ in srcs[:5])
        return {
            "summary": f"[scripted brief] What sources say about {topic} {cited}.",
            "key_points": points,
        }

    def _long_form(self, task: dict[str, str]) -> dict[str, Any]:
        kind = task.get("kind", "blog").replace("_", " ")
        topic = task.get("topic") or "our product"
        brand = task.get("brand", "our brand")
        keywords = _csv(task.get("keywords", ""))
        feedback = task.get("feedback", "")
        points = [
            p.strip("- ").strip() for p in task.get("brief_points", "").split("\n") if p.strip()
        ]
        revising = bool(feedback) or bool(task.get("previous_draft"))
        paragraphs = [
            f"This {kind} is a scripted draft for {brand} about {topic}. It is written from a "
            "template so that tests and offline runs are repeatable.",
        ]
        facts = points or [f"{topic} is built for people who care about the details."]
        for i, point in enumerate(facts):
            paragraphs.append(
                f"Point {i + 1}. {point} We explain what this means for you in plain words. "
                f"You get a clear benefit, and you can check it yourself."
            )
        if keywords:
            paragraphs.append("Key terms we cover: " + ", ".join(keywords) + ".")
        target_words = {"blog": 560, "email": 160, "landing page": 300}.get(kind, 300)
        if not revising:
            target_words = int(target_words * 0.55)  # first drafts run short; revision fixes it
        filler = (
            f"Our team tested {topic} for weeks. We listened to what people said. We kept what "
            "worked and dropped what did not. The result is simple to use and easy to trust."
        )
        body = "\n\n".join(paragraphs)
        while len(body.split()) < target_words:
            body += "\n\n" + filler
        if feedback:
            body += f"\n\n(Revised for: {feedback[:160]})"
        return {"title": f"{topic}: what to know ({kind}, scripted)", "body": body}

    def _social(self, task: dict[str, str]) -> dict[str, Any]:
        platform = task.get("platform", "x")
        topic = task.get("topic") or "our product"
        brand = task.get("brand", "")
        feedback = task.get("feedback", "")
        short = "short" in feedback.lower() or "short" in task.get("task", "").lower()
        if short:
            text = f"[scripted] {topic}: out now."
        elif platform == "x":
            text = (
                f"[scripted] Meet {topic} from {brand}. Built for the long run. Try it this week."
            )
        else:
            text = (
                f"[scripted post for {platform}] We are proud to introduce {topic}. {brand} built it "
                "with the people who use it and tested it where it matters. Read the full story and "
                "tell us what you think."
            )
        tags = [
            re.sub(r"\W", "", w)
            for w in [topic.split()[0] if topic else "", *_csv(task.get("keywords", ""))][:3]
        ]
        return {"text": text, "hashtags": [t for t in tags if t]}

    def _answer(self, task: dict[str, str]) -> str:
        produced = task.get("produced", "nothing")
        scheduled = task.get("scheduled", "nothing")
        return (
            f"[scripted answer] Finished the request. Produced: {produced}. Scheduled: {scheduled}."
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            time.sleep(self.latency_s)
        msg = self._respond(messages, kwargs.get("tools"))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.latency_s:
            time.sleep(self.latency_s)
        msg = self._respond(messages, kwargs.get("tools"))
        yield from self._chunks(msg, run_manager)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        # in a worker thread: the heuristics (dateparser) block, and `langgraph dev` forbids that
        msg = await asyncio.to_thread(self._respond, messages, kwargs.get("tools"))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        msg = await asyncio.to_thread(self._respond, messages, kwargs.get("tools"))
        for chunk in self._chunks(msg, None):
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    @staticmethod
    def _chunks(
        msg: AIMessage, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        if msg.tool_calls:
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": c["name"],
                            "args": json.dumps(c["args"]),
                            "id": c["id"],
                            "index": i,
                            "type": "tool_call_chunk",
                        }
                        for i, c in enumerate(msg.tool_calls)
                    ],
                    usage_metadata=msg.usage_metadata,
                    response_metadata=msg.response_metadata,
                    chunk_position="last",
                )
            )
            return
        words = re.findall(r"\S+\s*", str(msg.content)) or [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = ChatGenerationChunk(
                message=AIMessageChunk(
                    content=word,
                    usage_metadata=msg.usage_metadata if last else None,
                    response_metadata=msg.response_metadata if last else {},
                    chunk_position="last" if last else None,
                )
            )
            if run_manager is not None:
                run_manager.on_llm_new_token(word, chunk=chunk)
            yield chunk
