"""Rates, currencies and commissions: the operator sets rates and adds currencies; the payment
service (role `service`) reads rates and converts, and sets its own commissions within the
operator's ceiling. Settlement is in handlers/settlement.py."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import aiohttp
from aiohttp import web

from walletd.appkeys import http_key, pool_key, settings_key
from walletd.auth.operator import OperatorPrincipal
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.policy import DEFAULT_COMMISSION
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import (
    CommissionOut,
    CommissionParams,
    ConversionOut,
    ConversionParams,
    LastUpdateOut,
    RateOut,
    SetRateParams,
    StatusOut,
    UpdateRatesParams,
)
from walletd.logs import get_logger
from walletd.persistence import rates

routes = Routes()
log = get_logger("walletd.service")

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


_RATE_WRITE_ERRORS = [errors.RateArbitrage, errors.RateChangeTooLarge]


@routes("POST", "/service/exchange-rates/update", summary="Pull rates from the provider (WALLETD_RATES_URL/latest)",
        description="Operator only. Provider JSON in the exchangeratesapi.io `latest` shape (base, timestamp, "
                    "rates); cross rates are derived through the base: rate(a→b) = rates[b] / rates[a], cut to 10 "
                    "places toward the exchange desk. A pair moving further than WALLETD_RATE_MAX_CHANGE from its "
                    "stored rate needs force=true; a table in which a round trip would return more than it started "
                    "with is refused (rate_arbitrage), force or not.",
        auth="operator", params=UpdateRatesParams, response=StatusOut, tags=["rates"],
        errors=[errors.RateProviderError, *_RATE_WRITE_ERRORS])
async def update_rates(request: web.Request, principal: OperatorPrincipal, params: UpdateRatesParams):
    data = await _provider(request, "/latest")
    try:
        base = str(data["base"])
        quoted = {str(code): Decimal(str(rate)) for code, rate in dict(data["rates"]).items()}
        stamp = data.get("timestamp")
        at = datetime.fromtimestamp(int(stamp), timezone.utc) if stamp is not None else datetime.now(timezone.utc)
    except (KeyError, TypeError, ValueError, ArithmeticError):
        raise errors.RateProviderError("rate provider sent an unexpected document") from None
    settings = request.app[settings_key]
    count = await rates.store_provider_rates(request.app[pool_key], base, quoted, at, force=params.force,
                                             max_change=settings.rate_max_change)
    log.info("rates.updated", pairs=count, base=base, forced=params.force, principal=principal.subject)
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
        description="Operator only. Stores rate(from→to) as given, stamped now; it does not touch the reverse pair. "
                    "Refused with 409 rate_arbitrage when rate(from→to) × rate(to→from) (or any round trip through "
                    "the stored rates) would exceed 1, force or not; with 409 rate_change_too_large when it is "
                    "further than WALLETD_RATE_MAX_CHANGE from the stored rate, unless force=true.",
        auth="operator", params=SetRateParams, response=RateOut, tags=["rates"],
        errors=[errors.InvalidAmount, errors.CurrencyNotFound, *_RATE_WRITE_ERRORS])
async def set_rate(request: web.Request, principal: OperatorPrincipal, params: SetRateParams):
    if params.from_currency == params.to_currency:
        raise errors.CurrencyNotFound("from_currency and to_currency must differ")
    row = await rates.set_rate(request.app[pool_key], params.from_currency, params.to_currency, params.rate,
                               force=params.force, max_change=request.app[settings_key].rate_max_change)
    log.info("rates.set", from_currency=params.from_currency, to_currency=params.to_currency,
             rate=f"{params.rate:f}", forced=params.force, principal=principal.subject)
    return RateOut(from_currency=row[0], to_currency=row[1], rate=row[2], updated_at=row[3])


@routes("POST", "/service/currencies/update",
        summary="Add currencies known to the provider (WALLETD_RATES_URL/symbols)",
        description="Operator only. Provider JSON in the exchangeratesapi.io `symbols` shape. Every existing "
                    "account gets a wallet in each new currency.",
        auth="operator", response=StatusOut, tags=["rates"], errors=[errors.RateProviderError])
async def update_currencies(request: web.Request, principal: OperatorPrincipal):
    data = await _provider(request, "/symbols")
    try:
        symbols = {str(code).upper(): str(name) for code, name in dict(data["symbols"]).items()
                   if 2 <= len(str(code)) <= 10 and str(code).isalnum()}
    except (KeyError, TypeError, ValueError):
        raise errors.RateProviderError("rate provider sent an unexpected document") from None
    added = await rates.add_currencies(request.app[pool_key], symbols)
    log.info("currencies.updated", added=added, principal=principal.subject)
    return StatusOut(status="success", message=f"{added} currencies added")


@routes("GET", "/service/commission-rates", summary="The caller's commission rates per currency",
        description=f"Defaults: deposit {DEFAULT_COMMISSION.deposit}, withdraw {DEFAULT_COMMISSION.withdraw}.",
        auth="service", response=None, tags=["service"])
async def get_commissions(request: web.Request, principal: Principal):
    rows = await rates.commissions(request.app[pool_key], principal.user_id)
    return web.json_response({"commission_rates": [CommissionOut(**dict(r)).model_dump(mode="json") for r in rows]})


@routes("POST", "/service/commission-rates", summary="Set the caller's commission rates for one currency",
        description="Each rate at most WALLETD_MAX_COMMISSION_RATE (the operator's ceiling, default 0.10). A "
                    "request fixes the rate in force when the customer asks; a change applies to later requests.",
        auth="service", params=CommissionParams, response=CommissionOut, tags=["service"],
        errors=[errors.CurrencyNotFound, errors.CommissionRateTooHigh])
async def set_commission(request: web.Request, principal: Principal, params: CommissionParams):
    ceiling = request.app[settings_key].max_commission_rate
    for name in ("deposit_rate", "withdraw_rate"):
        if getattr(params, name) > ceiling:
            raise errors.CommissionRateTooHigh(f"{name} must be at most {ceiling} (WALLETD_MAX_COMMISSION_RATE)",
                                               max_commission_rate=str(ceiling))
    row = await rates.set_commission(request.app[pool_key], principal.user_id, params.currency_id,
                                     params.deposit_rate, params.withdraw_rate)
    log.info("commission.set", currency_id=params.currency_id, deposit_rate=f"{params.deposit_rate:f}",
             withdraw_rate=f"{params.withdraw_rate:f}", principal=str(principal.user_id))
    return CommissionOut(**dict(row))
