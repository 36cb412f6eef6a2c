"""The self-audit gives way to requests: a pass waits for a moment with no request in flight in its
process, and never longer than WALLETD_AUDIT_MAX_WAIT_SECONDS in all. The request in flight is a
real one, held open by a client that sends its headers and not yet its whole body."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from tests.conftest import create_database
from tests.integration.test_integrity_jobs import alice_funded, seal_everything
from walletd.appkeys import load_key
from walletd.jobs.self_audit import SelfAudit


@pytest.fixture
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


async def funded_app(make_client):
    """An app whose own jobs wait an hour and whose slow bodies may take a minute; alice funded, sealed."""
    client, pool, _, _ = await alice_funded(make_client, "50", body_timeout_seconds=60.0)
    return client, pool, await seal_everything(pool)


@contextlib.asynccontextmanager
async def hold_request(client):
    """A request walletd serves until the yielded writer closes: its body never arrives whole."""
    _, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"POST /wallet/transfer HTTP/1.1\r\nHost: walletd\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        await writer.drain()
        load = client.app[load_key]
        async with asyncio.timeout(10):
            while load.in_flight == 0:
                await asyncio.sleep(0.01)
        yield writer
    finally:
        writer.close()


async def waited_seconds(client) -> float:
    text = await (await client.get("/metrics")).text()
    return float(re.search(r"^walletd_audit_waited_seconds_total (\S+)$", text, re.MULTILINE).group(1))


async def test_a_pass_waits_while_a_request_is_in_flight_and_checks_once_it_ends(make_client, db):
    client, pool, sealed = await funded_app(make_client)
    audit = SelfAudit(pool, interval=3600, full_interval=3600, load=client.app[load_key], max_wait=60)
    async with hold_request(client):
        passing = asyncio.create_task(audit.incremental_pass())
        await asyncio.sleep(1.0)
        assert not passing.done()
        assert await db.fetchval("SELECT verified_seq FROM audit_cursor") == 0
    assert await asyncio.wait_for(passing, 10) == sealed
    assert await db.fetchval("SELECT verified_seq FROM audit_cursor") == sealed


async def test_under_sustained_load_a_pass_runs_once_its_wait_is_spent(make_client, db):
    client, pool, sealed = await funded_app(make_client)
    before = await waited_seconds(client)
    audit = SelfAudit(pool, interval=3600, full_interval=3600, load=client.app[load_key], max_wait=0.5)
    async with hold_request(client):
        assert await asyncio.wait_for(audit.incremental_pass(), 10) == sealed
        assert client.app[load_key].in_flight == 1  # the request is still being served
    assert await waited_seconds(client) - before >= 0.5


async def test_the_full_pass_waits_too(make_client, db):
    client, pool, _ = await funded_app(make_client)
    await db.execute("UPDATE audit_cursor SET full_pass_at = NULL")
    audit = SelfAudit(pool, interval=3600, full_interval=3600, load=client.app[load_key], max_wait=60)
    async with hold_request(client):
        passing = asyncio.create_task(audit.full_pass_if_due())
        await asyncio.sleep(1.0)
        assert not passing.done()
    assert await asyncio.wait_for(passing, 10) is True
