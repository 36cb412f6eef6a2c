"""The asyncpg pool."""

from __future__ import annotations

from decimal import Decimal

import asyncpg


async def _keep_session(conn: asyncpg.Connection) -> None:
    """walletd sets no session state (no SET, LISTEN or session advisory locks), so the
    default reset query on every release would be a wasted round trip."""


async def _setup_connection(conn: asyncpg.Connection) -> None:
    # NUMERIC in text format: asyncpg's binary numeric codec costs about twice as much CPU per
    # value as str()/Decimal(), and walletd moves many amounts per batch. Still exact.
    await conn.set_type_codec("numeric", encoder=str, decoder=Decimal, schema="pg_catalog", format="text")


async def create_pool(url: str, size: int) -> asyncpg.Pool:
    # JIT compilation only slows walletd's short OLTP statements.
    return await asyncpg.create_pool(
        url,
        min_size=size,  # opened at start: a first-use connect (and codec setup) mid-load is a latency spike
        max_size=size,
        reset=_keep_session,
        init=_setup_connection,
        server_settings={"jit": "off", "application_name": "walletd"},
    )
