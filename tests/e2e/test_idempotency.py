"""Idempotency-Key on every money-moving POST and PUT: a retry answers the stored first response
and moves no money again; the same key with another request is 422; keys belong to their caller."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from tests.conftest import (
    OPERATOR,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)


def key() -> dict:
    return {"Idempotency-Key": f"k-{uuid.uuid4()}"}


async def tx_count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM transactions")


async def entry_count(db) -> int:
    return await db.fetchval("SELECT count(*) FROM journal_entries")


async def test_transfer_retry_returns_the_first_response_and_moves_nothing(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    headers = key()
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "10", headers)
    assert first.status == 200, await first.text()
    first_body = await first.json()
    counts = (await tx_count(db), await entry_count(db))
    snapshot = await wallets_snapshot(db)
    for amount in ("10", "10.0", "1e1"):  # the same request, however the amount is spelled
        retry = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount, headers)
        assert retry.status == 200, await retry.text()
        assert await retry.json() == first_body, "a retry answers exactly the first response"
        assert retry.headers.get("Idempotent-Replayed") == "true"
    assert (await tx_count(db), await entry_count(db)) == counts
    assert await wallets_snapshot(db) == snapshot
    assert await balance(client, alice, 1) == (credited - 10, 0)
    assert await balance(client, bob, 1) == (Decimal(10), 0)


async def test_cross_currency_transfer_replay_is_identical(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    headers = key()
    first = await (await api_transfer(client, alice, 1, bob["wallets"][3]["id"], "3.3333333333", headers)).json()
    # Another rate in between must not change what the retry answers (the operator's, confirmed: it
    # is more than WALLETD_RATE_MAX_CHANGE away).
    resp = await client.post("/service/exchange-rates/set", headers=OPERATOR,
                             params={"from_currency": 1, "to_currency": 3, "rate": "50", "force": "true"})
    assert resp.status == 200, await resp.text()
    retry = await api_transfer(client, alice, 1, bob["wallets"][3]["id"], "3.3333333333", headers)
    assert retry.status == 200 and await retry.json() == first
    assert (await balance(client, bob, 3))[0] == Decimal(first["converted_amount"])


async def test_same_key_with_another_request_is_422_and_moves_nothing(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    await api_external_wallet(client, alice, 1)
    headers = key()
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "10", headers)).status == 200
    snapshot, counts = await wallets_snapshot(db), (await tx_count(db), await entry_count(db))
    attempts = [
        api_transfer(client, alice, 1, bob["wallets"][1]["id"], "11", headers),  # another amount
        api_transfer(client, alice, 1, bob["wallets"][2]["id"], "10", headers),  # another target
        api_withdraw(client, alice, service, 1, "10", headers),  # another endpoint
        api_deposit(client, alice, service, 1, "10", headers),
    ]
    for attempt in attempts:
        resp = await attempt
        assert resp.status == 422, await resp.text()
        assert (await resp.json())["message"] == "Idempotency-Key was used with a different request"
    assert await wallets_snapshot(db) == snapshot
    assert (await tx_count(db), await entry_count(db)) == counts


async def test_keys_are_scoped_to_their_caller(client, db):
    alice, bob, carol = await register(client, "alice"), await register(client, "bob"), await register(client, "carol")
    service = await register_service(client)
    await fund(client, alice, service, 2, "50")
    await fund(client, bob, service, 2, "50")
    headers = key()
    a = await api_transfer(client, alice, 2, carol["wallets"][2]["id"], "5", headers)
    b = await api_transfer(client, bob, 2, carol["wallets"][2]["id"], "7", headers)  # same key, other caller
    assert a.status == 200 and b.status == 200, (await a.text(), await b.text())
    assert (await a.json())["id"] != (await b.json())["id"]
    assert await balance(client, carol, 2) == (Decimal(12), 0)
    again = await api_transfer(client, bob, 2, carol["wallets"][2]["id"], "7", headers)
    assert again.status == 200 and await again.json() == await b.json()
    assert await balance(client, carol, 2) == (Decimal(12), 0)


async def test_concurrent_duplicates_apply_once(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    headers = key()
    responses = await asyncio.gather(*[
        api_transfer(client, alice, 1, bob["wallets"][1]["id"], "30", headers) for _ in range(25)])
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 25, bodies
    assert all(body == bodies[0] for body in bodies)
    assert await balance(client, alice, 1) == (credited - 30, 0)
    assert await balance(client, bob, 1) == (Decimal(30), 0)
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1",
                             headers["Idempotency-Key"]) == 1


async def test_concurrent_same_key_from_two_wallets_applies_exactly_one(client, db):
    """Two actors (two source wallets), one key, two different requests: exactly one wins, the
    other is 422 whichever commits first, and only the winner's money moves."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    await fund(client, alice, service, 2, "100")
    for _ in range(5):
        headers = key()
        before = await wallets_snapshot(db)
        one, two = await asyncio.gather(api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers),
                                        api_transfer(client, alice, 2, bob["wallets"][2]["id"], "1", headers))
        assert sorted([one.status, two.status]) == [200, 422], (await one.text(), await two.text())
        winner = 1 if one.status == 200 else 2
        changed = {row[0] for row in set(await wallets_snapshot(db)) - set(before)}
        assert changed == {uuid.UUID(alice["wallets"][winner]["id"]), uuid.UUID(bob["wallets"][winner]["id"])}
    await assert_ledger_consistent(db)


