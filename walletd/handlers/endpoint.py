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
from walletd.auth.tokens import Principal, TokenError, TokenExpiredError
from walletd.domain import errors
from walletd.handlers import audit
from walletd.handlers.errors import (
    BASIC_CHALLENGE, MalformedBody, ParameterConflict, UnsupportedMediaType, ValidationFailed, challenge_key,
)
from walletd.persistence import accounts
from walletd.persistence.ledger import Replay

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
    """A fresh aiohttp handler for one app: parse, authenticate, call func, render. On the
    money-moving (idempotent) routes, refusals and replays are audited here, at the edge."""
    async def handler(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        principal = params = None
        if spec.auth in ("user", "service"):
            principal = kwargs["principal"] = await authenticate(request, spec.auth)
        elif spec.auth == "basic":
            request[challenge_key] = BASIC_CHALLENGE
            kwargs["credentials"] = basic_credentials(request)
        try:
            if spec.params is not None:
                raw = await gather_params(request)
                params = kwargs["params"] = validate(spec.params, raw)
                if spec.idempotent:
                    kwargs["raw_params"] = params.model_dump(mode="json")
            result = await func(request, **kwargs)
        except errors.DomainError as exc:
            if spec.idempotent:
                audit.refused(request, exc, principal, params)
            raise
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Replay):
            audit.replayed(request, principal, params)
            return web.Response(body=render(spec, result.body), status=result.status, content_type="application/json",
                                headers=_REPLAYED)
        return web.Response(body=render(spec, result), content_type="application/json")

    handler.__name__ = func.__name__
    handler.__doc__ = func.__doc__
    return handler


_REPLAYED = {"Idempotent-Replayed": "true"}


def render(spec: Endpoint, result: dict | BaseModel) -> bytes:
    """The one serializer of a first response and of its replay, so both are the same bytes: a
    dict (already in the documented shape, e.g. domain.ledger.tx_json, or a stored response that
    came back from jsonb with its keys reordered) is written in the response model's field order."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    if spec.response is not None:
        result = {name: result.get(name) for name in spec.response.model_fields}
    return orjson.dumps(result)


async def gather_params(request: web.Request) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ParameterConflict(f"parameter {key} given more than once")
        merged[key] = values[0]
    if request.body_exists:
        try:
            text = await request.text()  # client_max_size bounds this; aiohttp answers 413 past it
        except (UnicodeDecodeError, LookupError):  # bytes not in the declared (or an unknown) charset
            raise MalformedBody("body is not valid text in its declared charset") from None
        if text.strip():
            if request.content_type not in ("application/json", "text/plain", "application/octet-stream", ""):
                raise UnsupportedMediaType()
            try:
                # parse_float=Decimal keeps JSON numbers exact; amounts never pass through float.
                body = json.loads(text, parse_float=Decimal)
            except (ValueError, RecursionError):  # JSONDecodeError, or an integer past Python's digit limit
                raise MalformedBody() from None
            if not isinstance(body, dict):
                raise MalformedBody("JSON body must be an object")
            for key, value in body.items():
                if key in merged and str(merged[key]) != str(value):
                    raise ParameterConflict(f"parameter {key} differs between query string and body")
                merged[key] = value
    for key, value in merged.items():
        if isinstance(value, str) and not _storable(value):
            # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse them here.
            raise ValidationFailed(f"invalid parameters: {key}", errors=[
                {"loc": key, "msg": "contains a NUL or an unpaired surrogate character", "type": "string_unstorable"}])
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
        found = exc.errors(include_url=False, include_input=False, include_context=True)
        problems = [
            {"loc": ".".join(str(part) for part in err["loc"]) or "body", "msg": err["msg"], "type": err["type"]}
            for err in found
        ]
        # Told apart by the error type schemas.Amount raises, never by message text.
        amount = next((err for err in found if err["type"] == errors.InvalidAmount.code), None)
        if amount is not None:
            raise errors.InvalidAmount(amount["ctx"]["reason"], errors=problems) from None
        fields = ", ".join(p["loc"] for p in problems)
        raise ValidationFailed(f"invalid parameters: {fields}", errors=problems) from None


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
        raise errors.TokenMissing()
    try:
        principal = await request.app[tokens_key].verify_live(token, functools.partial(_role_of, request.app[pool_key]))
    except TokenExpiredError:
        raise errors.TokenExpired() from None
    except TokenError:
        raise errors.TokenInvalid() from None
    if principal.role != role:
        raise errors.WrongRole(role)
    request[principal_key] = principal.subject
    return principal


async def _role_of(pool, user_id) -> str | None:
    user = await accounts.get_user(pool, user_id)
    return user["role"] if user is not None else None


def basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() != "basic ":
        raise errors.TokenMissing("Not authenticated: send HTTP Basic credentials")
    try:
        username, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.InvalidCredentials() from None
    if "\x00" in username or "\x00" in password:  # unstorable, so never a valid credential
        raise errors.InvalidCredentials()
    return username, password
