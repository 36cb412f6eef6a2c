"""The asyncpg pool."""

from __future__ import annotations

import asyncpg


async def create_pool(url: str, size: int) -> asyncpg.Pool:
    # JIT compilation only slows walletd's short OLTP statements.
    return await asyncpg.create_pool(
        url,
        min_size=min(2, size),
        max_size=size,
        server_settings={"jit": "off", "application_name": "walletd"},
    )