async def test_deposit_request_and_settlements_are_idempotent(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    headers = key()
    first = await api_deposit(client, alice, service, 3, "20", headers)
    assert first.status == 200
    retry = await api_deposit(client, alice, service, 3, "20", headers)
    assert retry.status == 200 and await retry.json() == await first.json()
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'deposit'",
                             alice["id"]) == 1
    tx = await first.json()

    settle_key = key()
    paid = await api_settle(client, service, "deposit", tx["id"], "paid", settle_key)
    assert paid.status == 200
    replay = await api_settle(client, service, "deposit", tx["id"], "paid", settle_key)
    assert replay.status == 200 and await replay.json() == await paid.json()
    assert replay.headers.get("Idempotent-Replayed") == "true"
    conflict = await api_settle(client, service, "deposit", tx["id"], "rejected", settle_key)
    assert conflict.status == 422
    assert await balance(client, alice, 3) == (Decimal("19.8"), 0)


async def test_withdraw_request_and_settlement_are_idempotent(client, db):
    alice = await register(client, "alice")
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "40")
    await api_external_wallet(client, alice, 1)
    headers = key()
    first = await api_withdraw(client, alice, service, 1, "15", headers)
    assert first.status == 200
    for _ in range(3):
        retry = await api_withdraw(client, alice, service, 1, "15", headers)
        assert retry.status == 200 and await retry.json() == await first.json()
    assert await balance(client, alice, 1) == (credited - 15, Decimal(15))
    tx = await first.json()
    settle_key = key()
    results = await asyncio.gather(*[api_settle(client, service, "withdraw", tx["id"], "paid", settle_key)
                                     for _ in range(10)])
    bodies = [await r.json() for r in results]
    assert [r.status for r in results] == [200] * 10 and all(b == bodies[0] for b in bodies)
    assert await db.fetchval("SELECT amount_withdraw FROM external_wallets WHERE user_id = $1", alice["id"]) == \
        Decimal("14.7")
    assert await balance(client, alice, 1) == (credited - 15, 0)
    await assert_ledger_consistent(db)


async def test_a_keyed_refusal_is_remembered_and_replayed_after_the_wallet_is_funded(client, db):
    """The ledger's refusal is the key's outcome, as a movement is: retried after the wallet was
    funded, the same key answers the same refusal byte for byte and moves nothing; only a new key
    moves the money."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    headers = key()
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert first.status == 400 and first.headers.get("Idempotent-Replayed") is None
    first_body = await first.read()
    assert json.loads(first_body)["code"] == "insufficient_funds"
    assert json.loads(first_body)["request_id"] == first.headers["X-Request-ID"]
    stored = await db.fetchrow("SELECT status_code, response FROM idempotency_keys WHERE key = $1",
                               headers["Idempotency-Key"])
    assert stored["status_code"] == 400 and json.loads(stored["response"])["code"] == "insufficient_funds"
    await fund(client, alice, service, 1, "10")
    snapshot, counts = await wallets_snapshot(db), (await tx_count(db), await entry_count(db))
    for _ in range(2):
        again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
        assert again.status == 400 and again.headers.get("Idempotent-Replayed") == "true"
        assert await again.read() == first_body  # the first answer, request id included
    assert await wallets_snapshot(db) == snapshot
    assert (await tx_count(db), await entry_count(db)) == counts
    other = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "6", headers)
    assert other.status == 422, await other.text()  # the key is taken, by its refusal
    fresh = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", key())
    assert fresh.status == 200, await fresh.text()
    assert await balance(client, bob, 1) == (Decimal(5), 0)


async def test_a_refusal_before_the_ledger_is_not_remembered(client, db):
    """A request refused before it became a command (here: malformed parameters) never reached
    the ledger, so its key stays free."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    headers = key()
    bad = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "not-a-number", headers)
    assert bad.status == 400 and (await bad.json())["code"] == "invalid_amount"
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", headers["Idempotency-Key"]) == 0
    ok = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert ok.status == 200 and ok.headers.get("Idempotent-Replayed") is None, await ok.text()


async def test_a_bad_key_is_refused(client):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", {"Idempotency-Key": "x" * 129})
    assert resp.status == 400


async def test_two_app_instances_share_the_keys(make_client, db):
    one, two = await make_client(), await make_client()
    alice, bob = await register(one, "alice"), await register(one, "bob")
    service = await register_service(one)
    credited = await fund(one, alice, service, 1, "100")
    headers = key()
    responses = await asyncio.gather(*[
        api_transfer(app, alice, 1, bob["wallets"][1]["id"], "9", headers) for app in (one, two) * 8])
    bodies = [await r.json() for r in responses]
    assert [r.status for r in responses] == [200] * 16, bodies
    assert all(body == bodies[0] for body in bodies)
    assert await balance(one, alice, 1) == (credited - 9, 0)
    await assert_ledger_consistent(db)
