"""The endpoint decorator: one declaration gives parsing, authentication, rendering and docs.

Parameters may travel in the query string (the original's convention, even on POST/PUT) or in
a JSON object body. Both are merged; a parameter given in both places with different values is
refused (400) rather than guessed at, because a payment API must not pick one silently.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from walletd.appkeys import pool_key, principal_key, tokens_key
from walletd.auth.tokens import Principal, TokenError
from walletd.handlers.schemas import ErrorOut
from walletd.persistence import accounts

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    params: type[BaseModel] | None
    response: type[BaseModel] | None
    auth: str | None  # None, "user", "service", "basic"
    errors: tuple[tuple[int, str], ...]
    tags: tuple[str, ...]
    idempotent: bool
    description: str = ""
    extra_headers: tuple[dict, ...] = field(default=())


class BadRequest(Exception):
    def __init__(self, status: int, message: str, errors: list | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


class Routes:
    """A route table whose entries carry their Endpoint description for the OpenAPI document."""

    def __init__(self) -> None:
        self.entries: list[tuple[Endpoint, Handler]] = []

    def __call__(self, method: str, path: str, *, summary: str, params=None, response=None,
                 auth=None, errors=(), tags=(), idempotent=False, description="", extra_headers=()):
        spec = Endpoint(method, path, summary, params, response, auth, tuple(errors), tuple(tags),
                        idempotent, description, tuple(extra_headers))

        def register(func: Handler) -> Handler:
            self.entries.append((spec, func))
            return func

        return register


def wrap(spec: Endpoint, func: Handler) -> Handler:
    """A fresh aiohttp handler for one app: parse, authenticate, call func, render."""
    async def handler(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if spec.auth in ("user", "service"):
            kwargs["principal"] = await authenticate(request, spec.auth)
        elif spec.auth == "basic":
            kwargs["credentials"] = basic_credentials(request)
        if spec.params is not None:
            raw = await gather_params(request)
            kwargs["params"] = validate(spec.params, raw)
            if spec.idempotent:
                kwargs["raw_params"] = kwargs["params"].model_dump(mode="json")
        result = await func(request, **kwargs)
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, dict):
            # Already in the documented shape (e.g. domain.ledger.tx_json): skip re-validation.
            return web.Response(body=orjson.dumps(result), content_type="application/json")
        return web.Response(body=result.model_dump_json(), content_type="application/json")

    handler.__name__ = func.__name__
    handler.__doc__ = func.__doc__
    return handler


async def gather_params(request: web.Request) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise BadRequest(400, f"parameter {key} given more than once")
        merged[key] = values[0]
    if request.body_exists:
        try:
            text = await request.text()  # client_max_size bounds this; aiohttp answers 413 past it
        except (UnicodeDecodeError, LookupError):  # bytes not in the declared (or an unknown) charset
            raise BadRequest(400, "body is not valid text in its declared charset") from None
        if text.strip():
            if request.content_type not in ("application/json", "text/plain", "application/octet-stream", ""):
                raise BadRequest(415, "body must be application/json")
            try:
                # parse_float=Decimal keeps JSON numbers exact; amounts never pass through float.
                body = json.loads(text, parse_float=Decimal)
            except (ValueError, RecursionError):  # JSONDecodeError, or an integer past Python's digit limit
                raise BadRequest(400, "malformed JSON body") from None
            if not isinstance(body, dict):
                raise BadRequest(400, "JSON body must be an object")
            for key, value in body.items():
                if key in merged and str(merged[key]) != str(value):
                    raise BadRequest(400, f"parameter {key} differs between query string and body")
                merged[key] = value
    for key, value in merged.items():
        if isinstance(value, str) and not _storable(value):
            # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse them here.
            raise BadRequest(422, f"invalid parameters: {key}",
                             [{"loc": key, "msg": "contains a NUL or an unpaired surrogate character",
                               "type": "string_unstorable"}])
    return merged


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate(model: type[BaseModel], raw: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            {"loc": ".".join(str(part) for part in err["loc"]) or "body", "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        if any(p["msg"].endswith("Invalid amount") for p in problems):
            raise BadRequest(400, "Invalid amount", problems) from None
        fields = ", ".join(p["loc"] for p in problems)
        raise BadRequest(422, f"invalid parameters: {fields}", problems) from None


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    token = request.headers.get("token")
    if token:
        return token[7:].strip() if token[:7].lower() == "bearer " else token.strip()
    return None


async def authenticate(request: web.Request, role: str) -> Principal:
    token = bearer_token(request)
    if not token:
        raise web.HTTPUnauthorized(reason="Not authenticated")
    try:
        principal = await request.app[tokens_key].verify_live(token, functools.partial(_role_of, request.app[pool_key]))
    except TokenError:
        raise web.HTTPUnauthorized(reason="Invalid token") from None
    if principal.role != role:
        raise web.HTTPUnauthorized(reason="Invalid token")
    request[principal_key] = principal.subject
    return principal


async def _role_of(pool, user_id) -> str | None:
    user = await accounts.get_user(pool, user_id)
    return user["role"] if user is not None else None


def basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() != "basic ":
        raise web.HTTPUnauthorized(reason="Not authenticated", headers={"WWW-Authenticate": 'Basic realm="walletd"'})
    try:
        username, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise web.HTTPUnauthorized(reason="Invalid credentials") from None
    if "\x00" in username or "\x00" in password:  # unstorable, so never a valid credential
        raise web.HTTPUnauthorized(reason="Invalid credentials")
    return username, password


# ---- OpenAPI ----------------------------------------------------------------------------------

_REF = "#/components/schemas/{model}"


def model_schema(model: type[BaseModel], components: dict, mode: str = "validation") -> dict:
    schema = model.model_json_schema(ref_template=_REF, mode=mode)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def operation(spec: Endpoint, components: dict) -> dict:
    op: dict[str, Any] = {"summary": spec.summary, "tags": list(spec.tags) or ["walletd"]}
    if spec.description:
        op["description"] = spec.description
    parameters = list(spec.extra_headers)
    if spec.params is not None:
        schema = spec.params.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                               **({"description": prop["description"]} if "description" in prop else {})})
        op["requestBody"] = {
            "required": False,
            "description": "The same parameters as a JSON object (alternative to the query string).",
            "content": {"application/json": {"schema": model_schema(spec.params, components)}},
        }
    if spec.idempotent:
        parameters.append({
            "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 128},
            "description": "A retry with the same key and body returns the first response and moves no money again; "
                           "the same key with another body is 422. Keys are scoped to the caller and kept "
                           "WALLETD_IDEMPOTENCY_RETENTION seconds (default 86400: 24 hours); a retry after that "
                           "is a new request.",
        })
    if parameters:
        op["parameters"] = parameters
    responses: dict[str, Any] = {}
    if spec.response is not None:
        responses["200"] = {"description": "OK", "content": {"application/json": {
            "schema": model_schema(spec.response, components, mode="serialization")}}}
    else:
        responses["200"] = {"description": "OK"}
    error_ref = model_schema(ErrorOut, components, mode="serialization")
    documented = list(spec.errors)
    if spec.params is not None:
        documented.append((422, "invalid parameters: <fields> (errors lists each field)"))
    if spec.auth in ("user", "service", "basic"):
        documented.append((401, "Not authenticated / Invalid token / Invalid credentials"))
        op["security"] = [{"bearer": []}, {"tokenHeader": []}] if spec.auth != "basic" else [{"basic": []}]
    by_status: dict[int, list[str]] = {}
    for status, message in documented:
        by_status.setdefault(status, []).append(message)
    for status, messages in sorted(by_status.items()):
        responses[str(status)] = {"description": "; ".join(messages),
                                  "content": {"application/json": {"schema": error_ref}}}
    op["responses"] = responses
    return op
