"""The books of a wallet: its balance at any instant and its statement for any period (JSON pages
or one CSV stream), for its owner: a user reads its own wallets, a payment service its service
and gateway wallets (GET /service/wallets lists them). Anyone else's wallet looks missing."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Context, Decimal

from aiohttp import web

from walletd.appkeys import history_pool_key, keys_key, pool_key
from walletd.auth.tokens import Principal
from walletd.domain.access import readable_kinds
from walletd.domain.errors import WalletNotFound
from walletd.domain.instants import iso
from walletd.domain.money import fmt
from walletd.handlers import cursors
from walletd.handlers.book_schemas import (
    BalanceOut,
    BalanceParams,
    ServiceWalletOut,
    ServiceWalletsOut,
    StatementLineOut,
    StatementOut,
    StatementParams,
)
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import ValidationFailed
from walletd.logs import get_logger
from walletd.persistence import books
from walletd.persistence.books import Position

routes = Routes()
log = get_logger("walletd.books")

# Running balances are exact: NUMERIC(38, 10) has 38 digits, the default context only 28.
_EXACT = Context(prec=60)
CSV_CHUNK = 5000  # lines per query while streaming: the memory a CSV statement holds at once
CSV_COLUMNS = ("transaction_id", "type", "status", "amount", "balance_after", "timestamp")


_CSV_CONTENT = {
    "schema": {"type": "string", "description": "RFC 4180 CSV, CRLF line ends, a header row: " + ",".join(CSV_COLUMNS)
               + "; the period's balances in headers Walletd-Opening-Balance and Walletd-Closing-Balance"},
    "example": ",".join(CSV_COLUMNS) + "\r\n0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e11,deposit,paid,1188.0000000000,"
               "1288.0000000000,2026-03-02T09:15:00.123456+00:00\r\n",
}


_READERS = {"user": "its own wallets", "service": "its service and gateway wallets"}


@routes("GET", "/user/wallet/balance", summary="A wallet's balance at an instant (default: now)",
        description="Exactly what replaying the journal up to `at` (included) gives; zeros before the wallet "
                    "existed. A user reads its own wallets, a payment service its service and gateway wallets.",
        auth=("user", "service"), scope=_READERS, params=BalanceParams, response=BalanceOut, tags=["books"],
        errors=[WalletNotFound])
async def wallet_balance(request: web.Request, principal: Principal, params: BalanceParams):
    at = params.at or datetime.now(timezone.utc)
    row = await books.balance_at(request.app[pool_key], params.wallet_id, at, principal.user_id,
                                 readable_kinds(principal.role))
    if row is None:
        raise WalletNotFound()
    return BalanceOut(wallet_id=params.wallet_id, currency_id=row["currency_id"], at=at, balance=row["balance"],
                      reserved_balance=row["reserved"])


@routes("GET", "/user/wallet/statement", summary="A wallet's statement for a period: opening, lines, closing",
        description="Lines are the movements of `balance` after `from` up to `to` (included), oldest first, "
                    "paged with `limit` and `cursor`; opening_balance + the sum of every line's amount = "
                    "closing_balance. `Accept: text/csv` or `format=csv` streams every line at once as RFC 4180 CSV.",
        auth=("user", "service"), scope=_READERS, params=StatementParams, response=StatementOut, tags=["books"],
        errors=[WalletNotFound], other_content=[("text/csv", _CSV_CONTENT)])
async def wallet_statement(request: web.Request, principal: Principal, params: StatementParams):
    wallet = await books.readable_wallet(request.app[pool_key], params.wallet_id, principal.user_id,
                                         readable_kinds(principal.role))
    if wallet is None:
        raise WalletNotFound()
    if params.format == "csv" or (params.format is None and _wants_csv(request)):
        if params.cursor is not None:
            raise ValidationFailed("invalid parameters: cursor", errors=[
                {"loc": "cursor", "msg": "a CSV statement is always whole: leave cursor out", "type": "cursor_csv"}])
        return await _csv_statement(request, params, wallet["currency_id"], principal.user_id)
    return await _statement_page(request, params, wallet["currency_id"], principal.user_id)


@routes("GET", "/service/wallets", summary="The caller's own wallets: a service and a gateway wallet per currency",
        auth="service", scope={"service": "its own"}, response=ServiceWalletsOut, tags=["service"])
async def list_service_wallets(request: web.Request, principal: Principal):
    rows = await books.wallets_of(request.app[pool_key], principal.user_id, readable_kinds(principal.role))
    return ServiceWalletsOut(wallets=[
        ServiceWalletOut(id=r["id"], balance=r["balance"], reserved_balance=r["reserved_balance"],
                         available=r["balance"], currency_id=r["currency_id"], currency=r["currency"],
                         user_id=r["user_id"], kind=r["kind"]) for r in rows])


# ---- JSON pages -----------------------------------------------------------------------------------


def _period(params: StatementParams) -> tuple[datetime | None, datetime]:
    end = params.to or datetime.now(timezone.utc)
    if params.from_ is not None and params.from_ > end:
        raise ValidationFailed("invalid parameters: from, to", errors=[
            {"loc": "to", "msg": "the period must not end before it starts", "type": "period_invalid"}])
    return params.from_, end


async def _statement_page(request: web.Request, params: StatementParams, currency_id: int,
                          owner: uuid.UUID) -> StatementOut:
    pool = request.app[history_pool_key]
    if params.cursor is None:
        start, end = _period(params)
        opening, closing, lines = await books.first_lines(pool, params.wallet_id, start, end, params.limit + 1, owner)
        balance = opening
    else:
        # The cursor carries the period, both ends' balances and where (and at what running
        # balance) the page starts: given again, from and to must be the same.
        start, end, opening, closing, position, balance = _read_cursor(request, params)
        lines = await books.lines_after(pool, params.wallet_id, start, end, position, params.limit + 1, owner)
    more = len(lines) > params.limit
    out = []
    for line in lines[:params.limit]:
        balance = _EXACT.add(balance, line.amount)
        out.append(StatementLineOut(transaction_id=line.record_id, type=line.type, status=line.status,
                                    amount=line.amount, balance_after=balance, timestamp=line.at))
    next_cursor = None
    if more:
        last = lines[params.limit - 1].position
        next_cursor = cursors.seal(request.app[keys_key], params.wallet_id, [
            start and iso(start), iso(end), str(opening), str(closing), iso(last.at), str(last.entry_id),
            str(last.record_id), str(balance)])
    return StatementOut(wallet_id=params.wallet_id, currency_id=currency_id, from_=start, to=end,
                        opening_balance=opening, closing_balance=closing, entries=out, next_cursor=next_cursor)


def _read_cursor(request: web.Request, params: StatementParams):
    assert params.cursor is not None
    start, end, opening, closing, at, entry, record, balance = cursors.open_sealed(
        request.app[keys_key], params.wallet_id, params.cursor)
    start_at = datetime.fromisoformat(start) if start else None
    end_at = datetime.fromisoformat(end)
    if (params.from_ is not None and params.from_ != start_at) or (params.to is not None and params.to != end_at):
        raise cursors.invalid_cursor("from and to differ from the first page's")
    position = Position(datetime.fromisoformat(at), uuid.UUID(entry), uuid.UUID(record))
    return start_at, end_at, Decimal(opening), Decimal(closing), position, Decimal(balance)


# ---- CSV ----------------------------------------------------------------------------------------


def _wants_csv(request: web.Request) -> bool:
    accepted = (part.split(";")[0].strip().lower() for part in request.headers.get("Accept", "").split(","))
    return "text/csv" in accepted


async def _csv_statement(request: web.Request, params: StatementParams, currency_id: int,
                         owner: uuid.UUID) -> web.StreamResponse:
    """Every line, CSV_CHUNK at a time, each chunk its own short query (rendered by PostgreSQL):
    memory stays flat however long the statement, and a slow reader holds no database connection
    between chunks. The period's balances travel in headers; the lines run on from the opening."""
    pool = request.app[history_pool_key]
    start, end = _period(params)
    opening, closing = await books.period_ends(pool, params.wallet_id, start, end, owner)
    name = f"statement-{params.wallet_id}-{end.strftime('%Y%m%dT%H%M%SZ')}.csv"
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8; header=present",
        "Content-Disposition": f'attachment; filename="{name}"',
        "Walletd-Opening-Balance": fmt(opening), "Walletd-Closing-Balance": fmt(closing),
        "Walletd-Currency-Id": str(currency_id)})
    response.enable_chunked_encoding()
    await response.prepare(request)
    written = 0
    try:
        # No field can hold a comma, quote or line break (ids, fixed words, numbers, times), so
        # RFC 4180 needs no quoting here; rows end in CRLF.
        await response.write((",".join(CSV_COLUMNS) + "\r\n").encode())
        after, balance = None, opening
        while True:
            chunk = await books.csv_chunk(pool, params.wallet_id, start, end, after, balance, CSV_CHUNK, owner)
            if chunk.lines:
                await response.write(chunk.text.encode())
            written += chunk.lines
            if chunk.lines < CSV_CHUNK:
                break
            after, balance = chunk.last, chunk.balance
        await response.write_eof()
    except Exception as exc:  # noqa: BLE001 - the status line is sent: only an incomplete stream can say so
        log.warning("statement.stream_failed", wallet_id=str(params.wallet_id), lines=written,
                    error=type(exc).__name__)
        response.force_close()
        if request.transport is not None:
            request.transport.close()  # no final chunk: the client sees the statement is cut short
        return response
    log.info("statement.streamed", wallet_id=str(params.wallet_id), lines=written)
    return response
