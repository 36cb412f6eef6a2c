"""The one table mapping each error to an HTTP status, and the JSON error shape.

Every error response is {"status", "code", "message", "request_id"} plus `errors` (one item per
field) for validation failures and `detail` where useful. `code` is stable snake_case, what
clients should match on; `message` keeps the original service's text where it had one.
"""

from __future__ import annotations

import functools
import json

from aiohttp import web

from walletd import metrics
from walletd.domain import errors as e


class RequestError(e.DomainError):
    """The request itself is malformed (before any rule of the domain applies)."""

    code = "bad_request"
    message = "bad request"


class ValidationFailed(RequestError):
    """A parameter is missing or malformed; `errors` lists each field (loc, msg, type)."""

    code = "validation_failed"
    message = "invalid parameters"


class ParameterConflict(RequestError):
    """A parameter appears twice, or in both query string and body with different values."""

    code = "parameter_conflict"
    message = "parameter conflict"


class MalformedBody(RequestError):
    """The body is not a JSON object (or not text in its declared charset)."""

    code = "malformed_body"
    message = "malformed JSON body"


class UnsupportedMediaType(RequestError):
    """A non-empty body that is not JSON."""

    code = "unsupported_media_type"
    message = "body must be application/json"


class InvalidIdempotencyKey(RequestError):
    """The Idempotency-Key header is not 1-128 printable ASCII characters."""

    code = "invalid_idempotency_key"
    message = "Idempotency-Key must be 1-128 characters"


OperatorKeyRequired = e.OperatorKeyRequired  # an authentication error, kept importable from here


# The single place where an error gets its status. Looked up along the class's MRO, so a
# subclass may differ from its parent (NotYourWallet is 400 on money routes, as in the original).
STATUS: dict[type[e.DomainError], int] = {
    e.InvalidAmount: 400,
    e.InsufficientFunds: 400,
    e.LegsRefused: 400,
    e.WalletNotFound: 404,
    e.NotYourWallet: 400,
    e.TargetWalletNotFound: 400,
    e.SameWallet: 400,
    e.CurrencyNotFound: 400,
    e.RateNotFound: 400,
    e.RateStale: 409,
    e.RateArbitrage: 409,
    e.RateChangeTooLarge: 409,
    e.CommissionRateTooHigh: 400,
    e.ServiceWalletNotFound: 400,
    e.ExternalWalletNotFound: 400,
    e.ExternalWalletExists: 409,
    e.TransactionNotFound: 404,
    e.AlreadyReversed: 409,
    e.NotReversible: 409,
    e.ReversalNotCovered: 409,
    e.SettlementConflict: 409,
    e.TransactionNotStale: 409,
    e.InvalidTransactionType: 400,
    e.InvalidWebhookUrl: 400,
    e.TooManyWebhooks: 409,
    e.WebhookNotFound: 404,
    e.UnknownEventCursor: 400,
    e.DuplicateAccount: 409,
    e.InvalidCredentials: 401,
    e.TokenMissing: 401,
    e.TokenInvalid: 401,
    e.TokenExpired: 401,
    e.WrongRole: 401,
    e.IdempotencyKeyReused: 422,
    e.Overloaded: 503,
    e.Unavailable: 503,
    e.OutcomeUnknown: 500,
    e.RateProviderError: 502,
    RequestError: 400,
    ValidationFailed: 422,
    ParameterConflict: 400,
    MalformedBody: 400,
    UnsupportedMediaType: 415,
    InvalidIdempotencyKey: 400,
    OperatorKeyRequired: 403,
    e.InternalFailure: 500,
}

# Errors raised as aiohttp HTTP exceptions (routing, body size, handlers outside the domain):
# status -> (code, meaning).
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request could not be read (including anything the HTTP parser refuses)."),
    401: ("token_invalid", "The token is not valid (for example its account no longer exists)."),
    404: ("not_found", "No such path."),
    405: ("method_not_allowed", "The path exists, not with this method (`Allow` lists the methods)."),
    408: ("request_timeout", "The request was not received in time."),
    413: ("payload_too_large", "The body exceeds WALLETD_MAX_BODY_BYTES."),
    414: ("uri_too_long", "The request line is longer than 8190 bytes (answered before any route is looked up)."),
    415: ("unsupported_media_type", "A non-empty body that is not JSON."),
    431: ("header_too_large", "A header line is longer than 8192 bytes, or there are more than 128 of them."),
    429: ("too_many_attempts", "Too many failed logins for this account or address (or failed operator keys from "
                               "this address); retry after `Retry-After` seconds."),
    500: ("internal_error", "A bug; the log has the request id."),
    503: ("unavailable", "Not able to serve now; nothing moved, retry after `Retry-After`."),
}

