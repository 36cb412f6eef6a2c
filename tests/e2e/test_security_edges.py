"""The edges an attacker probes, through real HTTP on the real PostgreSQL: two token headers that
disagree, a JSON key given twice, someone else's wallet named as a transfer's source (refused
before any queue, no actor made), cursors and request ids that reveal nothing about anyone's
traffic, the journal recording walletd's own request id, and a Server header without versions."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

from tests.conftest import api_transfer, balance, fund, register, register_service
from walletd.appkeys import ledger_key, registry_key


async def test_token_headers_that_disagree_or_are_invalid_are_refused(client):
    alice, bob = await register(client), await register(client)
    cases = [
        {"token": alice["token"], "Authorization": "garbage"},
        {"token": alice["token"], "Authorization": "Bearer garbage"},
        {"Authorization": f"Bearer {alice['token']}", "token": "garbage"},
        {"Authorization": f"Bearer {alice['token']}", "token": bob["token"]},  # two callers at once
        {"Authorization": f"Basic {alice['token']}"},  # not the bearer scheme
        {"Authorization": "Bearer "},
        {"token": " "},
    ]
    for headers in cases:
        resp = await client.get("/user/get/id", headers=headers)
        body = await resp.json()
        assert resp.status == 401 and body["code"] == "token_invalid", (headers, body)
    resp = await client.get("/user/get/id", headers=[("token", alice["token"]), ("token", bob["token"])])
    assert resp.status == 401 and (await resp.json())["code"] == "token_invalid"
    for headers in ({"token": alice["token"], "Authorization": f"Bearer {alice['token']}"},  # the same token twice
                    {"token": f"Bearer {alice['token']}"}, {"Authorization": f"Bearer {alice['token']}"}):
        resp = await client.get("/user/get/id", headers=headers)
        assert resp.status == 200 and (await resp.json())["id"] == alice["id"], headers


async def test_a_json_key_given_twice_is_refused_and_moves_nothing(client, db):
    alice, bob = await register(client), await register(client)
    service = await register_service(client)
    credited = await fund(client, alice, service, 1, "100")
    source, target = alice["wallets"][1]["id"], bob["wallets"][1]["id"]
    transactions = await db.fetchval("SELECT count(*) FROM transactions")
    bodies = [
        f'{{"source_wallet_id":"{source}","target_wallet_id":"{target}","amount":"1","amount":"100"}}',
        f'{{"source_wallet_id":"{source}","target_wallet_id":"{target}","amount":"1","amount":"1"}}',
        f'{{"source_wallet_id":"{target}","source_wallet_id":"{source}","target_wallet_id":"{target}","amount":"1"}}',
        f'{{"source_wallet_id":"{source}","target_wallet_id":"{target}","amount":"1","x":{{"a":1,"a":2}}}}',
    ]
    for raw in bodies:
        resp = await client.post("/wallet/transfer", data=raw, headers={**alice["headers"],
                                                                         "Content-Type": "application/json"})
        body = await resp.json()
        assert resp.status == 400 and body["code"] == "parameter_conflict", (raw, body)
        assert "given more than once" in body["message"]
    assert await balance(client, alice, 1) == (credited, Decimal(0))
    assert await db.fetchval("SELECT count(*) FROM transactions") == transactions
    resp = await client.post("/auth/register", data='{"username":"a_b_c_1","username":"root","email":"x@example.com",'
                                                     '"password":"Str0ng!pass"}', headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["code"] == "parameter_conflict"


async def test_someone_elses_wallet_is_refused_before_any_queue_and_gets_no_actor(make_client):
    """The attacker floods transfers naming the victim's wallet (and wallets that do not exist) as
    their source, with tiny mailboxes: every one is refused as not theirs, no actor is made for any
    of those wallets, and the victim's own transfers, at the same moment, all go through."""
    client = await make_client(mailbox_size=2)
    victim, attacker, payee = await register(client), await register(client), await register(client)
    service = await register_service(client)
    credited = await fund(client, victim, service, 1, "100")
    registry = client.server.app[registry_key]
    victim_wallet = victim["wallets"][1]["id"]
    nowhere = [str(uuid.uuid4()) for _ in range(50)]

    async def attack(source: str):
        return await client.post("/wallet/transfer", headers=attacker["headers"], params={
            "source_wallet_id": source, "target_wallet_id": payee["wallets"][1]["id"], "amount": "1"})

    async def own() -> list[int]:  # one after another: the victim alone never fills its mailbox
        return [(await api_transfer(client, victim, 1, payee["wallets"][1]["id"], "0.5")).status for _ in range(20)]

    *attacks, owns = await asyncio.gather(*(attack(victim_wallet) for _ in range(200)),
                                          *(attack(w) for w in nowhere), own())
    for resp in attacks:
        body = await resp.json()
        assert resp.status == 400 and body["code"] == "wallet_not_found", body
    assert owns == [200] * 20  # never 503 behind the attacker's flood
    for wallet in (*nowhere, payee["wallets"][1]["id"]):
        assert uuid.UUID(wallet) not in registry.actors
    assert await balance(client, victim, 1) == (credited - 10, Decimal(0))


