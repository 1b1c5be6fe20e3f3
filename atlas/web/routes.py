"""The routes of `atlas serve`: every page in HTML and under /api, search, named queries, SQL.

Each endpoint reads in one read-only transaction (`ReadOnlyAtlas.begin`) and renders; nothing here
knows SQL. ``?table=NAME&format=csv|parquet|json`` on any /api page or query downloads one table.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from atlas.db import browse
from atlas.db.browse import Page
from atlas.db.queries import list_queries, load_query, run_on
from atlas.db.readonly import check_read_only, run_checked
from atlas.errors import InputError
from atlas.web import downloads
from atlas.web.plots import page_plots
from atlas.web.views import PAGES, PageKind, href, int_arg, page_run, table_view


def _state(request: Request) -> Any:
    return request.app.state.atlas


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_state(request).templates.get_template(template).render(**context))


def _load(request: Request, kind: PageKind) -> Page:
    state = _state(request)
    args = dict(request.path_params)
    with state.atlas.begin() as conn:
        page = kind.build(conn, state.summaries, args)
    if kind.name == "neuron" and state.vocab is not None and not page.tables["tokens"].num_rows:
        page.tables["tokens"], page.info["vocab_note"] = state.vocab.tokens(page.run, args["layer"], args["neuron"])
    return page


def _html_page(kind: PageKind):  # noqa: ANN202 - a Starlette endpoint
    def endpoint(request: Request) -> Response:
        page = _load(request, kind)
        run = page_run(page, request.path_params)
        api = kind.api_path(request.url.path)
        tables = {name: table_view(page, name, run, api) for name in page.tables}
        plots = page_plots(kind.name, page, run)
        return _render(request, kind.template, page=page, tables=tables, plots=plots, run=run, api=api)

    return endpoint


def _api_page(kind: PageKind):  # noqa: ANN202
    def endpoint(request: Request) -> Response:
        page = _load(request, kind)
        return downloads.respond(request, page, kind.name)

    return endpoint


# --- search -----------------------------------------------------------------------------------


def search(request: Request) -> Response:
    q = request.query_params.get("q", "")
    address = browse.neuron_address(q)
    state = _state(request)
    with state.atlas.begin() as conn:
        run = request.query_params.get("run") or None
        if address is not None:
            name = run or browse.latest_run(conn).name
            return RedirectResponse(href("neuron", name, layer=address[0], neuron=address[1]), status_code=303)
        page = browse.search_page(conn, q, limit=int_arg(request.query_params.get("limit"), "limit", 50))
        run = run or (browse.latest_run(conn).name if page.tables["matches"].num_rows else None)
    if request.url.path.startswith("/api/"):
        return downloads.respond(request, page, "search")
    tables = {"matches": table_view(page, "matches", run, "/api/search?" + str(request.query_params))}
    return _render(request, "search.html", page=page, tables=tables, run=run, q=q)


# --- named queries and ad-hoc SQL -------------------------------------------------------------

_RESERVED = {"table", "format"}


def _query_page(request: Request) -> Page:
    query = load_query(request.path_params["name"])
    given = {k: v for k, v in request.query_params.items() if k not in _RESERVED and v != ""}
    with _state(request).atlas.begin() as conn:
        table = run_on(conn, query, given)
    return Page(query.name, {"query": query.name, "params": query.bind(given)}, {"rows": table})


def query_api(request: Request) -> Response:
    return downloads.respond(request, _query_page(request), request.path_params["name"])


def query_html(request: Request) -> Response:
    query = load_query(request.path_params["name"])
    given = {k: v for k, v in request.query_params.items() if k not in _RESERVED}
    page = None
    required = [p.name for p in query.params if p.required]
    if given and all(given.get(name) for name in required):
        page = _query_page(request)
    run = given.get("run_id") or given.get("run_a")
    tables = (
        {"rows": table_view(page, "rows", run, request.url.path.replace("/sql/", "/api/query/", 1))} if page else {}
    )
    return _render(request, "query.html", query=query, given=given, page=page, tables=tables, run=run)


def _sql_page(request: Request) -> Page | None:
    sql = request.query_params.get("sql", "").strip()
    if not sql:
        return None
    result = run_checked(_state(request).atlas, check_read_only(sql))
    return Page("SQL", {"sql": sql, "truncated": result.truncated}, {"rows": result.table})


def sql_html(request: Request) -> Response:
    page = _sql_page(request)
    tables = {"rows": table_view(page, "rows", None, "/api/sql?" + str(request.query_params))} if page else {}
    return _render(
        request, "sql.html", queries=list_queries(), page=page, tables=tables, sql=request.query_params.get("sql", "")
    )


def sql_api(request: Request) -> Response:
    page = _sql_page(request)
    if page is None:
        raise InputError("give the statement as ?sql=SELECT ...")
    return downloads.respond(request, page, "sql")


def openapi(request: Request) -> Response:
    return JSONResponse(downloads.openapi(PAGES, list_queries()))


ROUTES: list[Route] = [
    *(Route(k.path, _html_page(k), name=k.name) for k in PAGES),
    *(Route(k.api_path(k.path), _api_page(k), name="api-" + k.name) for k in PAGES),
    Route("/search", search),
    Route("/api/search", search),
    Route("/sql", sql_html),
    Route("/sql/{name}", query_html),
    Route("/api/sql", sql_api),
    Route("/api/query/{name}", query_api),
    Route("/api/openapi.json", openapi),
]
