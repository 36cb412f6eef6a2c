"""The asyncpg pool behind a FIFO gate, with a deadline on getting a connection.

A connection that saw a connection-level failure is terminated, never handed out again: after a
failover or a cut connection, asyncpg's protocol state can be left mid-operation, and reusing it
would drive one connection from two operations. Every connection carries its server process
(`Backend`) from the moment it opens until it is gone, so a write whose answer was lost can be
stopped on the server (persistence/in_doubt.py). Handing a connection back never raises: once
a caller's work on it is done, its outcome is the caller's, whatever the release finds.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from walletd.persistence.citus.distribute import citus_present
from walletd.persistence.failures import is_unavailable


async def _keep_session(conn: asyncpg.Connection) -> None:
    """walletd sets no session state (no SET, LISTEN or session advisory locks), so the
    default reset query on every release would be a wasted round trip (asyncpg still rolls back
    an open transaction and waits for a pending cancellation before this runs)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """A connection's server process: its pid and start time (a pid alone can be reused)."""

    pid: int
    started: datetime


class Row(asyncpg.Record):
    """asyncpg's own Record type keeps up to 2,000 freed rows of each width for reuse, wherever
    they lie in the heap; after a burst those pin pages that would otherwise go back to the OS.
    Rows of a subclass are freed like any object."""

    __slots__ = ()


class WalletdConnection(asyncpg.Connection):
    """An asyncpg connection that knows its server process from the moment it opens: the handle
    lives and dies with the connection, so no connection in use can lack it."""

    __slots__ = ("backend",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend: Backend | None = None


class FairPool:
    """The asyncpg pool behind a FIFO gate.

    asyncpg hands a released connection to whichever coroutine asks next, so under contention a
    waiter can be passed over again and again (measured: 800 ms tails with 32 concurrent reads
    on 8 connections). asyncio.Semaphore does not let newcomers overtake its waiters, so with
    at most `size` holders inside, nobody ever waits on the pool itself.

    `acquire_timeout` bounds the wait for the gate and the connect together: when the database
    hangs, requests fail fast (503) instead of queueing behind connections that never return.
    """

    def __init__(self, size: int, acquire_timeout: float) -> None:
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._gate = asyncio.Semaphore(size)
        self._pool: asyncpg.Pool | None = None
        # The database is a Citus coordinator (persistence/citus/): a few statements differ.
        self.distributed = False

    async def open(self, url: str, *, connect_timeout: float) -> None:
        self._pool = await asyncpg.create_pool(
            url,
            min_size=self.size,  # opened at start: a first-use connect mid-load is a latency spike
            max_size=self.size,
            reset=_keep_session,
            init=self._setup_connection,
            connection_class=WalletdConnection,
            record_class=Row,
            # Neither a statement nor an idle connection expires: walletd keeps every connection
            # open and its few statements prepared, and asyncpg's expiry timers, re-armed on every
            # release and prepare, cost CPU and leave objects behind that pin the heap after a burst.
            max_cached_statement_lifetime=0,
            max_inactive_connection_lifetime=0,
            timeout=connect_timeout,
            # JIT compilation only slows walletd's short OLTP statements.
            server_settings={"jit": "off", "application_name": "walletd"},
        )
        self.distributed = await citus_present(self._pool)

    async def _setup_connection(self, conn: asyncpg.Connection) -> None:
        # NUMERIC in text format: asyncpg's binary numeric codec costs about twice as much CPU
        # per value as str()/Decimal(), and walletd moves many amounts per batch. Still exact.
        await conn.set_type_codec("numeric", encoder=str, decoder=Decimal, schema="pg_catalog", format="text")
        started = await conn.fetchval("SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        conn.backend = Backend(conn.get_server_pid(), started)

    @property
    def waiters(self) -> int:
        waiting = getattr(self._gate, "_waiters", None)
        return len(waiting) if waiting else 0

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None):
        assert self._pool is not None, "pool not open"
        gate = self._gate
        if gate.locked():
            # Only a wait needs a deadline: the common case takes a free place without a timer.
            async with asyncio.timeout(timeout or self.acquire_timeout):
                await gate.acquire()
        else:
            await gate.acquire()
        try:
            # The gate leaves a connection free for every holder, so this waits at most for a
            # connect, which the pool's connect timeout (WALLETD_DB_CONNECT_TIMEOUT) bounds.
            conn = await self._pool.acquire()
            try:
                yield conn
            except BaseException as exc:
                if is_unavailable(exc) or isinstance(exc, asyncio.CancelledError):
                    discard(conn)  # never reuse a connection whose protocol state is unknown
                raise
            finally:
                await self._release(conn)
        finally:
            gate.release()

    async def _release(self, conn) -> None:
        """Hand the connection back. A connection that cannot be reset (it broke right after the
        caller's last statement) is closed instead: the caller's outcome stands either way."""
        assert self._pool is not None
        try:
            await self._pool.release(conn)
        except Exception:  # noqa: BLE001 - a commit that returned is not undone by a broken release
            discard(conn)

    async def fetch(self, query: str, *args):
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args):
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args):
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args):
        async with self.acquire() as conn:
            return await conn.execute(query, *args)

    async def executemany(self, query: str, args):
        async with self.acquire() as conn:
            return await conn.executemany(query, args)

    async def close(self, timeout: float = 10.0) -> None:
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            self._pool.terminate()


def discard(conn) -> None:
    """Close a pooled connection for good (asyncpg may already have taken it back, when the
    connection closed under it)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass


async def create_pool(url: str, size: int, *, acquire_timeout: float = 5.0, connect_timeout: float = 5.0) -> FairPool:
    pool = FairPool(size, acquire_timeout)
    await pool.open(url, connect_timeout=connect_timeout)
    return pool
