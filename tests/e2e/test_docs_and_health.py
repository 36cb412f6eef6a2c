"""Health, readiness and the offline API documentation (Swagger UI, ReDoc, OpenAPI)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tests.conftest import OPERATOR_KEY, create_empty_database

URL = re.compile(r"""(?:https?:)?//[^\s"'<>()`]+""", re.IGNORECASE)
SRC = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)

# Every path and method of the contract (docs/api-contract.md).
CONTRACT = {
    ("post", "/auth/register"), ("post", "/auth/login"), ("get", "/user/get/token"), ("get", "/user/get/id"),
    ("get", "/user/wallets"), ("get", "/user/wallet"), ("post", "/user/create/external_wallet"),
    ("get", "/user/transactions"), ("get", "/wallet/transactions"), ("post", "/wallet/deposit"),
    ("post", "/wallet/exchange"), ("post", "/wallet/transfer"), ("post", "/wallet/withdraw"),
    ("post", "/auth/register_service"), ("get", "/service/auth/login"), ("put", "/service/transaction/deposit"),
    ("put", "/service/transaction/withdraw"), ("post", "/service/exchange-rates/update"),
    ("get", "/service/exchange-rates/last-update"), ("post", "/service/exchange-rates/get-conversion"),
    ("post", "/service/currencies/update"),
}


def off_site(text: str, host: str) -> list[str]:
    """URLs in the text that point at any host but the server itself."""
    found = []
    for url in URL.findall(text):
        netloc = urlsplit(url if "://" in url else "http:" + url).netloc
        if netloc and netloc != host:
            found.append(url)
    return found


# ---- health -----------------------------------------------------------------------------------------

async def test_health(client):
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_ready_with_the_database_up(client):
    resp = await client.get("/ready")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"status": "ready"}


async def test_not_ready_without_the_schema(make_client, admin_url):
    """A database walletd has not migrated is reported unavailable (503), not ready."""
    client = await make_client(database_url=await create_empty_database(admin_url))
    resp = await client.get("/ready")
    assert resp.status == 503, await resp.text()
    body = await resp.json()
    assert body["status"] == "unavailable" and "schema" in body["message"]
    assert (await client.get("/health")).status == 200  # alive, just not ready


# ---- Swagger UI ----------------------------------------------------------------------------------

