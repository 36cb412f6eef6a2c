"""Endpoints of the payment service (role `service`): settlement, rates, currencies, commissions."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import aiohttp
from aiohttp import web

from walletd.appkeys import http_key, pool_key, request_id_key, settings_key
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.policy import DEFAULT_COMMISSION, CommissionRates, check_settler, settle_command
from walletd.domain.vocabulary import TxType
from walletd.events.delivery import wake_delivery
from walletd.handlers.endpoint import Routes
from walletd.handlers.money import MOVE_ERRORS, idempotency, run
from walletd.handlers.schemas import (
    CommissionOut,
    CommissionParams,
    ConversionOut,
    ConversionParams,
    LastUpdateOut,
    RateOut,
    SetRateParams,
    SettleParams,
    StatusOut,
    TxOut,
)
from walletd.logs import get_logger
from walletd.persistence import accounts, rates, transactions

routes = Routes()
log = get_logger("walletd.service")

_SETTLE_DOC = ("Exactly once: only a pending transaction moves money. Repeating the same outcome answers 200 with "
               "the same record; the other outcome afterwards is 409. Only the service user named on the "
               "transaction may settle it (others: 404). `reject` is a synonym of `rejected`.")


async def _settle(request: web.Request, principal: Principal, params: SettleParams, raw_params: dict, kind: str):
    pool = request.app[pool_key]
    pending = check_settler(await transactions.find_transaction(pool, params.transaction_id), principal.user_id, kind)
    service = await accounts.service_wallets(pool, principal.user_id, pending["currency_id"])
    command = settle_command(
        pending, service_user_id=principal.user_id, new_status=params.new_status,
        service_wallet_id=service["service_wallet_id"], gateway_wallet_id=service["gateway_wallet_id"],
        rates=CommissionRates(service["deposit_rate"], service["withdraw_rate"]),
        request_id=request.get(request_id_key), idempotency=idempotency(request, principal, raw_params))
    result = await run(request, command)
    wake_delivery(request.app)  # its event is committed: send it now rather than at the next poll
    return result


_SETTLE_ERRORS = [errors.TransactionNotFound, errors.InvalidTransactionType, errors.SettlementConflict,
                  errors.TransactionExpired,
                  errors.ServiceWalletNotFound, *MOVE_ERRORS]


@routes("PUT", "/service/transaction/deposit", summary="Settle a pending deposit: paid or rejected",
        description=_SETTLE_DOC + " paid: gateway −A, user +(A−C), service wallet +C with C = A × deposit rate.",
        auth="service", params=SettleParams, response=TxOut, tags=["service"], idempotent=True, errors=_SETTLE_ERRORS)
async def settle_deposit(request: web.Request, principal: Principal, params: SettleParams, raw_params: dict):
    return await _settle(request, principal, params, raw_params, TxType.DEPOSIT)


@routes("PUT", "/service/transaction/withdraw", summary="Settle a pending withdrawal: paid or rejected",
        description=_SETTLE_DOC + " paid: hold −A, service wallet +C, gateway +(A−C) paid out to the user's external "
                                  "wallet. rejected: the hold returns to the balance.",
        auth="service", params=SettleParams, response=TxOut, tags=["service"], idempotent=True, errors=_SETTLE_ERRORS)
async def settle_withdraw(request: web.Request, principal: Principal, params: SettleParams, raw_params: dict):
    return await _settle(request, principal, params, raw_params, TxType.WITHDRAW)


async def _provider(request: web.Request, path: str) -> dict:
    settings = request.app[settings_key]
    if not settings.rates_url:
        raise errors.RateProviderError("no rate provider configured (WALLETD_RATES_URL)")
    url = settings.rates_url.rstrip("/") + path
    try:
        async with request.app[http_key].get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                raise errors.RateProviderError(f"rate provider answered {response.status}")
            return json.loads(await response.text(), parse_float=Decimal)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise errors.RateProviderError(f"rate provider unavailable: {type(exc).__name__}") from None


@routes("POST", "/service/exchange-rates/update", summary="Pull rates from the provider (WALLETD_RATES_URL/latest)",
        description="Provider JSON in the exchangeratesapi.io `latest` shape (base, timestamp, rates); cross rates "
                    "are derived through the base: rate(a→b) = rates[b] / rates[a], rounded to 10 places.",
        auth="service", response=StatusOut, tags=["rates"], errors=[errors.RateProviderError])
async def update_rates(request: web.Request, principal: Principal):
    data = await _provider(request, "/latest")
    try:
        base = str(data["base"])
        quoted = {str(code): Decimal(str(rate)) for code, rate in dict(data["rates"]).items()}
        stamp = data.get("timestamp")
        at = datetime.fromtimestamp(int(stamp), timezone.utc) if stamp is not None else datetime.now(timezone.utc)
    except (KeyError, TypeError, ValueError, ArithmeticError):
        raise errors.RateProviderError("rate provider sent an unexpected document") from None
    count = await rates.store_provider_rates(request.app[pool_key], base, quoted, at)
    log.info("rates.updated", pairs=count, base=base, principal=str(principal.user_id))
    return StatusOut(status="success", message=f"{count} exchange rates updated")


@routes("GET", "/service/exchange-rates/last-update", summary="When the newest rate was stored",
        auth="service", response=LastUpdateOut, tags=["rates"],
        errors=[(errors.RateNotFound, "Rate not found in the database")])
async def last_update(request: web.Request, principal: Principal):
    at = await rates.last_update(request.app[pool_key])
    if at is None:
        raise errors.RateNotFound("Rate not found in the database")
    return LastUpdateOut(iso=at.isoformat(), datetime=at)


@routes("POST", "/service/exchange-rates/get-conversion", summary="Convert an amount between currency codes",
        auth="service", params=ConversionParams, response=ConversionOut, tags=["rates"],
        errors=[errors.InvalidAmount, errors.CurrencyNotFound, (errors.RateNotFound, "Rate not found in the database"),
                errors.RateStale])
async def get_conversion(request: web.Request, principal: Principal, params: ConversionParams):
    pool = request.app[pool_key]
    ids = await rates.currency_ids(pool)
    src, dst = params.from_currency.upper(), params.to_currency.upper()
    if src not in ids or dst not in ids:
        raise errors.CurrencyNotFound()
    book = await rates.rate_book(pool, datetime.now(timezone.utc), request.app[settings_key].rates_max_age)
    try:
        _, converted = book.quote(ids[src], ids[dst], params.amount)
    except errors.RateNotFound:
        raise errors.RateNotFound("Rate not found in the database") from None
    return ConversionOut(from_currency=src, to_currency=dst, original_amount=params.amount, converted_amount=converted)


@routes("POST", "/service/exchange-rates/set", summary="Set one rate directly (operator correction)",
        description="Stores rate(from→to) as given, stamped now. It does not touch the reverse pair.",
        auth="service", params=SetRateParams, response=RateOut, tags=["rates"],
        errors=[errors.InvalidAmount, errors.CurrencyNotFound])
async def set_rate(request: web.Request, principal: Principal, params: SetRateParams):
    if params.from_currency == params.to_currency:
        raise errors.CurrencyNotFound("from_currency and to_currency must differ")
    row = await rates.set_rate(request.app[pool_key], params.from_currency, params.to_currency, params.rate)
    log.info("rates.set", from_currency=params.from_currency, to_currency=params.to_currency,
             rate=f"{params.rate:f}", principal=str(principal.user_id))
    return RateOut(from_currency=row[0], to_currency=row[1], rate=row[2], updated_at=row[3])


@routes("POST", "/service/currencies/update",
        summary="Add currencies known to the provider (WALLETD_RATES_URL/symbols)",
        description="Provider JSON in the exchangeratesapi.io `symbols` shape. Every existing account gets a "
                    "wallet in each new currency.",
        auth="service", response=StatusOut, tags=["rates"], errors=[errors.RateProviderError])
async def update_currencies(request: web.Request, principal: Principal):
    data = await _provider(request, "/symbols")
    try:
        symbols = {str(code).upper(): str(name) for code, name in dict(data["symbols"]).items()
                   if 2 <= len(str(code)) <= 10 and str(code).isalnum()}
    except (KeyError, TypeError, ValueError):
        raise errors.RateProviderError("rate provider sent an unexpected document") from None
    added = await rates.add_currencies(request.app[pool_key], symbols)
    log.info("currencies.updated", added=added, principal=str(principal.user_id))
    return StatusOut(status="success", message=f"{added} currencies added")


@routes("GET", "/service/commission-rates", summary="The caller's commission rates per currency",
        description=f"Defaults: deposit {DEFAULT_COMMISSION.deposit}, withdraw {DEFAULT_COMMISSION.withdraw}.",
        auth="service", response=None, tags=["service"])
async def get_commissions(request: web.Request, principal: Principal):
    rows = await rates.commissions(request.app[pool_key], principal.user_id)
    return web.json_response({"commission_rates": [CommissionOut(**dict(r)).model_dump(mode="json") for r in rows]})


@routes("POST", "/service/commission-rates", summary="Set the caller's commission rates for one currency",
        auth="service", params=CommissionParams, response=CommissionOut, tags=["service"],
        errors=[errors.CurrencyNotFound])
async def set_commission(request: web.Request, principal: Principal, params: CommissionParams):
    row = await rates.set_commission(request.app[pool_key], principal.user_id, params.currency_id,
                                     params.deposit_rate, params.withdraw_rate)
    log.info("commission.set", currency_id=params.currency_id, deposit_rate=f"{params.deposit_rate:f}",
             withdraw_rate=f"{params.withdraw_rate:f}", principal=str(principal.user_id))
    return CommissionOut(**dict(row))
