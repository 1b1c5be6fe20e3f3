"""`atlas serve`: the web atlas, a Starlette application over a read-only atlas.

Why Starlette + Jinja2 (README "Browse the atlas"): Starlette is a small, well-kept ASGI toolkit
(routing, static files, a test client) without a model layer of its own, so the pages read the
atlas exactly as the CLI does (`atlas.db.browse`, named queries, the `atlas sql` sandbox); Jinja2
escapes every value by default, which is what keeps a fact subject like ``<script>`` text.

Everything reads through one `ReadOnlyAtlas` (the reader role on PostgreSQL, a read-only locked
DuckDB connection), each request in its own read-only transaction with the server's time limit.
Endpoints are plain functions: Starlette runs them in its thread pool, next to the pooled
connections. Errors a user can cause become a 400/404 page (or JSON under /api) with one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from atlas.db.browse import warm
from atlas.db.sandbox import ReadOnlyAtlas, SqlLimits
from atlas.db.store import Store
from atlas.db.summaries import RunSummaries
from atlas.errors import AtlasError, InputError, NotFound, StoreError
from atlas.web import routes
from atlas.web.options import ServeOptions
from atlas.web.views import fmt, href

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("atlas.serve")


@dataclass
class AtlasState:
    """What every request shares: the read-only atlas, the run summaries, the templates."""

    atlas: ReadOnlyAtlas
    summaries: RunSummaries
    templates: Environment
    options: ServeOptions
    vocab: Any  # atlas.jobs.vocab.OnDemandVocab, or None (off)


def create_app(store: Store, options: ServeOptions | None = None, reader_url: str | None = None) -> ServerTiming:
    """The application for ``store`` (read-only: see the module docstring)."""
    options = options or ServeOptions()
    # one DuckDB thread per statement: a server runs many small statements at once, and
    # splitting each over every core only adds work (bench/serve_speed.py)
    limits = SqlLimits(timeout_s=options.timeout, max_rows=options.max_rows, reader_url=reader_url, threads=1)
    atlas = ReadOnlyAtlas(store, limits, pool_size=options.pool)
    templates = Environment(loader=PackageLoader("atlas.web", "templates"), autoescape=select_autoescape(["html"]))
    templates.globals.update(href=href, fmt=fmt)
    state = AtlasState(atlas, RunSummaries(), templates, options, _vocab(options, store))
    app = Starlette(
        routes=[*routes.ROUTES, Mount("/static", app=StaticFiles(directory=STATIC), name="static")],
        exception_handlers={AtlasError: _atlas_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=_lifespan,
    )
    app.state.atlas = state
    return ServerTiming(app)


FACTORY = "atlas.web.app:app_from_environment"  # what uvicorn imports in each worker process
_CONFIG_ENV = "ATLAS_SERVE_CONFIG"


def configure(url: str, options: ServeOptions, reader_url: str | None) -> None:
    """Hand the server's settings to its worker processes (they inherit the environment)."""
    os.environ[_CONFIG_ENV] = json.dumps({"url": url, "options": asdict(options), "reader_url": reader_url})


def app_from_environment() -> ServerTiming:
    """The application of one worker, from `configure`'s settings."""
    config = json.loads(os.environ[_CONFIG_ENV])
    return create_app(Store(config["url"]), ServeOptions(**config["options"]), config["reader_url"])


class ServerTiming:
    """ASGI middleware: every response says how long the server worked on it (``Server-Timing:
    app;dur=MS``), which bench/serve_speed.py reads apart from the client's own time."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def timed(message: dict) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                message["headers"] = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """Done runs' summaries are read in the background as the server starts (the first pages then
    find them); the pooled connections close with the server."""
    state: AtlasState = app.state.atlas
    threading.Thread(target=_warm, args=(state,), name="atlas-warm", daemon=True).start()
    yield
    state.atlas.close()


def _warm(state: AtlasState) -> None:
    try:
        with state.atlas.begin(timeout_s=max(state.options.timeout, 600.0)) as conn:
            log.info("read the summaries of %d done runs", warm(conn, state.summaries))
    except AtlasError as exc:  # a page that needs them reads them itself and reports the error
        log.warning("could not read the run summaries at start: %s", exc)


def _vocab(options: ServeOptions, store: Store) -> Any:
    if options.vocab == "off":
        return None
    from atlas.jobs.vocab import OnDemandVocab  # torch only when a neuron page needs the weights

    return OnDemandVocab(store)


# --- errors -----------------------------------------------------------------------------------


def _status(exc: AtlasError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InputError):
        return 400
    return 503 if isinstance(exc, StoreError) else 400


def error_response(request: Request, status: int, message: str) -> Response:
    """One line, as JSON under /api and as a page elsewhere; never a traceback."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message, "status": status}, status_code=status)
    state: AtlasState = request.app.state.atlas
    body = state.templates.get_template("error.html").render(title=f"Error {status}", status=status, message=message)
    return HTMLResponse(body, status_code=status)


async def _atlas_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AtlasError)
    return error_response(request, _status(exc), str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "no such page: " + request.url.path if exc.status_code == 404 else str(exc.detail)
    return error_response(request, exc.status_code, message)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path)
    return error_response(request, 500, f"internal error ({type(exc).__name__}); the server's log has the details")
