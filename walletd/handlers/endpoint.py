"""The endpoint decorator: one declaration per route gives its parsing (handlers/params.py),
authentication (auth/http.py), rendering and OpenAPI operation (handlers/openapi.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web
from pydantic import BaseModel

from walletd.appkeys import challenge_key, pool_key, principal_key, settings_key, throttle_key, tokens_key
from walletd.auth import operator
from walletd.auth.http import authenticate, basic_credentials
from walletd.config import Settings
from walletd.domain import errors
from walletd.domain.commands import Replay
from walletd.handlers import audit
from walletd.handlers.errors import BASIC_CHALLENGE, render_error
from walletd.handlers.params import gather_params, validate

Handler = Callable[..., Awaitable[Any]]

# Who may call a route. "basic" is a user proving a password with HTTP Basic; "anonymous" is
# anyone. A route may name several (a settlement: the payment service, or the operator).
PRINCIPALS = ("anonymous", "user", "service", "operator")
AUTH_KINDS = (*PRINCIPALS, "basic")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    params: type[BaseModel] | None
    response: type[BaseModel] | None
    auth: tuple[str, ...]  # kinds from AUTH_KINDS
    errors: tuple[tuple[int, str], ...]
    tags: tuple[str, ...]
    idempotent: bool
    description: str = ""
    extra_headers: tuple[dict, ...] = field(default=())
    # A Settings flag that opens an operator route to anyone while no operator key is configured
    # (service registration in development).
    open_when: str | None = None
    # What each principal may reach through the route, where it is less than everything
    # ({"service": "its own"}): the authority table in docs/authority.md shows it.
    scope: tuple[tuple[str, str], ...] = ()
    # The largest body this route reads, when it needs more than WALLETD_MAX_BODY_BYTES (a
    # multi-leg transfer): a function of the settings, applied by handlers.middleware.
    max_body_bytes: Callable[[Settings], int] | None = None
    # Other media types the 200 answer may take besides JSON (a statement as CSV): type -> OpenAPI
    # media type object.
    other_content: tuple[tuple[str, dict], ...] = ()

    @property
    def principals(self) -> tuple[str, ...]:
        return tuple("user" if kind == "basic" else kind for kind in self.auth)

    @property
    def token_role(self) -> str | None:
        """The role a token must carry here, if a token is one way in (the first, where both are)."""
        return next((kind for kind in self.auth if kind in ("user", "service")), None)

    @property
    def token_roles(self) -> tuple[str, ...]:
        """Every role a token may carry here: both on the books routes, where a user and a payment
        service each read their own wallets."""
        return tuple(kind for kind in self.auth if kind in ("user", "service"))


class Routes:
    """A route table whose entries carry their Endpoint description for the OpenAPI document.
    Every route names who may call it (auth): there is no default."""

    def __init__(self) -> None:
        self.entries: list[tuple[Endpoint, Handler]] = []

    def __call__(self, method: str, path: str, *, summary: str, auth: str | tuple[str, ...], params=None,
                 response=None, errors=(), tags=(), idempotent=False, description="", extra_headers=(),
                 open_when=None, scope=None, max_body_bytes=None, other_content=()):
        kinds = (auth,) if isinstance(auth, str) else tuple(auth)
        if not kinds or any(kind not in AUTH_KINDS for kind in kinds):
            raise ValueError(f"{method} {path}: auth must name principals from {AUTH_KINDS}, got {auth!r}")
        spec = Endpoint(method, path, summary, params, response, kinds, tuple(errors), tuple(tags),
                        idempotent, description, tuple(extra_headers), open_when, tuple((scope or {}).items()),
                        max_body_bytes, tuple(other_content))

        def register(func: Handler) -> Handler:
            self.entries.append((spec, func))
            return func

        return register


def wrap(spec: Endpoint, func: Handler) -> Handler:
    """A fresh aiohttp handler for one app: parse, authenticate, call func, render. On the
    money-moving (idempotent) routes, refusals and replays are audited here, at the edge."""
    # Decided once per route, not per request.
    basic_only, anonymous_only = spec.auth == ("basic",), spec.auth == ("anonymous",)
    roles = _Roles(spec)

    async def handler(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        principal = params = None
        if basic_only:
            request[challenge_key] = BASIC_CHALLENGE
            kwargs["credentials"] = basic_credentials(request)
        elif not anonymous_only:
            principal = kwargs["principal"] = await _principal(request, spec, roles)
        try:
            if spec.params is not None:
                raw = await gather_params(request)
                params = kwargs["params"] = validate(spec.params, raw)
                if spec.idempotent:
                    # Only an Idempotency-Key's request hash reads them (commands.idempotency).
                    kwargs["raw_params"] = (params.model_dump(mode="json") if "Idempotency-Key" in request.headers
                                            else {})
            result = await func(request, **kwargs)
        except errors.DomainError as exc:
            if spec.idempotent:
                audit.refused(request, exc, principal, params)
            if principal is operator.OPERATOR:
                audit.operator_action(request, spec.path, exc.code, params)
            raise
        if principal is operator.OPERATOR:
            audit.operator_action(request, spec.path, "ok", params)
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
    handler.max_body_bytes = spec.max_body_bytes  # type: ignore[attr-defined]
    return handler


_REPLAYED = {"Idempotent-Replayed": "true"}


class _Roles:
    """A route's ways in, read off its Endpoint once."""

    __slots__ = ("operator", "token_role", "token_roles")

    def __init__(self, spec: Endpoint) -> None:
        self.operator = "operator" in spec.auth
        self.token_role, self.token_roles = spec.token_role, spec.token_roles


async def _principal(request: web.Request, spec: Endpoint, roles: _Roles):
    """The caller as one of the route's principals. The operator key decides when it is sent (or
    when the operator is the only way in); otherwise the token, of the route's token role."""
    if roles.operator:
        settings = request.app[settings_key]
        if spec.open_when and getattr(settings, spec.open_when):
            # Open to anyone, development only (Endpoint.open_when). Only a generated key can stand
            # beside the switch (config refuses an explicit one), and the switch wins over it.
            return None
        if roles.token_role is None or operator.HEADER in request.headers:
            found = await operator.authenticate(request, settings.operator_keys, request.app[throttle_key],
                                                request.app[pool_key])
            request[principal_key] = found.subject
            return found
    assert roles.token_role is not None
    principal = await authenticate(request, roles.token_roles, request.app[tokens_key], request.app[pool_key])
    request[principal_key] = principal.subject
    return principal


def render(spec: Endpoint, result: dict | BaseModel) -> bytes:
    """A model, or a dict written in the response model's field order: a stored response comes
    back from jsonb with its keys reordered, and a replay must repeat the first response's bytes
    (first responses are tx_json dicts, already in that order: tests compare the bytes)."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    if spec.response is not None:
        result = {name: result.get(name) for name in spec.response.model_fields}
    return orjson.dumps(result)


