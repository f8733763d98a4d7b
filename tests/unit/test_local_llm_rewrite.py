"""The llama.cpp compatibility shim's request rewriting (a pure function; no server needed)."""

from __future__ import annotations

from app.local_llm import rewrite_chat_request


def test_token_limit_and_null_content_and_forced_tool() -> None:
    out = rewrite_chat_request(
        {
            "max_completion_tokens": 50,
            "messages": [{"role": "assistant", "content": None, "tool_calls": []}],
            "tools": [{"type": "function", "function": {"name": "Plan"}}],
            "tool_choice": "required",
        },
        default_max_tokens=1024,
    )
    assert out["max_tokens"] == 50 and "max_completion_tokens" not in out
    assert out["messages"][0]["content"] == ""
    assert out["tool_choice"] == {"type": "function", "function": {"name": "Plan"}}
    assert rewrite_chat_request({"messages": []}, default_max_tokens=1024)["max_tokens"] == 1024


def test_json_schema_structured_output_becomes_schema_constrained_json_mode() -> None:
    schema = {"type": "object", "properties": {"score": {"type": "number"}}}
    out = rewrite_chat_request(
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": schema},
            }
        },
        default_max_tokens=10,
    )
    assert out["response_format"] == {"type": "json_object", "schema": schema}
    plain = rewrite_chat_request({"response_format": {"type": "text"}}, default_max_tokens=10)
    assert plain["response_format"] == {"type": "text"}
