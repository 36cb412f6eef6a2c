"""Health, readiness and the offline API documentation pages."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp_apigami.swagger_ui import SWAGGER_UI_STATIC_FILES

from walletd import metrics
from walletd.appkeys import breaker_key, dispatcher_key, openapi_key, pool_key, registry_key
from walletd.persistence import outbox, stale
from walletd.persistence.migrate import schema_ready

READY_TIMEOUT = 2.0
_RETRY = {"Retry-After": "1"}

# The operational routes: open to anyone (anonymous), and hold no money or personal data. Listed
# here for the authority table (docs/authority.md) beside the declared API routes.
PUBLIC_ROUTES = (
    ("GET", "/health", "Liveness"),
    ("GET", "/ready", "Readiness: database reachable and writable, every migration applied"),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/openapi.json", "The OpenAPI document"),
    ("GET", "/docs", "Swagger UI"),
    ("GET", "/redoc", "ReDoc"),
    ("GET", "/static/…", "The documentation pages' scripts and styles"),
)
STALE_TYPES = ("deposit", "withdraw")

_REDOC_PAGE = """<!DOCTYPE html>
<html><head><title>walletd API</title><meta charset="utf-8"/></head>
<body><redoc spec-url="/openapi.json"></redoc><script src="/static/redoc/redoc.standalone.js"></script></body></html>
"""


# Swagger UI's own initializer (as shipped by aiohttp-apigami) loads petstore.swagger.io, and its
# default validatorUrl makes the page fetch a badge from validator.swagger.io: serve our own.
_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>walletd API</title>
<link rel="stylesheet" type="text/css" href="/static/swagger/swagger-ui.css"/>
<link rel="stylesheet" type="text/css" href="/static/swagger/index.css"/>
<link rel="icon" type="image/png" href="/static/swagger/favicon-32x32.png" sizes="32x32"/>
</head><body><div id="swagger-ui"></div>
<script src="/static/swagger/swagger-ui-bundle.js" charset="UTF-8"></script>
<script src="/static/swagger/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
<script src="/static/swagger/swagger-initializer.js" charset="UTF-8"></script>
</body></html>
"""
_SWAGGER_INITIALIZER = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
};
"""


def redoc_bundle_dir() -> Path | None:
    """ReDoc's bundle ships in drf-spectacular-sidecar, installed without its Django dependency;
    find_spec locates it without importing the package (whose __init__ imports Django)."""
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "static" / "drf_spectacular_sidecar" / "redoc" / "bundles"
    return path if path.is_dir() else None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    problem = await database_problem(request.app)
    if problem is not None:
        return web.json_response({"status": "unavailable", "message": problem}, status=503, headers=_RETRY)
    return web.json_response({"status": "ready"})


async def database_problem(app: web.Application) -> str | None:
    """Why walletd cannot serve from its database now, or None; sets walletd_database_up.
    Answers within READY_TIMEOUT whatever the load: the deadline covers the pool's gate, the
    connect and the query (a writable primary is required: a standby is not ready)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            async with app[pool_key].acquire(timeout=READY_TIMEOUT) as conn:
                applied = await schema_ready(conn)
                writable = not await conn.fetchval("SELECT pg_is_in_recovery()")
    except Exception as exc:  # any failure to reach the database means not ready
        problem: str | None = f"database unreachable: {type(exc).__name__}"
    else:
        problem = None if applied and writable else (
            "schema not applied" if not applied else "database is a read-only standby")
    metrics.DATABASE_UP.set(0 if problem else 1)
    if problem is None:
        app[breaker_key].succeeded()
    return problem


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format (walletd/metrics.py): this process's live gauges are refreshed
    first; under --workers the answer aggregates every process."""
    metrics.sample(request.app[registry_key], request.app[pool_key])
    await asyncio.gather(database_problem(request.app), _webhooks_pending(request.app), _pending_stale(request.app))
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def metrics_ctx(app: web.Application):
    """Samples the cheap gauges once a second, for scrapes that reach another worker."""
    task = asyncio.create_task(metrics.sampler(app[registry_key], app[pool_key]), name="metrics-sampler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def serve_document(app: web.Application, document: dict) -> None:
    """The OpenAPI document, rendered once."""
    app[openapi_key] = orjson.dumps(document)
    app.router.add_get("/openapi.json", openapi_document)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[openapi_key], content_type="application/json")


async def _webhooks_pending(app: web.Application) -> None:
    """Webhooks (walletd/jobs/webhook_delivery.py): the deliveries still pending in the database (all
    processes). NaN (unknown) if the database cannot answer within READY_TIMEOUT, so /metrics
    never hangs on it."""
    if app.get(dispatcher_key) is None:
        return
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            metrics.WEBHOOKS_PENDING.set(await outbox.pending_count(app[pool_key]))
    except Exception:  # noqa: BLE001 - a scrape must answer even while the database does not
        metrics.WEBHOOKS_PENDING.set(float("nan"))


async def _pending_stale(app: web.Application) -> None:
    """Stale pending records per type (all processes, from the database); NaN when the database
    does not answer within READY_TIMEOUT."""
    counts: dict[str, float]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            counts = dict(await stale.stale_counts(app[pool_key]))
    except Exception:  # noqa: BLE001 - a scrape must answer even while the database does not
        counts = {kind: float("nan") for kind in STALE_TYPES}
    for kind in STALE_TYPES:
        metrics.PENDING_STALE.labels(kind).set(counts.get(kind, 0))


async def redoc(request: web.Request) -> web.Response:
    return web.Response(text=_REDOC_PAGE, content_type="text/html")


async def swagger(request: web.Request) -> web.Response:
    return web.Response(text=_SWAGGER_PAGE, content_type="text/html")


async def swagger_initializer(request: web.Request) -> web.Response:
    return web.Response(text=_SWAGGER_INITIALIZER, content_type="application/javascript")


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/docs", swagger)
    # The exact path outranks the static prefix, so ours replaces the bundled initializer.
    app.router.add_get("/static/swagger/swagger-initializer.js", swagger_initializer)
    app.router.add_static("/static/swagger", SWAGGER_UI_STATIC_FILES)
    bundle = redoc_bundle_dir()
    if bundle is not None:
        app.router.add_static("/static/redoc", bundle)
        app.router.add_get("/redoc", redoc)
