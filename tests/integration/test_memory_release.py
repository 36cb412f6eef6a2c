"""What a burst allocates is freed once every actor has retired: nothing the burst built stays
behind in a cache or a free list, where it would keep the heap's pages from going back to the OS.
"""

from __future__ import annotations

import asyncio
import sys
import tracemalloc

import aiohttp
import pytest

from tests.conftest import LOG_TAP, fund, register, register_service
from tests.integration.test_integrity_jobs import IDLE
from tests.polling import until
from walletd.appkeys import ledger_key, pool_key, registry_key, tokens_key
from walletd.memory import release_memory

BURST = 2_400
# What may stay behind, about 900-1,200 blocks here: the free lists of asyncio's handles and
# futures, the ABCs' instance caches, statements a background job prepared on a connection for the
# first time. yarl's URL caches alone, left uncleared, keep about 2,000 more; the row and type
# caches have tests of their own below.
MAX_SURVIVING_BLOCKS = 1_500


async def _released(app) -> None:
    registry, ledger = app[registry_key], app[ledger_key]
    # release_memory empties the predictions in the same step that clears the caches.
    await until(lambda: not registry.actors and not len(ledger.predictions), 20,
                what="every actor retired and memory released")


async def _burst(base_url: str, users: list[dict]) -> list[int]:
    gate = asyncio.Semaphore(32)

    async def one_request(session: aiohttp.ClientSession, i: int) -> int:
        user, target = users[i % len(users)], users[(i + 1) % len(users)]
        params = {"source_wallet_id": user["wallets"][1]["id"], "target_wallet_id": target["wallets"][1]["id"],
                  "amount": f"0.{i + 1:04d}"}
        url = f"{base_url}/wallet/transfer"
        async with gate:
            if i % 3 == 2:  # a page of history: a hundred rows from the database, freed once answered
                request = session.get(f"{base_url}/user/transactions", headers=user["headers"], params={"limit": 100})
            elif i % 2:  # parameters in the query string: each a URL of its own
                request = session.post(url, headers=user["headers"], params=params)
            else:
                request = session.post(url, headers=user["headers"], json=params)
            async with request as resp:
                return resp.status

    # A session of its own, closed before the count: the client's pooled connections are not walletd's.
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*[one_request(session, i) for i in range(BURST)])


async def test_a_burst_leaves_next_to_nothing_allocated_once_every_actor_has_retired(make_client):
    # Two connections, both warmed by the first burst; the journal jobs wait (their statements
    # would otherwise be prepared, once, on whichever connection they first ran).
    client = await make_client(**IDLE, actor_idle_seconds=0.3, pool_size=2, committers=1)
    app = client.server.app
    service = await register_service(client)
    users = [await register(client, "burst") for _ in range(6)]
    for user in users:
        await fund(client, user, service, 1, "1000")
    base_url = str(client.make_url("")).rstrip("/")
    assert set(await _burst(base_url, users)) == {200}  # warm: lazy imports, connections, statements
    await _released(app)

    tracemalloc.start()
    try:
        statuses = await _burst(base_url, users)
        await _released(app)
        LOG_TAP.clear()  # the test's own copy of the log lines
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert set(statuses) == {200}, statuses
    stats = snapshot.statistics("lineno")
    surviving = sum(s.count for s in stats)
    top = "\n".join(str(s) for s in stats[:15])
    assert surviving <= MAX_SURVIVING_BLOCKS, f"{surviving} blocks allocated by the burst survive it:\n{top}"


async def test_rows_are_freed_once_read_not_kept_for_reuse(make_client):
    client = await make_client()
    pool = client.server.app[pool_key]
    tracemalloc.start()
    try:
        rows = await pool.fetch("SELECT g FROM generate_series(1, 3000) AS g")
        assert [r[0] for r in rows] == list(range(1, 3001))
        del rows
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # asyncpg keeps up to 2,000 freed rows of each width of its own Record type for reuse.
    kept = sum(s.count for s in snapshot.statistics("filename"))
    assert kept < 500, f"{kept} blocks of the rows read outlive them"


async def test_names_held_by_the_type_cache_are_let_go_once_memory_is_released(make_client):
    client = await make_client()
    app = client.server.app
    name = "".join(("not_an_", "attribute"))  # built at run time: a string of its own, as C code makes them
    held = sys.getrefcount(name)
    getattr(object(), name, None)
    if sys.getrefcount(name) == held:
        pytest.skip("this Python's type cache keeps interned names only: nothing to let go")
    release_memory(app[ledger_key], app[tokens_key])
    assert sys.getrefcount(name) == held
