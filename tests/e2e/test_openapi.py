"""/openapi.json is a valid OpenAPI 3.1 document (openapi-spec-validator), every operation has a
unique operationId, its examples pass the server's own validation, and every 4xx an operation
answers to bad requests is documented on that operation, with its code."""

from __future__ import annotations

import json
import uuid

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.conftest import OPERATOR, register, register_service
from walletd.handlers.routes import ROUTE_TABLES

METHODS = ("get", "post", "put", "delete", "patch")


async def document(client) -> dict:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    return await resp.json()


def operations(doc: dict):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method in METHODS:
                yield method, path, op


async def test_the_served_document_is_valid_openapi_31(client):
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)  # raises with the first problem found


async def test_every_operation_has_a_unique_operation_id(client):
    ids = [op.get("operationId") for _, _, op in operations(await document(client))]
    assert all(ids) and len(ids) == len(set(ids)), ids
    assert len(ids) == sum(len(table.entries) for table in ROUTE_TABLES)


async def test_no_swagger2_or_30_leftovers(client):
    text = json.dumps(await document(client))
    assert '"produces"' not in text and '"consumes"' not in text and '"nullable"' not in text


def example_values(schema: dict, components: dict) -> dict:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    # What Swagger UI fills in: a property's first example, else the first value of its enum.
    values = {}
    for name, prop in schema["properties"].items():
        if prop.get("examples"):
            values[name] = prop["examples"][0]
        elif prop.get("enum"):
            values[name] = prop["enum"][0]
    return values


async def test_examples_pass_the_servers_validation(client):
    """Swagger UI fills requests from the examples: they must be requests walletd accepts."""
    doc = await document(client)
    components = doc["components"]["schemas"]
    models = {spec.params.__name__: spec.params for table in ROUTE_TABLES for spec, _ in table.entries if spec.params}
    checked = set()
    for _, _, op in operations(doc):
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body is None:
            continue
        name = body["$ref"].rsplit("/", 1)[1]
        values = example_values(body, components)
        required = set(components[name].get("required", []))
        assert required <= values.keys(), (name, required - values.keys())  # every required field has one
        models[name].model_validate(values)  # raises if an example breaks a rule (password, amount, …)
        checked.add(name)
    assert {"RegisterParams", "TransferParams", "DepositParams", "SettleParams"} <= checked
    transfer = example_values(components["TransferParams"], components)
    assert transfer["source_wallet_id"] != transfer["target_wallet_id"]


async def test_password_rules_are_in_the_schema(client):
    password = (await document(client))["components"]["schemas"]["RegisterParams"]["properties"]["password"]
    assert password["minLength"] == 8 and "pattern" in password and "digit" in password["description"]


async def test_query_parameters_are_optional_where_a_body_may_carry_them(client):
    for method, path, op in operations(await document(client)):
        query = [p for p in op.get("parameters", []) if p["in"] == "query"]
        if "requestBody" in op:
            assert not any(p["required"] for p in query), (method, path)
        else:
            assert method == "get" or not query, (method, path)


def plausible(param: dict) -> str:
    schema = param["schema"]
    if schema.get("examples"):
        return str(schema["examples"][0])
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if "enum" in schema:
        return str(schema["enum"][0])
    if schema.get("type") == "integer":
        return str(schema.get("minimum", 1))
    return "x"


@pytest.fixture
async def callers(client):
    return {"user": await register(client, "probe"), "service": await register_service(client),
            "operator": {"headers": OPERATOR}}


async def test_every_4xx_an_operation_answers_is_documented_with_its_code(client, callers):
    doc = await document(client)
    seen: set[tuple[str, str, int]] = set()
    for method, path, op in operations(doc):
        role = _role(path, op)
        for param in op.get("parameters", []):  # a path parameter gets a plausible value
            if param["in"] == "path":
                path = path.replace("{" + param["name"] + "}", plausible(param))
        query = [p for p in op.get("parameters", []) if p["in"] == "query"]
        good = callers[role]["headers"] if role else {}
        other = callers["user" if role in ("service", "operator") else "service"]["headers"] if role else {}
        attempts = [
            ({}, {}, None),
            ({"Authorization": "Bearer garbage"}, {}, None),
            (other, {}, None),
            (good, {}, None),
            (good, {p["name"]: "zz" for p in query}, None),
            (good, {p["name"]: plausible(p) for p in query}, None),
            (good, {p["name"]: plausible(p) for p in query}, {p["name"]: "different" for p in query}),
            ({**good, "Content-Type": "application/x-www-form-urlencoded"}, {}, "a=b"),
            ({**good, "Content-Type": "application/json"}, {}, "{" + " " * 70_000 + "}"),
        ]
        for headers, params, body in attempts:
            kwargs = {"json": body} if isinstance(body, dict) else {"data": body} if body else {}
            resp = await client.request(method.upper(), path, headers=headers, params=params, **kwargs)
            if resp.status < 400:
                continue
            answer = await resp.json()
            documented = op["responses"].get(str(resp.status))
            assert documented is not None, (method, path, resp.status, answer)
            enum = documented["content"]["application/json"]["schema"]["allOf"][1]["properties"]["code"]["enum"]
            assert answer["code"] in enum, (method, path, resp.status, answer, enum)
            seen.add((method, path, resp.status))
    statuses = {status for _, _, status in seen}
    assert {400, 401, 403, 413, 415, 422} <= statuses, statuses  # the probes reached every kind of refusal


def _role(path: str, op: dict) -> str | None:
    if not op.get("security") or op["security"] == [{"basic": []}]:
        return None
    if op["security"] == [{"operatorKey": []}]:
        return "operator"
    return "service" if path.startswith("/service/") else "user"