async def test_the_ownership_check_adds_no_round_trip_to_a_warm_transfer(client):
    alice, bob = await register(client), await register(client)
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    predictions = client.server.app[ledger_key].predictions
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200  # warms both
    reads = predictions.reads
    for _ in range(10):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    assert predictions.reads == reads  # owner and balances from memory; the batch's write is the only trip


async def test_cursors_are_sealed_bound_to_their_list_and_reveal_no_traffic(client):
    alice, bob, carol = await register(client), await register(client), await register(client)
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    await fund(client, bob, service, 1, "100")
    for _ in range(3):
        await api_transfer(client, alice, 1, carol["wallets"][1]["id"], "1")
        await api_transfer(client, bob, 1, carol["wallets"][1]["id"], "1")

    async def page(user, path="/user/transactions", **params):
        resp = await client.get(path, headers=user["headers"], params={"limit": 1, **params})
        return resp.status, await resp.json()

    _, first = await page(alice)
    cursor = first["next_cursor"]
    assert cursor and not cursor.isdigit() and len(cursor) <= 64
    # Other users' traffic between two pages changes nothing about alice's cursor: it depends on
    # her own records only, so it cannot count anyone else's.
    for _ in range(3):
        await api_transfer(client, bob, 1, carol["wallets"][1]["id"], "1")
    assert (await page(alice))[1]["next_cursor"] == cursor
    status, second = await page(alice, cursor=cursor)
    assert status == 200 and second["transactions"][0]["id"] != first["transactions"][0]["id"]

    # Bound to the list: alice's cursor means nothing on bob's list or on a wallet's list; tampering fails.
    assert (await page(bob, cursor=cursor))[0] == 422
    assert (await page(alice, "/wallet/transactions", wallet_id=alice["wallets"][1]["id"], cursor=cursor))[0] == 422
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for bad in (tampered, "1", "12345", "x" * 64, "%%%"):
        status, body = await page(alice, cursor=bad)
        assert status == 422 and body["errors"][0]["type"] == "cursor_invalid", (bad, body)


async def test_the_journal_records_walletds_request_id_never_the_clients(client, db, log_tap):
    alice, bob = await register(client), await register(client)
    service = await register_service(client)
    await fund(client, alice, service, 1, "10")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers={"X-Request-ID": "chosen-id"})
    assert resp.status == 200
    ours = resp.headers["X-Request-ID"]
    assert ours != "chosen-id"
    tx = await resp.json()
    recorded = await db.fetchval("SELECT e.request_id FROM transactions t JOIN journal_entries e ON e.id = t.entry_id "
                                 "WHERE t.id = $1", tx["id"])
    assert recorded == ours
    line = next(json.loads(x) for x in log_tap.lines if '"http.request"' in x and '"/wallet/transfer"' in x)
    assert (line["request_id"], line["client_request_id"]) == (ours, "chosen-id")


async def test_the_server_header_names_no_version(client):
    for resp in (await client.get("/health"), await client.get("/no/such/path"), await client.get("/user/wallets"),
                 await client.post("/auth/login", json={})):
        assert resp.headers["Server"] == "walletd", resp.headers.get("Server")
