"""Ending a pending deposit or withdrawal: the payment service settles what names it; the operator
ends what went stale (walletd/domain/settlement.py has the rules). A payment-service settlement
refused because the operator had decided otherwise is a conflict: 409 for the payment service,
and a `settlement.conflict` event, a counter and a warning line for the person who reconciles."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated

from aiohttp import web
from pydantic import Field

from walletd import metrics
from walletd.appkeys import pool_key, request_id_key
from walletd.auth.operator import OPERATOR, OperatorPrincipal
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.access import check_settler
from walletd.domain.commands import EXPIRY
from walletd.domain.commands import OPERATOR as BY_OPERATOR
from walletd.domain.commands import SERVICE as BY_SERVICE
from walletd.domain.policy import settle_command
from walletd.domain.vocabulary import TxType
from walletd.handlers.commands import MOVE_ERRORS, fixed_rate, hand_to_actors, idempotency, wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import Model, SettleParams, StaleParams, TxOut
from walletd.logs import get_logger
from walletd.persistence import accounts, outbox, stale, transactions

routes = Routes()
log = get_logger("walletd.service")

_SETTLE_DOC = ("Exactly once: only a pending transaction moves money. Repeating the same outcome answers 200 with "
               "the same record; the other outcome afterwards is 409 transaction_already_settled. The payment "
               "service named on the transaction settles it, stale or not (others: 404); the operator "
               "(X-Operator-Key instead of a token) may end it only once it is stale (409 transaction_not_stale "
               "before). A payment-service settlement that contradicts the operator's is 409 and raises a "
               "settlement.conflict event. The commission charged is the one fixed on the record. `reject` is a "
               "synonym of `rejected`.")
_SETTLE_ERRORS = [errors.TransactionNotFound, errors.InvalidTransactionType, errors.SettlementConflict,
                  errors.TransactionNotStale, errors.ServiceWalletNotFound, errors.InsufficientFunds, *MOVE_ERRORS]
_SETTLERS = ("service", "operator")
_SETTLE_SCOPE = {"service": "what names it, stale or not", "operator": "stale ones (and expired ones)"}


async def _settle(request: web.Request, principal: Principal | OperatorPrincipal, params: SettleParams,
                  raw_params: dict, kind: str):
    pool = request.app[pool_key]
    by_operator = principal is OPERATOR
    # The record and its payment service's wallets and rates, in one lookup.
    pending = check_settler(await accounts.settlement_lookup(pool, params.transaction_id),
                            None if by_operator else principal.user_id, kind)
    if pending["service_wallet_id"] is None:
        raise errors.ServiceWalletNotFound()
    command = settle_command(
        pending, new_status=params.new_status, service_wallet_id=pending["service_wallet_id"],
        gateway_wallet_id=pending["gateway_wallet_id"], fallback_rate=fixed_rate(request, pending, kind),
        settled_by=BY_OPERATOR if by_operator else BY_SERVICE, request_id=request.get(request_id_key),
        idempotency=idempotency(request, principal, raw_params))
    try:
        result = await hand_to_actors(request, command)
    except errors.SettlementConflict as exc:
        if not by_operator and exc.detail.get("settled_by") in (BY_OPERATOR, EXPIRY):
            await _report_conflict(request, pending, params.new_status, exc)
        raise
    wake_delivery(request.app)  # its event is committed: send it now rather than at the next poll
    return result


async def _report_conflict(request: web.Request, pending, refused: str, exc: errors.SettlementConflict) -> None:
    """The payment service answered after someone else decided: tell the people who reconcile. One
    event per (transaction, refused outcome), however often the payment service retries."""
    refused = "rejected" if refused == "reject" else refused
    decided = {"refused_status": refused, "status": exc.detail.get("status"), "settled_by": exc.detail["settled_by"]}
    metrics.SETTLEMENT_CONFLICTS.inc()
    log.warning("settlement.conflict", transaction_id=str(pending["id"]), type=pending["type"],
                service_user_id=str(pending["service_user_id"]), request_id=request.get(request_id_key), **decided)
    pool = request.app[pool_key]
    record = await transactions.record(pool, pending["id"])
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"walletd:settlement.conflict:{pending['id']}:{refused}")
    event = {"id": str(event_id), "type": "settlement.conflict",
             "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "data": record,
             "conflict": decided}
    async with pool.acquire() as conn:
        await outbox.publish(conn, [(pending["service_user_id"], event)])
    wake_delivery(request.app)


@routes("PUT", "/service/transaction/deposit", summary="Settle a pending deposit: paid or rejected",
        description=_SETTLE_DOC + " paid: gateway −A, user +(A−C), service wallet +C with C the record's commission.",
        auth=_SETTLERS, scope=_SETTLE_SCOPE, params=SettleParams, response=TxOut, tags=["service"], idempotent=True,
        errors=_SETTLE_ERRORS)
async def settle_deposit(request: web.Request, principal: Principal | OperatorPrincipal, params: SettleParams,
                         raw_params: dict):
    return await _settle(request, principal, params, raw_params, TxType.DEPOSIT)


@routes("PUT", "/service/transaction/withdraw", summary="Settle a pending withdrawal: paid or rejected",
        description=_SETTLE_DOC + " paid: hold −A, service wallet +C, gateway +(A−C) paid out to the user's external "
                                  "wallet. rejected: the hold returns to the balance.",
        auth=_SETTLERS, scope=_SETTLE_SCOPE, params=SettleParams, response=TxOut, tags=["service"], idempotent=True,
        errors=_SETTLE_ERRORS)
async def settle_withdraw(request: web.Request, principal: Principal | OperatorPrincipal, params: SettleParams,
                          raw_params: dict):
    return await _settle(request, principal, params, raw_params, TxType.WITHDRAW)


class StaleOut(Model):
    transactions: Annotated[list[TxOut], Field(description="Oldest first")]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null when this page is the last")


@routes("GET", "/service/transactions/stale", summary="Stale pending deposits and withdrawals, oldest first",
        description="Pending past WALLETD_PENDING_TTL, still waiting for the payment service (their holds stay), "
                    "and records the previous release expired, left to reconcile. A service token lists its own; "
                    "the operator key lists every service's.",
        auth=_SETTLERS, scope={"service": "its own", "operator": "all"}, params=StaleParams, response=StaleOut,
        tags=["service"])
async def list_stale(request: web.Request, principal: Principal | OperatorPrincipal, params: StaleParams):
    service_user_id = None if principal is OPERATOR else principal.user_id
    records = await stale.list_stale(request.app[pool_key], service_user_id, params.after, params.limit + 1)
    page = records[:params.limit]
    return StaleOut(transactions=[TxOut(**r) for r in page],
                    next_cursor=page[-1]["id"] if len(records) > params.limit else None)
