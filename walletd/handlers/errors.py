"""One table mapping each domain error to an HTTP status, and the JSON error shape."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from walletd.domain import errors as e

STATUS = {
    e.InvalidAmount: 400,
    e.InsufficientFunds: 400,
    e.WalletNotFound: 404,
    e.NotYourWallet: 400,
    e.TargetWalletNotFound: 400,
    e.SameWallet: 400,
    e.CurrencyNotFound: 400,
    e.RateNotFound: 400,
    e.RateStale: 409,
    e.ServiceWalletNotFound: 400,
    e.ExternalWalletNotFound: 400,
    e.ExternalWalletExists: 409,
    e.TransactionNotFound: 404,
    e.InvalidStatusUpdate: 400,
    e.SettlementConflict: 409,
    e.InvalidTransactionType: 400,
    e.DuplicateAccount: 409,
    e.InvalidCredentials: 401,
    e.IdempotencyKeyReused: 422,
    e.Overloaded: 503,
    e.RateProviderError: 502,
    e.Unavailable: 503,
    e.OutcomeUnknown: 500,
    e.InternalFailure: 500,
}


_dumps = functools.partial(json.dumps, default=str)


def error_response(status: int, message: str, request_id: str | None = None, **extra) -> web.Response:
    body = {"status": status, "message": message, "request_id": request_id, **extra}
    headers = {"Retry-After": "1"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def domain_error_response(exc: e.DomainError, request_id: str | None) -> web.Response:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    extra = {"detail": exc.detail} if exc.detail else {}
    return error_response(status, exc.message, request_id, **extra)
