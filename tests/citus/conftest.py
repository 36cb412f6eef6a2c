"""Fixtures of the Citus suite (`make test-citus`): one Citus cluster per session (a coordinator
and two workers on loopback, tests/support/citus_cluster.py), a fresh database per test module, migrated
by walletd itself (so distributed by its layout), and the real app through pytest-aiohttp.

The shared fixtures of tests/conftest.py (client, make_client, db, and the helpers beside them)
work unchanged: this directory only points `database_url` at the Citus coordinator. The suite's
files are not named test_*.py, so `make test` does not collect them; tests/citus/run.sh names them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from pathlib import Path

import asyncpg
import pytest

from tests.support.citus_cluster import CitusCluster
from walletd.persistence.migrate import migrate

_databases = itertools.count()


@pytest.fixture(scope="session")
def citus_cluster():
    install = os.environ.get("WALLETD_CITUS_INSTALL")
    if not install:
        raise RuntimeError("WALLETD_CITUS_INSTALL is not set: run the Citus suite with `make test-citus`")
    run_dir = Path(os.environ.get("WALLETD_CITUS_RUN_DIR") or tempfile.mkdtemp(prefix="walletd-citus-"))
    cluster = CitusCluster(Path(install), run_dir / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def create_citus_database(cluster: CitusCluster, *, migrated: bool = True) -> str:
    """A database with citus on every node; migrated (so distributed) unless asked otherwise."""
    url = await cluster.create_database(f"walletd_citus_{os.getpid()}_{next(_databases)}")
    if migrated:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


@pytest.fixture(scope="module")
async def database_url(citus_cluster) -> str:
    return await create_citus_database(citus_cluster)


async def worker_of(db, user_id) -> int:
    """The port of the worker holding this user's shard (of every table co-located with wallets)."""
    return await db.fetchval(
        "SELECT nodeport FROM pg_dist_shard_placement "
        "WHERE shardid = get_shard_id_for_distribution_column('wallets', $1::uuid)", str(user_id))


async def users_on(db, ports: list[int], count: int, register, client) -> dict[int, list[dict]]:
    """Registers users until `count` of them sit on each of the given workers."""
    found: dict[int, list[dict]] = {port: [] for port in ports}
    for _ in range(40 * count * len(ports)):
        if all(len(users) >= count for users in found.values()):
            return found
        user = await register(client)
        port = await worker_of(db, user["id"])
        if port in found and len(found[port]) < count:
            found[port].append(user)
    raise AssertionError(f"could not place {count} users on each of {ports}")


async def recover_two_phase(database_url: str, timeout: float = 60) -> None:
    """Citus's 2PC recovery, run now (its maintenance daemon also runs it every second here) until
    no worker holds a prepared transaction of this database."""
    conn = await asyncpg.connect(database_url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await conn.fetchval("SELECT recover_prepared_transactions()")
            left = await conn.fetchval(
                "SELECT coalesce(sum(r.result::int), 0) FROM run_command_on_workers("
                "$$SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()$$) r")
            if left == 0:
                return
            if loop.time() > deadline:
                raise AssertionError(f"{left} prepared transaction(s) left on the workers after {timeout}s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url):
    """The tests' own connection. Their inspection queries join tables on columns other than the
    owner (a posting to its record's entry); Citus runs those by repartitioning the rows between
    workers when asked. walletd's own statements never need it."""
    conn = await asyncpg.connect(database_url, server_settings={"citus.enable_repartition_joins": "on"})
    yield conn
    await conn.close()
