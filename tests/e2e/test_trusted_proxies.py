"""WALLETD_TRUSTED_PROXIES through real HTTP: behind a trusted balancer every client has its own
address for login throttling, the password-hash queue's share and the logs; X-Forwarded-For from
anyone else, or written by the client itself left of the balancer's entry, changes nothing.

The test client connects from 127.0.0.1, so trusting 127.0.0.1/32 makes it the balancer."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import PASSWORD, register, unique
from walletd.handlers.identity import passwords_key

BALANCER = ("127.0.0.1/32",)


@pytest.fixture(autouse=True)
async def no_failures_on_record(db):
    await db.execute("DELETE FROM login_failures")


async def fail_login(client, username: str, forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else {}
    resp = await client.post("/auth/login", headers=headers, params={"username": username, "password": "guess"})
    assert resp.status in (401, 429), await resp.text()
    return resp


async def address_counts(db) -> dict[str, int]:
    return dict(await db.fetch("SELECT key, failures FROM login_failures WHERE scope = 'address'"))


async def test_behind_a_trusted_balancer_each_client_is_throttled_by_its_own_address(make_client, db):
    client = await make_client(trusted_proxies=BALANCER, login_max_failures_per_address=3,
                               login_max_failures=1000)
    for _ in range(3):
        await fail_login(client, unique("nobody"), "203.0.113.9")
    assert await address_counts(db) == {"203.0.113.9": 3}
    # That client is throttled; another client behind the same balancer is not.
    assert (await fail_login(client, unique("nobody"), "203.0.113.9")).status == 429
    user = await register(client)
    resp = await client.post("/auth/login", headers={"X-Forwarded-For": "198.51.100.20"},
                             params={"username": user["username"], "password": PASSWORD})
    assert resp.status == 200, await resp.text()


async def test_what_the_client_writes_left_of_the_balancers_entry_is_ignored(make_client, db):
    client = await make_client(trusted_proxies=("127.0.0.1/32", "10.0.0.0/8"))
    # The client sent "X-Forwarded-For: 1.2.3.4"; the balancer appended the client's real address,
    # then an inner trusted proxy (10.1.1.1) appended the balancer's: the client is 203.0.113.9.
    await fail_login(client, unique("nobody"), "1.2.3.4, 203.0.113.9, 10.1.1.1")
    # the same chain split over two header lines, as proxies that add a line instead of appending
    await client.post("/auth/login", headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "203.0.113.9")],
                      params={"username": unique("nobody"), "password": "guess"})
    # garbage where the balancer's entry should be: the nearest address the chain vouches for
    await fail_login(client, unique("nobody"), "203.0.113.77, not-an-address")
    # IPv6 and port forms
    await fail_login(client, unique("nobody"), "[2001:db8::7]:4431")
    await fail_login(client, unique("nobody"), "198.51.100.3:5555")
    assert await address_counts(db) == {"203.0.113.9": 2, "127.0.0.1": 1, "2001:db8::7": 1, "198.51.100.3": 1}


async def test_x_forwarded_for_from_an_untrusted_peer_changes_nothing(make_client, db):
    for trusted in ((), ("10.0.0.0/8",)):  # none configured, or only someone else
        await db.execute("DELETE FROM login_failures")
        client = await make_client(trusted_proxies=trusted)
        for spoofed in ("203.0.113.1", "203.0.113.2", "1.1.1.1, 203.0.113.3"):
            await fail_login(client, unique("nobody"), spoofed)
        assert await address_counts(db) == {"127.0.0.1": 3}


async def test_the_log_line_names_the_client_not_the_balancer(make_client, log_tap):
    client = await make_client(trusted_proxies=BALANCER)
    await fail_login(client, unique("nobody"), "203.0.113.50")
    await client.get("/health", headers={"X-Forwarded-For": "203.0.113.51"})
    lines = [json.loads(line) for line in log_tap.lines]
    assert [line["client"] for line in lines if line["event"] == "auth.login_failed"] == ["203.0.113.50"]
    assert [line["client"] for line in lines if line["event"] == "http.request"] == ["203.0.113.50", "203.0.113.51"]


async def test_the_hash_queue_share_is_per_client_behind_the_balancer(make_client):
    """One place per address in a queue of 8: a crowd behind the balancer from one address gets
    refused beyond its share, while 6 other clients behind the same balancer, at the same moment,
    each get theirs (without the middleware they would all be 127.0.0.1 and share one place)."""
    client = await make_client(trusted_proxies=BALANCER, hash_threads=1, hash_queue=8, hash_queue_per_address=1,
                               login_max_failures=100_000, login_max_failures_per_address=100_000)
    pool = client.server.app[passwords_key]

    async def attempt(address: str) -> int:
        resp = await client.post("/auth/login", headers={"X-Forwarded-For": address},
                                 params={"username": unique("nobody"), "password": "guess"})
        return resp.status

    crowd = [attempt("203.0.113.200") for _ in range(6)]
    others = [attempt(f"198.51.100.{n}") for n in range(1, 7)]
    statuses = await asyncio.wait_for(asyncio.gather(*crowd, *others), timeout=120)  # a guard, not a timing
    crowd_statuses, other_statuses = statuses[:6], statuses[6:]
    assert other_statuses == [401] * 6, other_statuses  # every other client checked, none refused
    assert 503 in crowd_statuses, crowd_statuses  # the crowd, one address, held one place at a time
    assert pool.in_flight == 0


async def test_a_request_through_a_real_second_address_is_its_own_client(make_client, db):
    """Without trusted proxies, the peer is the client: 127.0.0.2 is counted apart from 127.0.0.1."""
    client = await make_client()
    await fail_login(client, unique("nobody"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
        async with other.post(client.make_url("/auth/login"), params={"username": unique("x"), "password": "g"},
                              headers={"X-Forwarded-For": "203.0.113.99"}) as resp:
            assert resp.status == 401
    assert await address_counts(db) == {"127.0.0.1": 1, "127.0.0.2": 1}
