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
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from atlas.db.browse import RunSummaries
from atlas.db.sandbox import ReadOnlyAtlas, SqlLimits
from atlas.db.store import Store
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


def create_app(store: Store, options: ServeOptions | None = None, reader_url: str | None = None) -> Starlette:
    """The application for ``store`` (read-only: see the module docstring)."""
    options = options or ServeOptions()
    limits = SqlLimits(timeout_s=options.timeout, max_rows=options.max_rows, reader_url=reader_url)
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
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """The pooled connections close with the server."""
    yield
    app.state.atlas.atlas.close()


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
