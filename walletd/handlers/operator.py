"""Endpoints of the operator: reversals."""

from __future__ import annotations

import hmac

from aiohttp import web

from walletd.appkeys import pool_key, principal_key, request_id_key, settings_key
from walletd.auth.throttle import TooManyAttempts
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.ledger import Reverse
from walletd.domain.policy import OPERATOR_USER_ID
from walletd.domain.reversal import reversible
from walletd.events.delivery import wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import OperatorKeyRequired
from walletd.handlers.identity import throttle_key
from walletd.handlers.money import MOVE_ERRORS, idempotency, run
from walletd.handlers.schemas import ReverseParams, TxOut
from walletd.logs import get_logger
from walletd.persistence import transactions

routes = Routes()
log = get_logger("walletd.operator")
OPERATOR = Principal(OPERATOR_USER_ID, "operator")  # whose Idempotency-Keys the operator's are
OPERATOR_HEADER = {"name": "X-Operator-Key", "in": "header", "required": True, "schema": {"type": "string"},
                   "description": "The operator credential (env WALLETD_OPERATOR_KEY)."}


async def require_operator(request: web.Request) -> Principal:
    """The operator principal: header X-Operator-Key equal to WALLETD_OPERATOR_KEY, compared in
    constant time. The key is a password too, so a wrong one counts against the client's address
    (and past the limit every attempt from it is 429, the right key included)."""
    settings = request.app[settings_key]
    if settings.operator_key:
        pool, throttle, address = request.app[pool_key], request.app[throttle_key], request.remote or "unknown"
        await throttle.check(pool, None, address)
        if hmac.compare_digest(request.headers.get("X-Operator-Key", "").encode(), settings.operator_key.encode()):
            request[principal_key] = "operator"
            return OPERATOR
        await throttle.failed(pool, None, address)
    log.warning("operator.refused", path=request.path, configured=bool(settings.operator_key))
    raise OperatorKeyRequired("operator credential required (X-Operator-Key)" if settings.operator_key else
                              "operator actions are closed: set WALLETD_OPERATOR_KEY and send it as X-Operator-Key")


_REVERSE_DOC = (
    "One compensating journal entry: the original's postings negated, at the original's amounts and rate. "
    "The answer is the new record (type `reversal`, parent_id = the original), which both parties' histories "
    "list. Once per original: a second reversal is 409 already_reversed. If a wallet the original credited no "
    "longer holds the amount, 409 insufficient_funds and nothing moves. When the original names a payment "
    "service (a deposit), it gets the event `transaction.reversed`, written in the same transaction.")


@routes("POST", "/service/transaction/reverse", summary="Reverse a completed transfer or a paid deposit (operator)",
        description=_REVERSE_DOC, params=ReverseParams, response=TxOut, tags=["operator"], idempotent=True,
        extra_headers=[OPERATOR_HEADER],
        errors=[OperatorKeyRequired, TooManyAttempts, errors.TransactionNotFound, errors.NotReversible,
                errors.AlreadyReversed, errors.ReversalNotCovered, *MOVE_ERRORS])
async def reverse_transaction(request: web.Request, params: ReverseParams, raw_params: dict):
    operator = await require_operator(request)
    target = await transactions.reversal_target(request.app[pool_key], params.transaction_id)
    if target is None:
        raise errors.TransactionNotFound()
    original, wallet_ids = target
    if not reversible(original) or not wallet_ids:  # the ledger checks again, under its locks
        raise errors.NotReversible(f"only a completed transfer or a paid deposit can be reversed; this is a "
                                   f"{original['type']} ({original['status']})")
    result = await run(request, Reverse(original["id"], original["to_wallet_id"], frozenset(wallet_ids),
                                        request.get(request_id_key), idempotency(request, operator, raw_params)))
    wake_delivery(request.app)  # its event is committed: send it now rather than at the next poll
    return result
