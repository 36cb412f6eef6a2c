"""Reading wallets and history; creating external wallets. Reads go straight to the database."""

from __future__ import annotations

import orjson
from aiohttp import web

from walletd.appkeys import history_pool_key, keys_key, ledger_key, pool_key
from walletd.auth.tokens import Principal
from walletd.domain.access import is_own_user_wallet
from walletd.domain.errors import CurrencyNotFound, ExternalWalletExists, WalletNotFound
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import ValidationFailed
from walletd.handlers.schemas import (
    ExternalWalletOut,
    ExternalWalletParams,
    HistoryOut,
    HistoryParams,
    WalletHistoryParams,
    WalletIdParams,
    WalletOut,
    WalletsOut,
)
from walletd.persistence import accounts, history

routes = Routes()


def wallet_out(row) -> WalletOut:
    return WalletOut(id=row["id"], balance=row["balance"], reserved_balance=row["reserved_balance"],
                     available=row["balance"], currency_id=row["currency_id"], currency=row["currency"],
                     user_id=row["user_id"])


@routes("GET", "/user/wallets", summary="The caller's wallets, ordered by currency id", auth="user",
        response=WalletsOut, tags=["user"])
async def list_wallets(request: web.Request, principal: Principal):
    rows = await accounts.user_wallets(request.app[pool_key], principal.user_id)
    return WalletsOut(wallets=[wallet_out(r) for r in rows])


@routes("GET", "/user/wallet", summary="One of the caller's wallets", auth="user", params=WalletIdParams,
        response=WalletOut, tags=["user"], errors=[WalletNotFound])
async def get_wallet(request: web.Request, principal: Principal, params: WalletIdParams):
    return wallet_out(await _own_wallet(request, principal, params.wallet_id))


@routes("POST", "/user/create/external_wallet", summary="Create the caller's external (payout) wallet for a currency",
        auth="user", params=ExternalWalletParams, response=ExternalWalletOut, tags=["user"],
        errors=[CurrencyNotFound, ExternalWalletExists])
async def create_external_wallet(request: web.Request, principal: Principal, params: ExternalWalletParams):
    row = await accounts.create_external_wallet(request.app[pool_key], principal.user_id, params.wallet_name,
                                                params.currency_id)
    return ExternalWalletOut(**dict(row))


async def _own_wallet(request: web.Request, principal: Principal, wallet_id):
    """One of the caller's wallets; anyone else's looks exactly like one that does not exist (404)."""
    row = await accounts.claimed_wallet(request.app[pool_key], principal.user_id, wallet_id)
    if not is_own_user_wallet(principal.user_id, accounts.owner(row)):
        raise WalletNotFound()
    return row


# Cursors are sealed positions (walletd/keys.py), bound to the list they page: a bare sequence
# number would tell every client how many transactions the whole system wrote between two pages.
def _open_cursor(request: web.Request, scope: bytes, raw: str | None) -> int | None:
    if raw is None:
        return None
    position = request.app[keys_key].open_cursor(scope, raw)
    if position is None:
        raise ValidationFailed("invalid parameters: cursor", errors=[
            {"loc": "cursor", "msg": "not a cursor walletd issued for this list", "type": "cursor_invalid"}])
    return position


def _history(request: web.Request, scope: bytes, records: list[dict], next_position: int | None,
             pending: list[dict]) -> web.Response:
    """HistoryOut; the records arrive as the API shows them (persistence/history.py)."""
    cursor = None if next_position is None else request.app[keys_key].seal_cursor(scope, next_position)
    body = {"transactions": records, "pending_transactions": pending, "next_cursor": cursor}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


@routes("GET", "/user/transactions", summary="The caller's history, newest first (keyset pagination)",
        auth="user", params=HistoryParams, response=HistoryOut, tags=["history"])
async def user_transactions(request: web.Request, principal: Principal, params: HistoryParams):
    scope = b"user:" + principal.user_id.bytes
    return _history(request, scope, *await history.user_page(
        request.app[history_pool_key], principal.user_id, _open_cursor(request, scope, params.cursor), params.limit))


@routes("GET", "/wallet/transactions", summary="One wallet's history, newest first (keyset pagination)",
        auth="user", params=WalletHistoryParams, response=HistoryOut, tags=["history"],
        errors=[WalletNotFound])
async def wallet_transactions(request: web.Request, principal: Principal, params: WalletHistoryParams):
    # Who owns a wallet decides what the caller may see: known to the ledger (read from the primary
    # once, then remembered: an owner never changes), even when the page comes from a standby.
    if not is_own_user_wallet(principal.user_id,
                              await request.app[ledger_key].owner(principal.user_id, params.wallet_id)):
        raise WalletNotFound()
    scope = b"wallet:" + params.wallet_id.bytes
    return _history(request, scope, *await history.wallet_page(
        request.app[history_pool_key], params.wallet_id, _open_cursor(request, scope, params.cursor), params.limit,
        principal.user_id))
