"""Endpoints of the operator beyond rates and settlements: reversals."""

from __future__ import annotations

from aiohttp import web

from walletd.appkeys import pool_key, request_id_key
from walletd.auth.operator import OperatorPrincipal
from walletd.domain import errors
from walletd.domain.commands import Reverse
from walletd.domain.reversal import reversible
from walletd.handlers.commands import MOVE_ERRORS, hand_to_actors, idempotency, wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import ReverseParams, TxOut
from walletd.persistence import transactions

routes = Routes()

_REVERSE_DOC = (
    "Operator only. One compensating journal entry: the original's postings negated, at the original's amounts and "
    "rate. The answer is the new record (type `reversal`, parent_id = the original), which both parties' histories "
    "list. Once per original: a second reversal is 409 already_reversed. If a wallet the original credited no "
    "longer holds the amount, 409 insufficient_funds and nothing moves. When the original names a payment "
    "service (a deposit), it gets the event `transaction.reversed`, written in the same transaction.")


@routes("POST", "/service/transaction/reverse", summary="Reverse a completed transfer or a paid deposit",
        description=_REVERSE_DOC, auth="operator", params=ReverseParams, response=TxOut, tags=["operator"],
        idempotent=True, errors=[errors.TransactionNotFound, errors.NotReversible, errors.AlreadyReversed,
                                 errors.ReversalNotCovered, *MOVE_ERRORS])
async def reverse_transaction(request: web.Request, principal: OperatorPrincipal, params: ReverseParams,
                              raw_params: dict):
    target = await transactions.reversal_target(request.app[pool_key], params.transaction_id)
    if target is None:
        raise errors.TransactionNotFound()
    original, wallet_ids = target
    if not reversible(original) or not wallet_ids:  # the ledger checks again, under its locks
        raise errors.NotReversible(f"only a completed transfer or a paid deposit can be reversed; this is a "
                                   f"{original['type']} ({original['status']})")
    command = Reverse(original["id"], original["to_wallet_id"], frozenset(wallet_ids), request.get(request_id_key),
                      idempotency(request, principal, raw_params))
    result = await hand_to_actors(request, command)
    wake_delivery(request.app)  # its event is committed: send it now rather than at the next poll
    return result
