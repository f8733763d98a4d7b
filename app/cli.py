"""`mkt` — the command line: chat with the marketing team, list threads and the outbox, migrate."""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table

from app.bootstrap import apply_provider_override, open_runner
from app.db import StorageNotMigratedError, utcnow
from app.errors import AppError
from app.models import ModelConfigError
from app.runner import Runner
from app.settings import Settings, get_settings, settings_error
from tools.knowledge import get_knowledge_base

app = typer.Typer(
    help="Hierarchical marketing agents: a supervisor plans and delegates to research, content, "
    "social and publishing sub-agents; nothing is published without your approval.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
kb_app = typer.Typer(
    help="The knowledge base (Qdrant): ingest company documents, search them and the remembered "
    "past outputs, show stats, rebuild after an embedding change. Embedded Qdrant in DATA_DIR/qdrant "
    "by default (one process at a time: stop `mkt serve` first), a server with QDRANT_URL.",
    no_args_is_help=True,
)
app.add_typer(kb_app, name="kb")
keys_app = typer.Typer(
    help="API keys for the HTTP server (mkt serve): create, list, revoke. Roles: viewer reads; "
    "editor also starts runs and answers approvals; admin also manages keys. Without any key "
    "the server runs open, and only on loopback.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ProviderOpt = Annotated[
    str | None,
    typer.Option(
        "--provider",
        help="Model provider for this run: openai | local | scripted | auto (overrides MODEL_PROVIDER).",
    ),
]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except (AppError, ModelConfigError, StorageNotMigratedError) as exc:
        _fail(str(exc))
    return None


def _settings(provider: str | None = None) -> Settings:
    """The process settings (`--provider` applied); a setting the environment or `.env` gets
    wrong is an error naming the variable (exit code 2), not a traceback (`settings_error`)."""
    try:
        return apply_provider_override(provider)
    except ValidationError as exc:
        message = settings_error(exc)
        if message is None:
            raise
        if provider:
            message += f" (--provider {provider!r} sets MODEL_PROVIDER)"
        _fail(message)
        raise  # (not reached: _fail exits)


def _db_unreachable(exc: BaseException) -> str:
    return (
        f"cannot open the database ({exc}): check DATABASE_URL and that the database is running "
        "(on SQLite: that DATA_DIR is writable)"
    )


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------


def _build_context(
    brand: str | None,
    voice: str | None,
    audience: str | None,
    platforms: list[str] | None,
    banned: list[str] | None,
    keywords: list[str] | None,
    timezone: str | None,
    context_file: Path | None,
) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    if context_file is not None:
        try:
            loaded = json.loads(context_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            _fail(f"cannot read context file {context_file}: {exc}")
        if not isinstance(loaded, dict):
            _fail(f"context file {context_file} must hold a JSON object")
        ctx.update(loaded)
    for key, value in (
        ("brand_name", brand),
        ("brand_voice", voice),
        ("audience", audience),
        ("platforms", platforms),
        ("banned_terms", banned),
        ("keywords", keywords),
        ("timezone", timezone),
    ):
        if value:
            ctx[key] = value
    return ctx


class ChatView:
    """Renders runner events for people (Rich) or machines (--json lines)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.streaming = False
        self.streamed = False  # this run streamed the answer's first line as tokens
        self.announced: set[str] = set()
        self.thread_id: str | None = None

    def emit(self, event: dict[str, Any]) -> None:
        if event["type"] == "run":
            self.thread_id = event["thread_id"]
            self.streamed = False
        if self.as_json:
            print(json.dumps(event, default=str), flush=True)
            return
        kind = event["type"]
        if kind == "plan":
            if event["action"] == "execute":
                steps = ", ".join(
                    f"{s['id']}({s['agent']}"
                    + (f" after {'+'.join(s['depends_on'])}" if s["depends_on"] else "")
                    + ")"
                    for s in event["steps"]
                )
                console.print(
                    f"[bold]plan[/] {steps}"
                    + (f" · publish at {event['publish_at']}" if event.get("publish_at") else "")
                )
            for note in event.get("notes") or []:
                console.print(f"[yellow]note[/] {note}")
        elif kind == "agent_start":
            if event["step"] in self.announced:  # a node re-entered after an approval
                return
            self.announced.add(event["step"])
            console.print(
                f"[cyan]▶ {event['agent']}[/] [dim]{event['step']}[/] {event['task'][:100]}"
            )
        elif kind == "agent_done":
            mark = {"done": "[green]✓", "failed": "[red]✗", "needs_revision": "[yellow]↻"}[
                event["status"]
            ]
            console.print(f"{mark} {event['agent']}[/] [dim]{event['step']}[/] {event['summary']}")
        elif kind == "resumed":
            console.print(
                f"[yellow]resuming[/] thread {event['thread_id']} from its last checkpoint (next: {', '.join(event['next'])})"
            )
        elif kind == "token":
            if not self.streaming:
                console.print("[bold]answer[/] ", end="")
                self.streaming = self.streamed = True
            console.print(event["text"], end="", soft_wrap=True)
        elif kind == "final":
            if self.streaming:
                console.print()
                self.streaming = False
            text = event["text"]
            if not self.streamed:  # e.g. a clarifying question: nothing was streamed
                console.print("[bold]answer[/]")
                details = text
            else:
                details = text.split("\n", 1)[1] if "\n" in text else ""
            if details.strip():
                console.print(Markdown(details.strip()))
        elif kind == "usage" and event["usage"]:
            total_in = sum(u["input_tokens"] for u in event["usage"].values())
            total_out = sum(u["output_tokens"] for u in event["usage"].values())
            cost = sum(u["cost_usd"] for u in event["usage"].values())
            per = ", ".join(
                f"{a} {u['input_tokens'] + u['output_tokens']}" for a, u in event["usage"].items()
            )
            console.print(f"[dim]tokens in {total_in} / out {total_out} (${cost:.4f}) — {per}[/]")


def _ask_approval(request: dict[str, Any]) -> dict[str, Any]:
    args = request["action_request"]["args"]
    console.print(
        Panel(
            Markdown(request["description"]),
            title=f"approval: {args['artifact_id']} → {args['channel']}",
        )
    )
    while True:
        choice = (
            typer.prompt("[a]ccept / [e]dit / [r]espond with feedback / [i]gnore", default="a")
            .strip()
            .lower()
        )
        if choice in ("a", "accept"):
            return {"type": "accept"}
        if choice in ("i", "ignore"):
            return {"type": "ignore"}
        if choice in ("r", "respond"):
            feedback = typer.prompt("feedback for the writer").strip()
            if feedback:
                return {"type": "respond", "args": feedback}
        if choice in ("e", "edit"):
            edited = click.edit(args["body"]) if sys.stdin.isatty() else None
            if edited is None:
                edited = typer.prompt("new text (one line)")
            if edited.strip():
                return {"type": "edit", "args": {**args, "body": edited.strip()}}
        console.print("[yellow]please answer a, e, r or i[/]")


async def _chat(
    runner: Runner,
    request: str | None,
    thread_id: str | None,
    ctx: dict[str, Any],
    auto_approve: bool,
    resume_value: Any,
    view: ChatView,
) -> str:
    info = runner.factory.info()
    kb = getattr(get_knowledge_base(), "description", "none")
    if not view.as_json:
        console.print(
            f"[dim]model: {info.describe()} · storage: {runner.storage.description} · "
            f"knowledge base: {kb}[/]"
        )
    else:
        view.emit(
            {
                "type": "info",
                "provider": info.provider,
                "model": info.model,
                "storage": runner.storage.description,
                "knowledge_base": kb,
            }
        )
    events: AsyncIterator[dict[str, Any]] | None = None
    todo = (request or "").strip() or None  # a new turn still to send
    if thread_id:
        current = await runner.view(thread_id)
        if resume_value is not None:
            events = runner.resume(thread_id, resume_value, ctx)
        elif current.status == "unfinished":
            async for event in runner.continue_unfinished(thread_id, ctx):
                view.emit(event)
            if todo == (await runner.view(thread_id)).last_request:
                todo = None  # the interrupted run was this very request: it is done now
        elif current.status == "idle" and todo and todo == current.last_request:
            view.emit({"type": "final", "text": str(current.values["messages"][-1].content)})
            if not view.as_json:
                console.print(f"[yellow]thread {thread_id} already answered this request[/]")
            todo = None
        elif current.status == "interrupted" and todo == current.last_request:
            todo = None  # the same command again: answer the pending approvals of that request
    while True:
        pending = None
        if events is not None:
            async for event in events:
                if event["type"] == "run":
                    thread_id = event["thread_id"]
                if event["type"] == "approval":
                    pending = event
                view.emit(event)
            events = None
        state = await runner.view(thread_id) if thread_id else None
        if state is None or state.status != "interrupted":
            if todo:  # a new turn, once earlier approvals are answered
                events, todo = runner.send(thread_id, todo, ctx), None
                continue
            return thread_id or ""
        tid = state.thread_id
        request_value = state.interrupts[0]["value"][0]
        if pending is None:
            view.emit(
                {
                    "type": "approval",
                    "interrupt_id": state.interrupts[0]["id"],
                    "request": request_value,
                }
            )
        if auto_approve:
            answer: Any = {"type": "accept"}
            if not view.as_json:
                console.print(
                    f"[green]auto-approved[/] {request_value['action_request']['args']['artifact_id']}"
                )
        elif view.as_json or not sys.stdin.isatty():
            if not view.as_json:
                console.print(
                    f"approval pending: answer with mkt chat --thread {tid} "
                    "(or --resume JSON, --auto-approve)"
                )
            if todo:
                err.print(f"[yellow]not sent yet[/] (answer the approval first): {todo}")
            return tid
        else:
            answer = _ask_approval(request_value)
        events = runner.resume(tid, answer, ctx)


@app.command()
def chat(
    request: Annotated[
        str | None, typer.Argument(help="What the team should do. Omit with --thread to continue.")
    ] = None,
    thread: Annotated[
        str | None,
        typer.Option(
            "--thread", "-t", help="Continue this thread (also resumes after Ctrl-C or a crash)."
        ),
    ] = None,
    auto_approve: Annotated[
        bool,
        typer.Option(
            "--auto-approve", help="Accept every approval request (for scripts and demos)."
        ),
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help='Answer the pending approval with JSON, e.g. \'{"type": "accept"}\'.'
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON events, one per line.")
    ] = False,
    provider: ProviderOpt = None,
    brand: Annotated[str | None, typer.Option(help="Brand name.")] = None,
    voice: Annotated[str | None, typer.Option(help="Brand voice.")] = None,
    audience: Annotated[str | None, typer.Option(help="Target audience.")] = None,
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform", "-p", help="Allowed platform (repeat): x, linkedin, instagram, facebook."
        ),
    ] = None,
    banned: Annotated[
        list[str] | None, typer.Option("--banned", help="Banned term (repeat).")
    ] = None,
    keyword: Annotated[
        list[str] | None, typer.Option("--keyword", help="Keyword the copy should cover (repeat).")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone for times like 'Tuesday 9am'.")
    ] = None,
    context_file: Annotated[
        Path | None,
        typer.Option("--context", help="JSON file with run context (brand_name, platforms, ...)."),
    ] = None,
) -> None:
    """Send a request to the marketing team and follow it live.

    Examples:\n
      mkt chat "Write a launch blog post and LinkedIn + X posts for our TerraRun shoe, publish Tuesday 9am"\n
      mkt chat --thread <ID> "make the X post shorter"\n
      mkt chat --thread <ID>            # continue after Ctrl-C / a crash, or answer a pending approval
    """
    if not thread and not (request or "").strip():
        _fail("the request is empty: say what the team should do, or give --thread ID to continue")
    settings = _settings(provider)
    ctx = _build_context(brand, voice, audience, platform, banned, keyword, timezone, context_file)
    resume_value = None
    if resume is not None:
        try:
            resume_value = json.loads(resume)
        except json.JSONDecodeError as exc:
            _fail(f"--resume is not valid JSON: {exc}")
    view = ChatView(as_json)

    async def main() -> str:
        async with open_runner(settings, eager_knowledge_base=True) as runner:
            if (
                settings.model_provider != "scripted"
                and runner.factory.provider == "local"
                and not as_json
            ):
                with console.status("starting the local model (llama.cpp, SmolLM2-135M)…"):
                    runner.factory.ensure_ready()
            else:
                runner.factory.ensure_ready()
            return await _chat(runner, request, thread, ctx, auto_approve, resume_value, view)

    try:
        thread_id = _run(main())
    except KeyboardInterrupt:
        err.print(
            "\n[yellow]stopped.[/] The last checkpoint is saved; continue with: "
            f"mkt chat --thread {view.thread_id or thread or '<ID>'}",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    if thread_id and not as_json:
        console.print(f"[bold]thread[/] {thread_id}")


# ---------------------------------------------------------------------------------------------
# threads, outbox, db
# ---------------------------------------------------------------------------------------------


@app.command()
def threads(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List threads with their status (idle, busy, interrupted, error)."""

    async def main() -> list[dict[str, Any]]:
        async with open_runner(knowledge_base=False) as runner:
            return await runner.storage.db.list_threads(limit)

    rows = _run(main()) or []
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("thread", "status", "updated", "title")
    for r in rows:
        table.add_row(r["thread_id"], r["status"], r["updated_at"], r["title"][:60])
    console.print(table)


@app.command()
def outbox(
    thread: Annotated[str | None, typer.Option("--thread", help="Only this thread.")] = None,
    status: Annotated[
        str | None, typer.Option(help="scheduled | publishing | published | superseded")
    ] = None,
    publish_due: Annotated[
        bool, typer.Option("--publish-due", help="Publish (dry-run) every item that is due now.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List scheduled and published items; --publish-due runs the dry-run publisher."""
    from tools.publishers import DryRunPublisher

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with open_runner(knowledge_base=False) as runner:
            published: list[dict[str, Any]] = []
            if publish_due:
                published = await DryRunPublisher(runner.storage.db).publish_due(utcnow())
            rows = await runner.storage.db.list_outbox(thread_id=thread, status=status)
            return rows, published

    rows, published = _run(main()) or ([], [])
    if as_json:
        print(json.dumps({"items": rows, "published_now": published}))
        return
    if publish_due:
        console.print(f"published {len(published)} due item(s) (dry run)")
    table = Table("id", "thread", "channel", "artifact", "scheduled (UTC)", "status")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["thread_id"][:8],
            r["platform"],
            f"{r['artifact_id']} v{r['version']}",
            r["scheduled_at"],
            r["status"],
        )
    console.print(table)


@app.command("eval")
def eval_(
    suite: Annotated[
        str, typer.Option(help="routing | trajectory | content | retrieval | all")
    ] = "all",
    mode: Annotated[
        str,
        typer.Option(
            help="auto | offline | live (auto: live when an OpenAI-compatible model is configured)"
        ),
    ] = "auto",
    model: Annotated[
        str | None, typer.Option(help="Model name for live runs (overrides MODEL_NAME).")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Run every case N times.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Cases run in parallel.")] = 4,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline file (default evals/baselines/<mode>.json).")
    ] = None,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="Write the baseline when all gates pass.")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Report directory (default eval-out/).")] = None,
) -> None:
    """Run the evaluation suites.

    Exit 0 when every gate passes, 1 when a gate or a regression failed, 2 for a harness error.
    """
    from evals.runner import main as run_eval

    if mode not in ("auto", "offline", "live"):
        _fail(f"unknown mode {mode!r}; use auto, offline or live")
    code = run_eval(suite, mode, model, repeat, concurrency, baseline, update_baseline, out)  # type: ignore[arg-type]
    raise typer.Exit(code)


# ---------------------------------------------------------------------------------------------
# knowledge base and feedback
# ---------------------------------------------------------------------------------------------


def _open_kb() -> Any:
    """The configured knowledge base, opened now (a held lock or a bad server fails here)."""
    from tools.qdrant_kb import QdrantKnowledgeBase

    kb = QdrantKnowledgeBase(get_settings())
    try:
        kb.open()
    except AppError as exc:
        _fail(str(exc))
    return kb


@kb_app.command("ingest")
def kb_ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files and folders (walked recursively).", show_default=False),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ingest .md .txt .html .pdf .docx .csv files into the `documents` collection.

    Files are chunked along headings and paragraphs with overlap. Unchanged files are skipped,
    changed files replace their old chunks, unreadable or unsupported files are reported and
    skipped (never half-written).\n
    Example: mkt kb ingest docs/ brand-guide.pdf
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tools.ingest import IngestPathError, discover, ingest_paths
    from tools.qdrant_kb import LOCAL_MODE_ADVISED_MAX_POINTS

    s = get_settings()
    try:
        total = len(list(discover(paths)))
    except IngestPathError as exc:
        _fail(f"{exc}; give existing files or folders")
    kb = _open_kb()
    started = time.perf_counter()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("· {task.fields[chunks]} chunks"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json,
    )
    try:
        with progress:
            task = progress.add_task("ingesting", total=total, chunks=0)
            chunks = 0

            def on_file(path: Path, n: int, _total: int) -> None:
                progress.update(task, completed=n - 1, description=f"{path.name[:40]:<40}")

            def on_chunks(n: int) -> None:
                nonlocal chunks
                chunks += n
                progress.update(task, chunks=chunks)

            summary = ingest_paths(
                kb,
                paths,
                chunk_chars=s.kb_chunk_chars,
                overlap=s.kb_chunk_overlap,
                on_file=on_file,
                on_chunks=on_chunks,
            )
            progress.update(task, completed=total)
        total_points = kb.stats()[0].points
    except AppError as exc:
        _fail(str(exc))
    finally:
        kb.close()
    elapsed = time.perf_counter() - started
    if as_json:
        print(json.dumps({**summary.as_dict(), "seconds": round(elapsed, 2)}))
        return
    console.print(
        f"[bold]{len(summary.files)} file(s)[/]: [green]{summary.count('added')} added[/], "
        f"{summary.count('updated')} updated, {summary.count('unchanged')} unchanged, "
        f"[yellow]{len(summary.skipped)} skipped[/] · {summary.chunks_written} chunks written "
        f"in {elapsed:.1f}s · {kb.description}"
    )
    for f in summary.skipped:
        console.print(f"[yellow]skipped[/] {f.path}: {f.reason}", soft_wrap=True)
    if kb.local and total_points > LOCAL_MODE_ADVISED_MAX_POINTS:
        console.print(
            f"[yellow]note[/] {total_points:,} chunks in the embedded store: above "
            f"{LOCAL_MODE_ADVISED_MAX_POINTS:,} a Qdrant server (QDRANT_URL) searches and ingests "
            "much faster (see bench/README.md)",
            soft_wrap=True,
        )


@kb_app.command("search")
def kb_search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: Annotated[
        str, typer.Option(help="documents | past_outputs | all (both, merged).")
    ] = "documents",
    k: Annotated[int, typer.Option("-k", min=1, max=50, help="How many hits.")] = 5,
    brand: Annotated[str | None, typer.Option(help="Past outputs of this brand only.")] = None,
    mode: Annotated[
        str | None, typer.Option(help="auto | hybrid | dense (default: KB_SEARCH_MODE).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON.")] = False,
) -> None:
    """Search the knowledge base and show hits with scores and sources.

    Example: mkt kb search "TR-2 GTX price" --collection all
    """
    from tools.qdrant_kb import COLLECTIONS

    if collection not in (*COLLECTIONS, "all"):
        _fail(f"unknown collection {collection!r}; use documents, past_outputs or all")
    if mode not in (None, "auto", "hybrid", "dense"):
        _fail(f"unknown mode {mode!r}; use auto, hybrid or dense")
    if not query.strip():
        _fail("the query is empty")
    kb = _open_kb()
    names = COLLECTIONS if collection == "all" else (collection,)
    try:
        hits = _run(kb.search(query, k=k, brand=brand, collections=names, mode=mode)) or []
    finally:
        kb.close()
    if as_json:
        print(json.dumps([h.model_dump() for h in hits]))
        return
    if not hits:
        console.print("no hits (ingest documents with `mkt kb ingest PATH`)")
        return
    table = Table("#", "score", "collection", show_lines=True)
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("text", ratio=3)
    for n, h in enumerate(hits, start=1):
        where = _short_path(h.source) + (f"\n[dim]{h.section}[/]" if h.section else "")
        table.add_row(str(n), f"{h.score:.3f}", h.collection, where, h.text[:300])
    console.print(table)


def _short_path(source: str) -> str:
    """A source path relative to the working directory when it is under it."""
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


@kb_app.command("stats")
def kb_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Points per collection, the embedding each was built with, and ingested sources."""
    kb = _open_kb()
    try:
        stats = kb.stats()
        sources = kb.source_counts()
        modes = {c.name: kb.resolved_mode(c.name) for c in stats}
    except AppError as exc:
        _fail(str(exc))
    finally:
        kb.close()
    if as_json:
        print(
            json.dumps(
                {
                    "store": kb.description,
                    "search_mode": kb.search_mode,
                    "resolved_modes": modes,
                    "collections": [c.__dict__ for c in stats],
                    "sources": sources,
                }
            )
        )
        return
    table = Table("collection", "physical", "points", "embedding", "dim", "sparse")
    for c in stats:
        table.add_row(
            c.name,
            c.physical,
            str(c.points),
            c.embedding_model,
            str(c.embedding_dim),
            c.sparse_encoder,
        )
    console.print(table)
    console.print(
        f"{len(sources)} ingested source(s) · search mode {kb.search_mode} ("
        + ", ".join(f"{name}: {mode}" for name, mode in modes.items())
        + f") · {kb.description}"
    )


@kb_app.command("reindex")
def kb_reindex() -> None:
    """Rebuild both collections with the configured embedding model (after changing
    EMBEDDING_PROVIDER / EMBEDDING_MODEL). Searches keep using the old index until the new one is
    complete; the switch is atomic."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tools.qdrant_kb import QdrantKnowledgeBase

    kb = QdrantKnowledgeBase(get_settings())
    progress = Progress(
        TextColumn("{task.description:<13}"), BarColumn(), MofNCompleteColumn(), console=err
    )
    tasks: dict[str, Any] = {}

    def on_progress(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total)
        progress.update(tasks[name], completed=done)

    try:
        with progress:
            done = kb.reindex(progress=on_progress)
    except AppError as exc:
        _fail(str(exc))
    finally:
        kb.close()
    console.print(
        "reindexed "
        + ", ".join(f"{name} ({n} points)" for name, n in done.items())
        + f" with {kb.embedder.name} ({kb.embedder.dim} dimensions)"
    )


@app.command()
def feedback(
    thread_id: Annotated[str, typer.Argument(help="The thread whose outputs you rate.")],
    rating: Annotated[
        int,
        typer.Option("--rating", "-r", min=1, max=5, help="1-5: 4-5 = successful, 1-2 = rejected."),
    ],
    comment: Annotated[str | None, typer.Option(help="Why (kept with the outputs).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rate a thread's outputs. 4-5 marks them successful: the writing agents see them as
    examples next time for the same brand and platform. 1-2 marks them rejected: never shown.

    Example: mkt feedback 3f2c… --rating 5 --comment "great hook"
    """
    from app.feedback import rate_thread

    async def main() -> list[Any]:
        from tools.knowledge import get_knowledge_base
        from tools.qdrant_kb import QdrantKnowledgeBase

        async with open_runner(eager_knowledge_base=True) as runner:
            kb = get_knowledge_base()
            assert isinstance(kb, QdrantKnowledgeBase)  # installed by open_runner
            return await rate_thread(runner, kb, thread_id, rating, comment)

    rated = _run(main()) or []
    if as_json:
        print(json.dumps([o.model_dump() for o in rated]))
        return
    table = Table("output", "version", "status", "rating", "used as example")
    for o in rated:
        where = f"{o.artifact_id}" + (f" ({o.platform})" if o.platform else "")
        table.add_row(
            where, str(o.version), o.status, str(o.rating), "yes" if o.successful else "no"
        )
    console.print(table)


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def _check_bind(host: str, port: int) -> None:
    """Refuse (exit code 2) a port already in use or a host this machine cannot bind, as uvicorn
    would once the whole start-up had run (it exits with code 3)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        _fail(f"cannot bind to {host}: {exc}; pass --host with an address of this machine")
    # every address of the host, as uvicorn's server (asyncio's create_server) binds them
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    _fail(
                        f"port {port} on {host} is already in use (another `mkt serve` or "
                        f"`langgraph dev`?): stop it or choose another with --port"
                    )
                _fail(f"cannot bind to {host}:{port}: {exc.strerror or exc}")


def _check_embedded_store(settings: Settings, wait_s: float) -> None:
    """Refuse (exit code 2) when the embedded knowledge base this server's runs need is still
    held by another process after `wait_s` (what a worker of this server waits: a worker of a
    stopped server may be finishing its runs). Its start-up would fail with a traceback (exit
    code 3), after loading the whole store (qdrant-client takes the folder lock after that)."""
    from app.knowledge import wait_for_embedded_store
    from tools.knowledge import KnowledgeBaseLockedError

    if not wait_for_embedded_store(settings, wait_s, lambda m: err.print(m, soft_wrap=True)):
        _fail(str(KnowledgeBaseLockedError.at(settings.qdrant_path)))


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Bind address. Without API keys only loopback is allowed.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 2024,
    provider: ProviderOpt = None,
    log_level: Annotated[
        str,
        typer.Option(help=f"uvicorn log level: {', '.join(LOG_LEVELS)}.", callback=_log_level),
    ] = "info",
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="Worker processes that execute runs, started and restarted by the server "
            "(0: runs execute in the server process). Default: SERVE_WORKERS, else on Postgres "
            "one per CPU but one (1 to 4), on SQLite 0.",
        ),
    ] = None,
) -> None:
    """Serve the agents over HTTP: the LangGraph Server API (use `langgraph-sdk` or LangGraph
    Studio) and a plain SSE chat endpoint. Graphs come from langgraph.json.

    Examples:\n
      mkt serve                      # http://127.0.0.1:2024, docs at /docs\n
      DATABASE_URL=postgresql://... mkt db migrate && mkt serve --port 8123 --workers 2
    """
    import psycopg
    import psycopg_pool
    import uvicorn

    from app.server.app import EmbeddedStoreError, check_workers_and_store, create_app, worker_count
    from app.server.auth import InsecureBindError, startup_check
    from app.storage import open_storage

    settings = _settings(provider)

    async def preflight() -> str:
        async with open_storage(settings) as storage:
            return await startup_check(storage.db, host)

    try:
        n_workers = worker_count(settings, workers)
        check_workers_and_store(settings, n_workers)
        # the process that opens it: this one (no wait), or a worker (it waits, as here)
        _check_embedded_store(settings, settings.shutdown_grace_s + 10 if n_workers else 0.0)
        _run(preflight())  # refuse early, with exit code 2, what the server would refuse
    except (InsecureBindError, EmbeddedStoreError) as exc:
        _fail(str(exc))
    except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
        _fail(_db_unreachable(exc))
    _check_bind(host, port)  # before the start-up (workers, knowledge base) a busy port would waste
    uvicorn.run(
        create_app(settings, host=host, workers=workers, freeze_heap=True),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        # uvicorn's default (5 s) equals httpx's keep-alive expiry: a request sent on a pooled
        # connection just as the server closes it fails with a ReadError (seen at 100 streams)
        timeout_keep_alive=settings.http_keep_alive_s,
    )


@app.command()
def worker(
    provider: ProviderOpt = None,
    parent_pid: Annotated[int | None, typer.Option(hidden=True)] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve this worker's Prometheus series at /metrics on this port (0: a free "
            "one). Workers started by `mkt serve` need none: the server's /metrics has theirs.",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Bind address of --metrics-port (no authentication there).")
    ] = "127.0.0.1",
) -> None:
    """Execute queued runs without serving HTTP: claim runs from the database queue, run them
    with heartbeats, take over runs of stopped workers, and on SIGTERM finish or release the
    active ones. `mkt serve --workers N` starts these itself; start more on other machines
    against the same Postgres database to scale out (WORKER_CONCURRENCY runs each).

    Example:\n
      DATABASE_URL=postgresql://... mkt worker --metrics-port 9464
    """
    import psycopg
    import psycopg_pool

    from app.server.metrics import MetricsPortError
    from app.server.registry import GraphConfigError
    from app.server.worker import run_worker

    settings = _settings(provider)
    try:
        code = _run(
            run_worker(
                settings,
                parent_pid=parent_pid,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
            )
        )
    except (GraphConfigError, MetricsPortError) as exc:
        _fail(str(exc))
    except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
        _fail(f"cannot reach the database ({exc}): check DATABASE_URL and that it is running")
    raise typer.Exit(code or 0)


