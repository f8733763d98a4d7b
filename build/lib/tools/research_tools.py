"""The research agent's tools as LangChain tools. Each returns text for the model plus the
structured sources as the tool artifact (`content_and_artifact`), so citations point at real
sources. Web search is only offered when TAVILY_API_KEY is set."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import BaseTool, tool
from langgraph.config import get_config

from app.settings import get_settings
from tools.knowledge import KnowledgeBaseError, get_knowledge_base, tenant_of
from tools.web import FetchError, TavilySearch, UnsafeURLError, WebSearchError, fetch_url

WEB_SEARCH_UNAVAILABLE = "web search unavailable: TAVILY_API_KEY is not set"
SNIPPET_CHARS = 1200


def _source(title: str, url: str, snippet: str, origin: str) -> dict[str, Any]:
    return {"title": title[:200], "url": url, "snippet": snippet[:SNIPPET_CHARS], "origin": origin}


def _tenant() -> str:
    try:
        return tenant_of(get_config())
    except RuntimeError:  # called outside a graph run
        return tenant_of(None)


@tool(response_format="content_and_artifact")
async def search_knowledge_base(query: str) -> tuple[str, list[dict[str, Any]]]:
    """Search the company's own documents and past approved outputs."""
    kb = get_knowledge_base()
    if kb.name == "empty":
        return "No knowledge base is configured in this process.", []
    try:
        hits = await kb.search(query, k=5, tenant=_tenant())
    except KnowledgeBaseError as exc:
        return f"Knowledge base unavailable: {exc}", []
    if not hits:
        return "No knowledge-base results.", []
    # one source per document (citations name documents); its passages joined, best first
    by_source: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    for h in hits:
        by_source.setdefault(h.source, []).append(h.text)
        titles.setdefault(h.source, h.title)
    sources = [
        _source(titles[src], src, "\n[…]\n".join(texts), "knowledge_base")
        for src, texts in by_source.items()
    ]
    return f"{len(hits)} knowledge-base passages from {len(sources)} documents.", sources


@tool(response_format="content_and_artifact")
async def fetch_url_tool(url: str) -> tuple[str, list[dict[str, Any]]]:
    """Fetch a public web page named in the task and return its text."""
    try:
        page = await fetch_url(url)
    except (UnsafeURLError, FetchError) as exc:
        return f"Could not fetch {url}: {exc}", []
    return f"Fetched {page.url} ({len(page.text)} characters).", [
        _source(page.title or page.url, page.url, page.text, "url")
    ]


fetch_url_tool.name = "fetch_url"


def make_web_search_tool(api_key: str) -> BaseTool:
    client = TavilySearch(api_key)

    @tool(response_format="content_and_artifact")
    async def web_search(query: str) -> tuple[str, list[dict[str, Any]]]:
        """Search the public web for what people say about a topic."""
        try:
            results = await client.search(query, max_results=5)
        except WebSearchError as exc:
            return f"Web search failed: {exc}", []
        sources = [_source(r.title or r.url, r.url, r.content, "web") for r in results]
        return f"{len(sources)} web results.", sources

    return web_search


def research_tools() -> tuple[list[BaseTool], list[str]]:
    """(tools offered to the model, notes for the brief)."""
    tools: list[BaseTool] = [search_knowledge_base]
    notes: list[str] = []
    key = get_settings().tavily_api_key
    if key is not None:
        tools.append(make_web_search_tool(key.get_secret_value()))
    else:
        notes.append(WEB_SEARCH_UNAVAILABLE)
    tools.append(fetch_url_tool)
    return tools, notes