# Answered before any request is parsed (server.ConnectionCap's canned response): (code, status, meaning).
CONNECTION_CAP = ("too_many_connections", 503,
                  "More open connections than WALLETD_MAX_CONNECTIONS; nothing was read, retry after `Retry-After`.")

# 401s say how to authenticate (RFC 7235); RFC 6750's error="invalid_token" where a token was sent.
_BEARER = 'Bearer realm="walletd"'
BASIC_CHALLENGE = 'Basic realm="walletd"'
_CHALLENGE = {
    e.TokenExpired: _BEARER + ', error="invalid_token", error_description="the token has expired"',
    e.WrongRole: _BEARER + ', error="invalid_token", error_description="the token is of the other role"',
    e.TokenInvalid: _BEARER + ', error="invalid_token", error_description="not a token walletd issued"',
}


def status_of(cls: type[e.DomainError]) -> int:
    return next((STATUS[c] for c in cls.__mro__ if c in STATUS), 400)


def catalogue() -> list[tuple[str, int, str]]:
    """Every code with its status and meaning (docs/errors.md, OpenAPI description), one row per
    (code, status)."""
    rows: dict[tuple[str, int], str] = {}
    for cls in STATUS:
        rows.setdefault((cls.code, status_of(cls)), " ".join((cls.__doc__ or "").split()))
    for status, (code, meaning) in HTTP_CODES.items():
        rows.setdefault((code, status), meaning)
    rows.setdefault(CONNECTION_CAP[:2], CONNECTION_CAP[2])
    return sorted((code, status, meaning) for (code, status), meaning in rows.items())


_dumps = functools.partial(json.dumps, default=str)
# The body's fields in the order every error answer writes them (nested objects: keys sorted),
# so a refusal stored under an Idempotency-Key, which comes back from jsonb reordered, replays
# with the bytes of its first answer.
_ERROR_FIELDS = ("status", "code", "message", "request_id", "errors", "detail")


def _sorted(value):
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def render_error(status: int, body: dict, headers: dict | None = None) -> web.Response:
    """An error answer from its JSON body: the one serializer of first answers and replays."""
    metrics.answered_error(body["code"])
    ordered = {key: _sorted(body[key]) for key in _ERROR_FIELDS if key in body}
    ordered.update((key, _sorted(body[key])) for key in sorted(body) if key not in ordered)
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return web.Response(text=_dumps(ordered), status=status, content_type="application/json",
                        headers=headers or None)


def error_response(status: int, code: str, message: str, request_id: str | None = None,
                   headers: dict | None = None, **extra) -> web.Response:
    return render_error(status, {"status": status, "code": code, "message": message, "request_id": request_id,
                                 **extra}, headers)


def error_body(exc: e.DomainError, request_id: str | None) -> tuple[int, dict]:
    """A domain error's status and JSON body (JSON-ready: exactly what a stored copy reads back):
    what its answer carries, and what an Idempotency-Key remembers of a refusal."""
    status = status_of(type(exc))
    body: dict = {"status": status, "code": exc.code, "message": exc.message, "request_id": request_id}
    if exc.errors:
        body["errors"] = exc.errors
    if exc.detail:
        body["detail"] = exc.detail
    return status, json.loads(_dumps(body))


def domain_error_response(exc: e.DomainError, request_id: str | None, challenge: str | None = None) -> web.Response:
    status, body = error_body(exc, request_id)
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = challenge or next(
            (value for cls, value in _CHALLENGE.items() if isinstance(exc, cls)), _BEARER)
    return render_error(status, body, headers)


def http_code(cls: type[web.HTTPException]) -> str:
    """An HTTP exception's code: its own `code` attribute (auth.throttle.TooManyAttempts), else by status."""
    fallback = "bad_request" if cls.status_code < 500 else "internal_error"
    return getattr(cls, "code", None) or HTTP_CODES.get(cls.status_code, (fallback, ""))[0]


def http_error_response(exc: web.HTTPException, request_id: str | None) -> web.Response:
    code = http_code(type(exc))
    headers = {k: v for k, v in exc.headers.items() if k in ("WWW-Authenticate", "Allow", "Retry-After")}
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", _CHALLENGE[e.TokenInvalid])
    return error_response(exc.status, code, exc.reason, request_id, headers)
