"""POST /wallet/transfers: many legs from the caller's wallets, all or none, in one journal entry,
answered in request order; a refused leg refuses the request (400 legs_refused naming each refused
leg by index and code) and nothing moves; one Idempotency-Key covers the request; opposite
concurrent multi-leg transfers neither deadlock nor break the books."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from tests.conftest import (
    api_transfer,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
    wallets_snapshot,
)
from tests.oracles import converted
from tests.polling import until


async def legs(client, user: dict, transfers: list, headers: dict | None = None):
    return await client.post("/wallet/transfers", headers={**user["headers"], **(headers or {})},
                             json={"transfers": transfers})


def leg(source: str, target: str, amount) -> dict:
    return {"source_wallet_id": source, "target_wallet_id": target, "amount": str(amount)}


async def refused(resp) -> list[dict]:
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "legs_refused", body
    return [(e["index"], e["code"]) for e in body["errors"]]


async def test_every_leg_moves_in_one_journal_entry_answered_in_request_order(client, db):
    alice, bob, carol = [await register(client, n) for n in ("alice", "bob", "carol")]
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")  # 99
    await fund(client, alice, service, 2, "10")  # 9.9
    rate = await db.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = 1 AND to_currency_id = 3")
    plan = [leg(alice["wallets"][1]["id"], bob["wallets"][1]["id"], "10"),
            leg(alice["wallets"][2]["id"], carol["wallets"][2]["id"], "2.5"),
            leg(alice["wallets"][1]["id"], carol["wallets"][3]["id"], "4"),  # converted, as /wallet/transfer
            leg(alice["wallets"][1]["id"], bob["wallets"][1]["id"], "0.0000000001")]
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    resp = await legs(client, alice, plan)
    body = await resp.json()
    assert resp.status == 200, body
    assert list(body) == ["transfers"] and len(body["transfers"]) == 4
    for record, asked in zip(body["transfers"], plan, strict=True):
        assert (record["from_wallet_id"], record["to_wallet_id"]) == (asked["source_wallet_id"], asked["target_wallet_id"])
        assert Decimal(record["amount"]) == Decimal(asked["amount"])
        assert record["type"] == "transfer" and record["status"] == "close"
    assert body["transfers"][2]["converted_amount"] == f"{converted('4', rate):f}"
    assert len({r["timestamp"] for r in body["transfers"]}) == 1
    assert await db.fetchval("SELECT count(*) FROM journal_entries") == entries + 1
    ids = [uuid.UUID(r["id"]) for r in body["transfers"]]
    assert await db.fetchval("SELECT count(DISTINCT entry_id) FROM transactions WHERE id = ANY($1)", ids) == 1
    assert await balance(client, alice, 1) == (Decimal("99") - Decimal("14.0000000001"), 0)
    assert await balance(client, alice, 2) == (Decimal("7.4"), 0)
    assert await balance(client, bob, 1) == (Decimal("10.0000000001"), 0)
    assert await balance(client, carol, 3) == (converted("4", rate), 0)
    # The source's statement names every leg on its own line.
    statement = await (await client.get("/user/wallet/statement", headers=alice["headers"],
                                        params={"wallet_id": alice["wallets"][1]["id"]})).json()
    mine = [line for line in statement["entries"] if line["transaction_id"] in {r["id"] for r in body["transfers"]}]
    assert sorted(line["amount"] for line in mine) == ["-0.0000000001", "-10.0000000000", "-4.0000000000"]
    await assert_ledger_consistent(db)


async def test_a_refused_leg_refuses_them_all_naming_each_and_nothing_moves(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10.101010101")  # 10
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    before = await wallets_snapshot(db)
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    # In request order: the third leg finds only 2 of the 6 it asks for.
    assert await refused(await legs(client, alice, [leg(a, b, 4), leg(a, b, 4), leg(a, b, 6), leg(a, b, 1)])) == [
        (2, "insufficient_funds")]
    assert await refused(await legs(client, alice, [leg(a, b, 1), leg(a, bob["wallets"][2]["id"], 100)])) == [
        (1, "insufficient_funds")]
    cases = [
        ([leg(b, a, 1), leg(a, b, 1)], [(0, "wallet_not_found")]),  # someone else's source
        ([leg(a, str(uuid.uuid4()), 1)], [(0, "target_wallet_not_found")]),
        ([leg(a, a, 1), leg(a, b, 1), leg(str(uuid.uuid4()), b, 1)], [(0, "same_wallet"), (2, "wallet_not_found")]),
        ([leg(a, b, "abc"), leg(a, b, 1), leg(a, b, "-1")], [(0, "invalid_amount"), (2, "invalid_amount")]),
        ([{"source_wallet_id": a, "amount": "1"}, leg("not-a-uuid", b, 1), "leg"],
         [(0, "validation_failed"), (1, "validation_failed"), (2, "validation_failed")]),
    ]
    for plan, expected in cases:
        assert await refused(await legs(client, alice, plan)) == expected, plan
    resp = await legs(client, alice, [leg(a, b, "abc")])
    body = await resp.json()
    assert body["errors"][0]["message"].startswith("Invalid amount: not a number"), body
    assert await wallets_snapshot(db) == before
    assert await db.fetchval("SELECT count(*) FROM journal_entries") == entries


async def test_the_request_itself_must_hold_one_to_max_legs(make_client):
    client = await make_client(max_batch_legs=3)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    for body in ({"transfers": []}, {"transfers": [leg(a, b, 1)] * 4}, {}, {"transfers": "all"}):
        resp = await client.post("/wallet/transfers", headers=alice["headers"], json=body)
        answer = await resp.json()
        assert resp.status == 422 and answer["code"] == "validation_failed", (body, answer)
        assert answer["errors"][0]["loc"] == "transfers", answer
    assert (await client.post("/wallet/transfers", json={"transfers": [leg(a, b, 1)]})).status == 401


async def test_a_thousand_legs_fit_in_a_request_and_more_bytes_do_not(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "20")
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    plan = [leg(a, b, "0.01")] * 1000
    body = json.dumps({"transfers": plan})
    assert len(body) > 64 * 1024  # past WALLETD_MAX_BODY_BYTES: this route reads more
    resp = await client.post("/wallet/transfers", headers={**alice["headers"], "Content-Type": "application/json"},
                             data=body)
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["transfers"]) == 1000
    assert await balance(client, bob, 1) == (Decimal(10), 0)
    huge = json.dumps({"transfers": plan, "padding": "x" * (300 * 1024)})
    resp = await client.post("/wallet/transfers", headers={**alice["headers"], "Content-Type": "application/json"},
                             data=huge)
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
    # Every other route keeps its limit.
    resp = await client.post("/wallet/transfer", headers={**alice["headers"], "Content-Type": "application/json"},
                             data=json.dumps({**plan[0], "padding": "x" * (70 * 1024)}))
    assert resp.status == 413
    await assert_ledger_consistent(db)


async def test_one_idempotency_key_covers_the_request_and_replays_it_byte_for_byte(client, db):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    plan = [leg(a, b, 1), leg(alice["wallets"][1]["id"], bob["wallets"][3]["id"], "2")]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await legs(client, alice, plan, key)
    assert first.status == 200
    again = await legs(client, alice, plan, key)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.read() == await first.read()
    assert await balance(client, bob, 1) == (Decimal(1), 0)
    resp = await legs(client, alice, plan[:1], key)
    assert resp.status == 422 and (await resp.json())["code"] == "idempotency_key_reused"
    await assert_ledger_consistent(db)


async def test_opposite_concurrent_multi_leg_transfers_neither_deadlock_nor_lose_money(client, db):
    """Each user debits two of their wallets at once (one joint command across two actors) while
    the others do the same the opposite way, with single transfers in between."""
    users = [await register(client, f"ring{i}") for i in range(3)]
    service = await register_service(client)
    for user in users:
        await fund(client, user, service, 1, "101.0101010101")  # 100
        await fund(client, user, service, 2, "101.0101010101")
    calls = []
    for round_ in range(12):
        for i, user in enumerate(users):
            other = users[(i + 1 + round_ % 2) % 3]
            pairs = [(1, 1), (2, 2)] if round_ % 2 else [(2, 2), (1, 1)]
            calls.append(legs(client, user, [leg(user["wallets"][s]["id"], other["wallets"][t]["id"], "0.5")
                                             for s, t in pairs]))
            calls.append(api_transfer(client, user, 2, other["wallets"][1]["id"], "0.25"))
    responses = await asyncio.wait_for(asyncio.gather(*calls), timeout=120)
    assert {r.status for r in responses} == {200}, [await r.text() for r in responses if r.status != 200][:3]
    totals = [sum([(await balance(client, u, c))[0] for u in users], Decimal(0)) for c in (1, 2)]
    assert totals[1] == Decimal(300) - 12 * 3 * Decimal("0.25")  # EUR left for USD wallets, converted
    assert totals[0] > Decimal(300)
    await assert_ledger_consistent(db)


async def test_one_audit_line_names_every_leg_and_a_refusal_is_audited_too(client, log_tap):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    log_tap.clear()
    body = await (await legs(client, alice, [leg(a, b, 1), leg(a, bob["wallets"][2]["id"], 2)])).json()
    await refused(await legs(client, alice, [leg(a, b, 500)]))

    def events(name: str) -> list[dict]:
        return [json.loads(line) for line in log_tap.lines if f'"{name}"' in line]

    (moved,) = await until(lambda: events("money.transferred_legs"), what="the audit line")
    assert [m["transaction_id"] for m in moved["legs"]] == [r["id"] for r in body["transfers"]]
    assert [(m["from_wallet_id"], m["to_wallet_id"], m["amount"]) for m in moved["legs"]] == [
        (a, b, "1.0000000000"), (a, bob["wallets"][2]["id"], "2.0000000000")]
    assert moved["principal"] == alice["id"] and moved["entry_id"]
    assert not events("money.transferred"), "one line per request, not one per leg"
    (refusal,) = await until(lambda: events("money.refused"), what="the refusal's audit line")
    assert refusal["reason"] == "legs_refused" and refusal["path"] == "/wallet/transfers"


async def test_a_refusal_the_ledger_decided_is_remembered_under_the_key(client, db):
    """As for every money route: a refusal decided against the balances is the key's answer, replayed
    byte for byte even once the money is there (a new key moves it)."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    a, b = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await legs(client, alice, [leg(a, b, 1), leg(a, b, 2)], key)
    assert await refused(first) == [(0, "insufficient_funds"), (1, "insufficient_funds")]
    await fund(client, alice, service, 1, "10")
    again = await legs(client, alice, [leg(a, b, 1), leg(a, b, 2)], key)
    assert again.status == 400 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.read() == await first.read()
    fresh = await legs(client, alice, [leg(a, b, 1), leg(a, b, 2)], {"Idempotency-Key": uuid.uuid4().hex})
    assert fresh.status == 200
    await assert_ledger_consistent(db)
