"""The asyncpg pool."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """walletd sets no session state (no SET, LISTEN or session advisory locks), so the
    default reset query on every release would be a wasted round trip."""


async def _setup_connection(conn: asyncpg.Connection) -> None:
    # NUMERIC in text format: asyncpg's binary numeric codec costs about twice as much CPU per
    # value as str()/Decimal(), and walletd moves many amounts per batch. Still exact.
    await conn.set_type_codec("numeric", encoder=str, decoder=Decimal, schema="pg_catalog", format="text")


class FairPool:
    """The asyncpg pool behind a FIFO gate.

    asyncpg hands a released connection to whichever coroutine asks next, so under contention a
    waiter can be passed over again and again (measured: 800 ms tails with 32 concurrent reads
    on 8 connections). asyncio.Semaphore does not let newcomers overtake its waiters, so with
    at most `size` holders inside, nobody ever waits on the pool itself.
    """

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._gate = asyncio.Semaphore(size)

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None):
        async with self._gate, self._pool.acquire(timeout=timeout) as conn:
            yield conn

    async def fetch(self, query: str, *args):
        async with self._gate:
            return await self._pool.fetch(query, *args)

    async def fetchrow(self, query: str, *args):
        async with self._gate:
            return await self._pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args):
        async with self._gate:
            return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args):
        async with self._gate:
            return await self._pool.execute(query, *args)

    async def executemany(self, query: str, args):
        async with self._gate:
            return await self._pool.executemany(query, args)

    async def close(self) -> None:
        await self._pool.close()


async def create_pool(url: str, size: int) -> FairPool:
    # JIT compilation only slows walletd's short OLTP statements.
    return FairPool(await asyncpg.create_pool(
        url,
        min_size=size,  # opened at start: a first-use connect (and codec setup) mid-load is a latency spike
        max_size=size,
        reset=_keep_session,
        init=_setup_connection,
        server_settings={"jit": "off", "application_name": "walletd"},
    ), size)
