"""Money-moving endpoints: each builds one command and hands it to the wallet's actor."""

from __future__ import annotations

from datetime import datetime, timezone

from aiohttp import web

from walletd.appkeys import ledger_key, pool_key, request_id_key, settings_key
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.access import NOT_YOUR_WALLET, own_wallet_refusal, refuse, same_wallet_refusal
from walletd.domain.commands import RequestDeposit, RequestWithdraw, Transfer
from walletd.domain.vocabulary import TxType
from walletd.handlers.commands import MOVE_ERRORS, fixed_rate, hand_to_actors, idempotency, wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import (
    DepositParams,
    ExchangeParams,
    QuoteOut,
    TransferParams,
    TxOut,
    WithdrawParams,
)
from walletd.persistence import accounts, rates

routes = Routes()

_WALLET_ERRORS = [(errors.NotYourWallet, NOT_YOUR_WALLET), errors.InvalidAmount]


@routes("POST", "/wallet/transfer", summary="Transfer to any user's wallet, converting currency when they differ",
        description="Same currency: rate 1. Otherwise converted = amount × stored rate, truncated to 10 places "
                    "(exactly the /wallet/exchange quote). No commission.",
        auth="user", params=TransferParams, response=TxOut, tags=["money"], idempotent=True,
        errors=_WALLET_ERRORS + MOVE_ERRORS + [errors.InsufficientFunds, errors.TargetWalletNotFound, errors.SameWallet,
                                               errors.RateNotFound, errors.RateStale])
async def transfer(request: web.Request, principal: Principal, params: TransferParams, raw_params: dict):
    refuse(same_wallet_refusal(params.source_wallet_id, params.target_wallet_id))
    # Before the command may enter the wallet's queue: someone naming another's wallet must neither
    # fill its queue nor make an actor for a wallet that is not theirs (or does not exist). The
    # target is the ledger's to check: its refusal is remembered under the Idempotency-Key.
    owner = await request.app[ledger_key].owner(principal.user_id, params.source_wallet_id,
                                                params.target_wallet_id)
    refuse(own_wallet_refusal(principal.user_id, owner))
    command = Transfer(principal.user_id, params.source_wallet_id, params.target_wallet_id, params.amount,
                       request.get(request_id_key), idempotency(request, principal, raw_params))
    return await hand_to_actors(request, command)


@routes("POST", "/wallet/deposit", summary="Request a deposit through a payment service (pending; moves nothing)",
        description="The record fixes the commission (commission_rate, commission) its settlement will charge.",
        auth="user", params=DepositParams, response=TxOut, tags=["money"], idempotent=True,
        errors=_WALLET_ERRORS + MOVE_ERRORS + [errors.ServiceWalletNotFound])
async def deposit(request: web.Request, principal: Principal, params: DepositParams, raw_params: dict):
    pool = request.app[pool_key]
    wallet = await _own_wallet(pool, principal, params.wallet_id)
    service = await accounts.service_wallets(pool, params.service_user_id, wallet["currency_id"])
    command = RequestDeposit(principal.user_id, wallet["id"], service["gateway_wallet_id"], params.service_user_id,
                             params.amount, request.get(request_id_key), idempotency(request, principal, raw_params),
                             commission_rate=fixed_rate(request, service, TxType.DEPOSIT))
    result = await hand_to_actors(request, command)
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
    command = RequestWithdraw(principal.user_id, wallet["id"], service["gateway_wallet_id"], params.service_user_id,
                              external["id"], params.amount, request.get(request_id_key),
                              idempotency(request, principal, raw_params),
                              commission_rate=fixed_rate(request, service, TxType.WITHDRAW))
    result = await hand_to_actors(request, command)
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


async def _own_wallet(pool, principal: Principal, wallet_id):
    row = await accounts.claimed_wallet(pool, principal.user_id, wallet_id)
    refuse(own_wallet_refusal(principal.user_id, accounts.owner(row)))
    return row
