"""The endpoint decorator: one declaration per route gives its parsing (handlers/params.py),
authentication (auth/http.py), rendering and OpenAPI operation (handlers/openapi.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import BaseModel

from walletd.auth.http import authenticate, basic_credentials
from walletd.domain import errors
from walletd.handlers import audit
from walletd.handlers.errors import BASIC_CHALLENGE, challenge_key, render_error
from walletd.handlers.params import gather_params, validate
from walletd.persistence.outcomes import Replay

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
            audit.replayed(request, principal, params, result.status)
            if result.status >= 400:  # a refusal the ledger decided, remembered under the key
                return render_error(result.status, result.body, _REPLAYED)
            return web.Response(body=render(spec, result.body), status=result.status, content_type="application/json",
                                headers=_REPLAYED)
        # A first response is tx_json's dict, already in the response model's field order.
        body = orjson.dumps(result) if isinstance(result, dict) else render(spec, result)
        return web.Response(body=body, content_type="application/json")

    handler.__name__ = func.__name__
    handler.__doc__ = func.__doc__
    return handler


_REPLAYED = {"Idempotent-Replayed": "true"}


def render(spec: Endpoint, result: dict | BaseModel) -> bytes:
    """A model, or a dict written in the response model's field order: a stored response comes
    back from jsonb with its keys reordered, and a replay must repeat the first response's bytes
    (first responses are tx_json dicts, already in that order: tests compare the bytes)."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    if spec.response is not None:
        result = {name: result.get(name) for name in spec.response.model_fields}
    return orjson.dumps(result)


