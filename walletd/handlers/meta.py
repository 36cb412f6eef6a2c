"""Health, readiness and the offline API documentation pages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from aiohttp import web

from walletd.appkeys import pool_key
from walletd.persistence.migrate import schema_ready

_REDOC_PAGE = """<!DOCTYPE html>
<html><head><title>walletd API</title><meta charset="utf-8"/></head>
<body><redoc spec-url="/openapi.json"></redoc><script src="/static/redoc/redoc.standalone.js"></script></body></html>
"""


def redoc_bundle_dir() -> Path | None:
    """ReDoc's bundle ships in drf-spectacular-sidecar, installed without its Django dependency;
    find_spec locates it without importing the package (whose __init__ imports Django)."""
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "static" / "drf_spectacular_sidecar" / "redoc" / "bundles"
    return path if path.is_dir() else None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    try:
        async with request.app[pool_key].acquire(timeout=2) as conn:
            applied = await schema_ready(conn)
    except Exception as exc:  # any failure to reach the database means not ready
        return web.json_response({"status": "unavailable", "message": f"database unreachable: {type(exc).__name__}"},
                                 status=503)
    if not applied:
        return web.json_response({"status": "unavailable", "message": "schema not applied"}, status=503)
    return web.json_response({"status": "ready"})


async def redoc(request: web.Request) -> web.Response:
    return web.Response(text=_REDOC_PAGE, content_type="text/html")


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    bundle = redoc_bundle_dir()
    if bundle is not None:
        app.router.add_static("/static/redoc", bundle)
        app.router.add_get("/redoc", redoc)
