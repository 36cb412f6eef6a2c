"""Money-moving endpoints: each builds one command and hands it to the wallet's actor."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from aiohttp import web

from walletd.appkeys import ledger_key, pool_key, registry_key, request_id_key, settings_key
from walletd.auth.operator import OperatorPrincipal
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.ledger import Idempotency, RequestDeposit, RequestWithdraw, Transfer
from walletd.domain.policy import CommissionRates, fixed_commission_rate
from walletd.domain.vocabulary import TxType
from walletd.events.delivery import wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import InvalidIdempotencyKey
from walletd.handlers.schemas import (
    DepositParams,
    ExchangeParams,
    QuoteOut,
    TransferParams,
    TxOut,
    WithdrawParams,
)
from walletd.persistence import accounts, rates
from walletd.persistence.outcomes import Replay

routes = Routes()

_WALLET_ERRORS = [(errors.NotYourWallet, "Wrong wallet ID or it is not your wallet ID"), errors.InvalidAmount]
MOVE_ERRORS = [errors.IdempotencyKeyReused, InvalidIdempotencyKey, errors.Overloaded, errors.OutcomeUnknown,
               errors.InternalFailure]


def idempotency(request: web.Request, principal: Principal | OperatorPrincipal, raw_params: dict) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 128:
        raise InvalidIdempotencyKey()
    if not key.isprintable() or not key.isascii():
        # Keys are stored as text: a byte that is not UTF-8 (or a control character) must be
        # refused here, never reach the database inside somebody else's batch.
        raise InvalidIdempotencyKey("Idempotency-Key must be printable ASCII")
    canonical = json.dumps({"path": request.path, "params": raw_params}, sort_keys=True, default=str)
    return Idempotency(principal.user_id, key, hashlib.sha256(canonical.encode()).hexdigest())


async def run(request: web.Request, command) -> dict | Replay:
    """Hand the command to its wallet's actor. The reply is the ledger's tx_json record, or a
    Replay of the stored first one; endpoint.render writes both the same way."""
    return await request.app[registry_key].execute(command)


@routes("POST", "/wallet/transfer", summary="Transfer to any user's wallet, converting currency when they differ",
        description="Same currency: rate 1. Otherwise converted = amount × stored rate, truncated to 10 places "
                    "(exactly the /wallet/exchange quote). No commission.",
        auth="user", params=TransferParams, response=TxOut, tags=["money"], idempotent=True,
        errors=_WALLET_ERRORS + MOVE_ERRORS + [errors.InsufficientFunds, errors.TargetWalletNotFound, errors.SameWallet,
                                               errors.RateNotFound, errors.RateStale])
async def transfer(request: web.Request, principal: Principal, params: TransferParams, raw_params: dict):
    if params.source_wallet_id == params.target_wallet_id:
        raise errors.SameWallet()
    # Before the command may enter the wallet's queue: someone naming another's wallet must neither
    # fill its queue nor make an actor for a wallet that is not theirs (or does not exist).
    if not await request.app[ledger_key].owns(principal.user_id, params.source_wallet_id, params.target_wallet_id):
        raise errors.NotYourWallet("Wrong wallet ID or it is not your wallet ID")
    return await run(request, Transfer(principal.user_id, params.source_wallet_id, params.target_wallet_id,
                                       params.amount, request.get(request_id_key),
                                       idempotency(request, principal, raw_params)))


@routes("POST", "/wallet/deposit", summary="Request a deposit through a payment service (pending; moves nothing)",
        description="The record fixes the commission (commission_rate, commission) its settlement will charge.",
        auth="user", params=DepositParams, response=TxOut, tags=["money"], idempotent=True,
        errors=_WALLET_ERRORS + MOVE_ERRORS + [errors.ServiceWalletNotFound])
async def deposit(request: web.Request, principal: Principal, params: DepositParams, raw_params: dict):
    pool = request.app[pool_key]
    wallet = await _own_wallet(pool, principal, params.wallet_id)
    service = await accounts.service_wallets(pool, params.service_user_id, wallet["currency_id"])
    result = await run(request, RequestDeposit(principal.user_id, wallet["id"], service["gateway_wallet_id"],
                                               params.service_user_id, params.amount, request.get(request_id_key),
                                               idempotency(request, principal, raw_params),
                                               commission_rate=_fixed_rate(request, service, TxType.DEPOSIT)))
    wake_delivery(request.app)  # its event is committed: send it now rather than at the next poll
    return result


@routes("POST", "/wallet/withdraw", summary="Request a withdrawal: the amount is held until the service settles",
        description="balance −amount, reserved_balance +amount. Needs an external wallet in the currency. The record "
                    "fixes the commission (commission_rate, commission) its settlement will charge.",
        auth="user", params=WithdrawParams, response=TxOut, tags=["money"], idempotent=True,
        errors=_WALLET_ERRORS + MOVE_ERRORS + [errors.InsufficientFunds, errors.ServiceWalletNotFound,
                                               errors.ExternalWalletNotFound])
async def withdraw(request: web.Request, principal: Principal, params: WithdrawParams, raw_params: dict):
    pool = request.app[pool_key]
    wallet = await _own_wallet(pool, principal, params.from_wallet_id)
    service = await accounts.service_wallets(pool, params.service_user_id, wallet["currency_id"])
    external = await accounts.external_wallet(pool, principal.user_id, wallet["currency_id"])
    if external is None:
        raise errors.ExternalWalletNotFound()
    result = await run(request, RequestWithdraw(principal.user_id, wallet["id"], service["gateway_wallet_id"],
                                                params.service_user_id, external["id"], params.amount,
                                                request.get(request_id_key),
                                                idempotency(request, principal, raw_params),
                                                commission_rate=_fixed_rate(request, service, TxType.WITHDRAW)))
    wake_delivery(request.app)
    return result


@routes("POST", "/wallet/exchange", summary="Quote a currency exchange (moves no money)",
        description="Priced exactly like a transfer between wallets of the two currencies.",
        auth="user", params=ExchangeParams, response=QuoteOut, tags=["money"],
        errors=[errors.InvalidAmount, errors.CurrencyNotFound, errors.RateNotFound, errors.RateStale])
async def exchange(request: web.Request, principal: Principal, params: ExchangeParams):
    pool = request.app[pool_key]
    await rates.require_currencies(pool, params.from_currency, params.to_currency)
    book = await rates.rate_book(pool, datetime.now(timezone.utc), request.app[settings_key].rates_max_age)
    rate, converted = book.quote(params.from_currency, params.to_currency, params.amount)
    return QuoteOut(from_currency=params.from_currency, amount_int=params.amount, to_currency=params.to_currency,
                    rate=rate, amount_ext=converted)


def _fixed_rate(request: web.Request, service, kind: str):
    """The service's rate now, within the operator's ceiling: the record keeps it, and its
    settlement charges exactly the commission it fixes, whatever the service sets meanwhile."""
    rates = CommissionRates(service["deposit_rate"], service["withdraw_rate"])
    return fixed_commission_rate(rates, kind, request.app[settings_key].max_commission_rate)


async def _own_wallet(pool, principal: Principal, wallet_id):
    try:
        return await accounts.owned_wallet(pool, principal.user_id, wallet_id)
    except errors.WalletNotFound:
        raise errors.NotYourWallet("Wrong wallet ID or it is not your wallet ID") from None