@db_app.command("migrate")
def db_migrate() -> None:
    """Create or upgrade the checkpoint and app tables (needed once for Postgres)."""
    from app.storage import migrate

    where = _run(migrate())
    console.print(f"migrated {where}")


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------


def _with_db(action: Any) -> Any:
    """`action(db)` on the app database; an unreachable one is an error naming the fix."""
    import psycopg
    import psycopg_pool

    from app.storage import open_storage

    settings = _settings()

    async def main() -> Any:
        async with open_storage(settings) as storage:
            return await action(storage.db)

    try:
        return _run(main())
    except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
        _fail(_db_unreachable(exc))


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer | editor | admin")],
    tenant: Annotated[
        str, typer.Option(help="Tenant the key acts for (lowercase letters, digits, . _ -).")
    ],
    name: Annotated[str, typer.Option(help="A label for people, e.g. who holds the key.")] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an API key and print it once (only its hash is stored: it cannot be shown again).

    Example:\n
      mkt keys create --role admin --tenant acme --name "ops laptop"
    """
    from app.apikeys import create_key

    key, token = _with_db(lambda db: create_key(db, role=role, tenant=tenant, name=name))
    if as_json:
        print(json.dumps({**key.public(), "key": token}))
        return
    console.print(
        f"created key [bold]{key.key_id}[/] ({key.role}, tenant {key.tenant}"
        + (f", {key.name!r}" if key.name else "")
        + ")"
    )
    console.print("store it now, it is not shown again:")
    console.print(token, soft_wrap=True, markup=False)
    console.print(
        "[dim]send it as the x-api-key header or 'Authorization: Bearer <key>'; "
        'langgraph-sdk: get_client(url=..., api_key="<key>")[/]'
    )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Hide revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List API keys (ids, names, roles, tenants, use; never the keys themselves)."""
    from app.apikeys import list_keys

    keys = _with_db(lambda db: list_keys(db, tenant=tenant, include_revoked=not active))
    if as_json:
        print(json.dumps([k.public() for k in keys]))
        return
    if not keys and (tenant is not None or active):  # other keys may exist: not open mode
        console.print(
            "no "
            + ("active " if active else "")
            + "API keys"
            + (f" of tenant {tenant!r}" if tenant is not None else "")
            + ". Create one with mkt keys create --role admin --tenant NAME",
            soft_wrap=True,
        )
        return
    if not keys:
        console.print(
            "no API keys: the server runs open (loopback only). Create one with "
            "mkt keys create --role admin --tenant NAME",
            soft_wrap=True,
        )
        return
    table = Table("key id", "name", "role", "tenant", "created (UTC)", "last used", "revoked")
    for k in keys:
        table.add_row(
            k.key_id,
            k.name,
            k.role,
            k.tenant,
            k.created_at,
            k.last_used_at or "never",
            k.revoked_at or "",
            style="dim" if k.revoked_at else None,
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `mkt keys list`.")],
) -> None:
    """Revoke an API key (its id, or the key itself). Running servers stop accepting it within
    API_KEY_CACHE_S seconds."""
    from app.apikeys import key_id_of, revoke_key

    key_id = key_id_of(key_id) or key_id  # a key pasted whole: its id (the secret is not echoed)
    key = _with_db(lambda db: revoke_key(db, key_id))
    console.print(f"revoked key {key.key_id} ({key.role}, tenant {key.tenant}) at {key.revoked_at}")


def main() -> None:
    from app.redact import install_log_redaction

    install_log_redaction()  # credential patterns in every log record (the server adds its keys)
    try:
        app()
    except ValidationError as exc:  # a setting out of range: name it, exit 2, no traceback
        message = settings_error(exc)
        if message is None:
            raise
        err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
