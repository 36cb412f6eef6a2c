"""Audit lines written at the HTTP edge, where the outcome becomes a response: on the
money-moving routes `money.refused` (reason = the error's code) and `money.replayed` (a stored
first answer, a movement or a refusal, given again for an Idempotency-Key; `status` says which);
on every route the operator calls, `operator.action` (principal "operator", the route and its
outcome). The ledger logs what moved; these say what was asked for, by whom, and how it ended,
with the request id."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from walletd.appkeys import request_id_key
from walletd.auth.tokens import Principal
from walletd.domain.errors import DomainError
from walletd.logs import get_logger

log = get_logger("walletd.audit")

# The wallet a movement debits or holds, by parameter name (transfer, deposit, withdraw).
_WALLET_FIELDS = ("source_wallet_id", "wallet_id", "from_wallet_id")


def _subject(params: BaseModel | None) -> dict:
    if params is None:
        return {}
    found: dict = {}
    wallet = next((getattr(params, name) for name in _WALLET_FIELDS if hasattr(params, name)), None)
    if wallet is not None:
        found["wallet"] = str(wallet)
    for name in ("target_wallet_id", "transaction_id", "new_status"):
        value = getattr(params, name, None)
        if value is not None:
            found[name] = str(value)
    amount = getattr(params, "amount", None)
    if amount is not None:
        found["amount"] = f"{amount:f}"
    return found


def refused(request: web.Request, exc: DomainError, principal: Principal | None, params: BaseModel | None) -> None:
    log.info("money.refused", reason=exc.code, path=request.path, principal=principal and principal.subject,
             request_id=request.get(request_id_key), **_subject(params))


def operator_action(request: web.Request, route: str, outcome: str, params: BaseModel | None) -> None:
    log.info("operator.action", principal="operator", method=request.method, route=route, outcome=outcome,
             request_id=request.get(request_id_key), **_subject(params))


def replayed(request: web.Request, principal: Principal | None, params: BaseModel | None, status: int) -> None:
    log.info("money.replayed", path=request.path, status=status, principal=principal and principal.subject,
             idempotency_key=request.headers.get("Idempotency-Key"), request_id=request.get(request_id_key),
             **_subject(params))
