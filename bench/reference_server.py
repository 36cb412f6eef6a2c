"""Reference (b): a plain lock-per-request transfer, no actors, no batching.

POST /wallet/transfer?source_wallet_id=…&target_wallet_id=…&amount=… with the same auth
(a walletd user JWT in `Authorization: Bearer`) and the same response shape as walletd, on the
same database, served the same way (aiohttp, uvloop when installed, no access log). Each request
is one asyncpg transaction:

    SELECT … FROM wallets WHERE id = ANY(both) ORDER BY id FOR UPDATE   -- lock both, in id order
    (check owner, kinds, currency, balance)
    INSERT INTO journal_entries …; INSERT INTO postings … (the schema's trigger moves balances)
    INSERT INTO transactions … RETURNING created_at

so the ledger it writes is exactly what walletd writes for a same-currency transfer and
`walletd audit` covers it too. Same-currency transfers only (all the benchmark needs).

    DATABASE_URL=… WALLETD_JWT_SECRET=… [WALLETD_POOL_SIZE=8] python -m bench.reference_server --port P
(the same environment variables walletd reads; secrets stay out of the process list)
"""

from __future__ import annotations

import argparse
import os
import uuid
from decimal import Decimal, InvalidOperation

import asyncpg
from aiohttp import web

from tests.support.servers import new_event_loop
from walletd.auth.tokens import TokenError, TokenIssuer

_Q = Decimal("1E-10")
_LOCK = ("SELECT id, user_id, currency_id, kind, balance FROM wallets "
         "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE")
_ENTRY = "INSERT INTO journal_entries (id, kind, request_id) VALUES ($1, 'transfer', $2)"
_POSTINGS = ("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
             "VALUES ($1, $2, $3, 'B', $4), ($1, $5, $3, 'B', $6)")
_TX = ("INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount, "
       "to_wallet_id, to_currency_id, to_user_id, rate, converted_amount, user_id, entry_id) "
       "VALUES ($1, 'transfer', 'close', $2, $3, $4, $5, $6, $3, $7, 1, $5, $4, $8) RETURNING created_at")

pool_key = web.AppKey("pool", asyncpg.Pool)
tokens_key = web.AppKey("tokens", TokenIssuer)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status)


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


async def transfer(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() != "bearer ":
        return error(401, "Not authenticated")
    try:
        principal = request.app[tokens_key].verify(header[7:].strip())
    except TokenError:
        return error(401, "Invalid token")
    if principal.role != "user":
        return error(401, "Invalid token")
    query = request.query
    source, target = _uuid(query.get("source_wallet_id")), _uuid(query.get("target_wallet_id"))
    if source is None or target is None:
        return error(422, "invalid parameters: source_wallet_id, target_wallet_id")
    try:
        amount = Decimal(query.get("amount", "")).quantize(_Q)
    except (InvalidOperation, ValueError):
        return error(400, "Invalid amount")
    if not amount.is_finite() or amount <= 0:
        return error(400, "Invalid amount")
    if source == target:
        return error(400, "source and target wallet are the same")

    async with request.app[pool_key].acquire() as conn, conn.transaction():
        rows = {r["id"]: r for r in await conn.fetch(_LOCK, [source, target])}
        src, dst = rows.get(source), rows.get(target)
        if src is None or src["user_id"] != principal.user_id or src["kind"] != "user":
            return error(400, "Wrong wallet ID or it is not your wallet ID")
        if dst is None or dst["kind"] != "user":
            return error(400, "target_wallet_id does not exist")
        if dst["currency_id"] != src["currency_id"]:
            return error(400, "the lock-per-request reference only does same-currency transfers")
        if src["balance"] < amount:
            return error(400, "insufficient_funds")
        entry_id, tx_id = uuid.uuid4(), uuid.uuid4()
        await conn.execute(_ENTRY, entry_id, request.headers.get("X-Request-ID"))
        await conn.execute(_POSTINGS, entry_id, source, src["currency_id"], -amount, target, amount)
        created_at = await conn.fetchval(_TX, tx_id, source, src["currency_id"], src["user_id"], amount, target,
                                         dst["user_id"], entry_id)
    text = f"{amount:f}"
    return web.json_response({
        "id": str(tx_id), "type": "transfer", "status": "close",
        "from_wallet_id": str(source), "from_currency_id": src["currency_id"], "amount": text,
        "to_wallet_id": str(target), "to_currency_id": dst["currency_id"], "rate": "1.0000000000",
        "converted_amount": text, "timestamp": created_at.isoformat(), "user_id": str(src["user_id"]),
        "service_user_id": None, "parent_id": None,
    })


def create_app(database_url: str, jwt_secret: str, pool_size: int) -> web.Application:
    app = web.Application()
    app[tokens_key] = TokenIssuer(jwt_secret, 3600)

    async def pool_ctx(app: web.Application):
        # Same pool settings as walletd (walletd/persistence/db.py): jit off, min 2 connections.
        app[pool_key] = await asyncpg.create_pool(database_url, min_size=min(2, pool_size), max_size=pool_size,
                                                  server_settings={"jit": "off",
                                                                   "application_name": "bench-lock-reference"})
        yield
        await app[pool_key].close()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/wallet/transfer", transfer)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(os.environ["DATABASE_URL"], os.environ["WALLETD_JWT_SECRET"],
                     int(os.environ.get("WALLETD_POOL_SIZE", "8")))
    web.run_app(app, host=args.host, port=args.port,
                print=None, access_log=None, loop=new_event_loop())


if __name__ == "__main__":
    main()