async def test_swagger_ui_page_and_every_asset_it_references(client):
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert "swagger-ui" in html.lower()
    host = f"{client.host}:{client.port}"
    assert off_site(html, host) == [], off_site(html, host)
    assets = SRC.findall(html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    assert any(a.endswith(".css") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset  # same origin
        got = await client.get(asset)
        assert got.status == 200, asset
        assert len(await got.read()) > 0, asset


async def test_swagger_ui_loads_our_document_and_no_outside_validator(client):
    html = await (await client.get("/docs")).text()
    initializer = await client.get("/static/swagger/swagger-initializer.js")
    assert initializer.status == 200
    script = await initializer.text()
    host = f"{client.host}:{client.port}"
    for text in (html, script):
        assert "petstore" not in text
        assert off_site(text, host) == [], off_site(text, host)
    # Whichever of the two configures Swagger UI, it points at our document and switches off the
    # badge that would fetch https://validator.swagger.io/validator (Swagger UI's default).
    config = script if "swagger-initializer.js" in html else html
    assert "/openapi.json" in config
    assert re.search(r"validatorUrl\s*:\s*null", config), config


# ---- ReDoc ---------------------------------------------------------------------------------------

async def test_redoc_page_and_bundle(client):
    resp = await client.get("/redoc")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    host = f"{client.host}:{client.port}"
    assert off_site(html, host) == []
    assert 'spec-url="/openapi.json"' in html
    assert "/static/redoc/redoc.standalone.js" in SRC.findall(html)
    bundle = await client.get("/static/redoc/redoc.standalone.js")
    assert bundle.status == 200
    assert "javascript" in bundle.content_type
    assert len(await bundle.read()) > 100_000


async def test_static_paths_do_not_escape_their_directory(client):
    for path in ("/static/redoc/../../../../etc/passwd", "/static/swagger/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/static/swagger/..%2f..%2f..%2fetc%2fpasswd"):
        resp = await client.get(path)
        assert resp.status in (403, 404), (path, resp.status)
        assert "root:" not in await resp.text()


# ---- OpenAPI -------------------------------------------------------------------------------------

async def openapi(client) -> dict:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_openapi_is_3x_and_lists_every_contract_operation(client):
    doc = await openapi(client)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    present = {(method, path) for path, ops in doc["paths"].items() for method in ops
               if method in ("get", "post", "put", "delete", "patch")}
    missing = CONTRACT - present
    assert not missing, sorted(missing)
    for method, path in CONTRACT:
        op = doc["paths"][path][method]
        assert op.get("summary"), (method, path)
        assert "200" in op["responses"], (method, path)


async def test_openapi_documents_transfer_parameters_and_errors(client):
    op = (await openapi(client))["paths"]["/wallet/transfer"]["post"]
    query = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
    for name in ("source_wallet_id", "target_wallet_id", "amount"):
        # The JSON body may carry them instead: required in one place, so in neither alone.
        assert name in query and query[name]["required"] is False, name
        assert "Required here or in the JSON body" in query[name]["description"], name
    assert query["source_wallet_id"]["schema"].get("format") == "uuid"
    assert "Idempotency-Key" in {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert "application/json" in op["requestBody"]["content"]  # the JSON-body alternative
    for status in ("400", "401", "422"):
        assert status in op["responses"], status
        assert "application/json" in op["responses"][status]["content"], status
    assert "insufficient_funds" in op["responses"]["400"]["description"]
    assert op.get("security"), "transfer needs a token"


async def test_openapi_documents_identity_errors_and_operator_header(client):
    doc = await openapi(client)
    paths = doc["paths"]
    assert "409" in paths["/auth/register"]["post"]["responses"]
    assert "422" in paths["/auth/register"]["post"]["responses"]
    assert "401" in paths["/auth/login"]["post"]["responses"]
    assert "404" in paths["/user/wallet"]["get"]["responses"]
    assert "409" in paths["/user/create/external_wallet"]["post"]["responses"]
    service = paths["/auth/register_service"]["post"]
    assert "403" in service["responses"]
    assert {"X-Operator-Key"} <= {p["name"] for p in service.get("parameters", []) if p["in"] == "header"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer"
    assert schemes["tokenHeader"] == {"type": "apiKey", "in": "header", "name": "token"}
    assert schemes["basic"]["scheme"] == "basic"
    assert "query" in doc["info"]["description"] and "body" in doc["info"]["description"]
    assert OPERATOR_KEY not in str(doc)


async def test_openapi_references_all_resolve(client):
    doc = await openapi(client)
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref


async def test_openapi_is_the_same_for_a_second_app(make_client):
    """Building the app twice in one process must not duplicate documented parameters."""
    first = await openapi(await make_client())
    second = await openapi(await make_client())
    assert first == second
    for path, ops in second["paths"].items():
        for method, op in ops.items():
            keys = [(p["name"], p["in"]) for p in op.get("parameters", [])]
            assert len(keys) == len(set(keys)), (method, path, keys)


async def test_metrics_count_commits_and_their_commands(client):
    from tests.conftest import fund, register, register_service

    def values(text: str) -> dict[str, float]:
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}

    before = values(await (await client.get("/metrics")).text())
    user, service = await register(client, "metrics"), await register_service(client)
    await fund(client, user, service, 1, "10")  # two commands: the deposit request, its settlement
    after = values(await (await client.get("/metrics")).text())
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert delta["walletd_commit_commands_total"] == 2
    assert 1 <= delta["walletd_commit_batches_total"] <= 2
    assert (delta['walletd_ledger_batches_total{path="fast"}'] + delta['walletd_ledger_batches_total{path="locked"}']
            == delta["walletd_commit_batches_total"])
