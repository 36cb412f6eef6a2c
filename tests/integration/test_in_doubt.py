"""A commit whose answer is lost is found out, never guessed (issue: failure semantics).

A proxy between walletd and PostgreSQL (tests/pgproxy.py) loses the answer to the batch write
after PostgreSQL committed it, or loses the write itself: walletd must answer 200 for the first
(it committed), 503 for the second (it did not), and 500 `outcome_unknown` only when it cannot
reach the database to find out before its deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from tests.conftest import api_transfer, assert_ledger_consistent, balance, fund, register, register_service


@pytest.fixture
async def proxied(make_client, proxy, database_url):
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=2.0, pool_size=3)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    return client, alice, bob


def key() -> dict:
    return {"Idempotency-Key": f"k-{uuid.uuid4()}"}


async def test_reply_lost_after_commit_answers_200_once(proxied, proxy, log_tap, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_reply")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
    assert proxy.fired.is_set(), "the proxy never saw the batch write"
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    assert any('"ledger.in_doubt_resolved"' in line and '"committed": true' in line.replace('":true', '": true')
               for line in log_tap.lines), "the in-doubt path was not taken"
    after, _ = await balance(client, alice, 1)
    assert before - after == Decimal("7")
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json())["id"] == first["id"]
    assert (await balance(client, alice, 1))[0] == after
    await assert_ledger_consistent(db)


async def test_write_lost_before_commit_answers_503_and_moves_nothing(proxied, proxy, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_write")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert proxy.fired.is_set()
    assert resp.status == 503, await resp.text()
    assert resp.headers.get("Retry-After")
    assert (await balance(client, alice, 1))[0] == before
    # Retrying the 503 with its key applies it now, for the first time.
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") is None
    assert before - (await balance(client, alice, 1))[0] == Decimal("5")
    await assert_ledger_consistent(db)


async def test_unreachable_until_the_deadline_answers_outcome_unknown(proxied, proxy, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_reply")

    async def database_gone_after_the_write():
        await proxy.fired.wait()
        proxy.refuse()

    outage = asyncio.create_task(database_gone_after_the_write())
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    await outage
    assert resp.status == 500, await resp.text()
    assert "outcome unknown" in (await resp.json())["message"]
    proxy.accept()
    # The movement did commit: the same key now tells the client so, and nothing moves twice.
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    assert again.status == 200, await again.text()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert before - (await balance(client, alice, 1))[0] == Decimal("3")
    await assert_ledger_consistent(db)


async def test_a_lasting_outage_refuses_at_once_and_a_probe_notices_the_recovery(proxied, proxy):
    """While the database stays unreachable, money commands are refused before they queue
    (503, nothing moved); one command per half second probes, and the first that gets through
    ends the outage for everybody."""
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    proxy.refuse()
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
    assert first.status == 503
    await asyncio.sleep(1.1)  # past the fail-fast threshold (this test is about time)
    burst = await asyncio.gather(*[api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
                                   for _ in range(20)])
    assert [r.status for r in burst] == [503] * 20
    assert all(r.headers.get("Retry-After") for r in burst)
    proxy.accept()
    await asyncio.sleep(0.6)  # the next command is a probe (about time: one probe per 0.5 s)
    probe = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
    assert probe.status == 200, await probe.text()
    after = await asyncio.gather(*[api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
                                   for _ in range(5)])
    assert [r.status for r in after] == [200] * 5
    assert before - (await balance(client, alice, 1))[0] == Decimal(6)


async def test_commands_queued_behind_an_in_doubt_commit_are_refused_once_the_outage_lasts(
        make_client, proxy, database_url):
    """One committer stuck finding out a lost commit while the database is gone: the commands that
    queued behind it were never sent, so once the outage has lasted they are answered 503 (nothing
    moved) long before the stuck one's deadline, and their retries apply them exactly once."""
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=8.0, pool_size=3,
                               committers=1)
    service = await register_service(client)
    payers = [await register(client, f"payer{i}") for i in range(3)]
    payee = await register(client, "payee")
    for payer in payers:
        await fund(client, payer, service, 1, "100")
    target = payee["wallets"][1]["id"]
    proxy.arm("lose_reply")

    async def database_gone_after_the_write():
        await proxy.fired.wait()
        proxy.refuse()

    outage = asyncio.create_task(database_gone_after_the_write())
    stuck = asyncio.create_task(api_transfer(client, payers[0], 1, target, "1", key()))
    await proxy.fired.wait()
    queued_keys = [key(), key()]
    queued = [asyncio.create_task(api_transfer(client, payer, 1, target, "1", k))
              for payer, k in zip(payers[1:], queued_keys, strict=True)]
    await asyncio.wait(queued, timeout=30)
    assert not stuck.done(), "the queued commands must be answered while the stuck one is still finding out"
    await asyncio.wait_for(stuck, timeout=30)
    await outage
    statuses = [t.result().status for t in queued]
    assert statuses == [503, 503], statuses
    assert all(t.result().headers.get("Retry-After") for t in queued)
    assert stuck.result().status == 500  # its own outcome stayed unknown past the deadline
    proxy.accept()
    for payer, k in zip(payers[1:], queued_keys, strict=True):
        for _ in range(20):
            resp = await api_transfer(client, payer, 1, target, "1", k)
            if resp.status == 200:
                break
            await asyncio.sleep(0.3)  # the outage's probe admits one command per half second
        assert resp.status == 200 and resp.headers.get("Idempotent-Replayed") is None
