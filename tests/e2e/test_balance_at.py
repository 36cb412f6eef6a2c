"""GET /user/wallet/balance?wallet_id=&at=: a wallet's balance and reserved balance at any instant
equal replaying the journal up to that instant (a hypothesis property test: random movements,
holds and settlements, random instants written with random UTC offsets); zeros before the wallet
existed; RFC 3339 read exactly; a user reads its own wallets, a payment service its service and
gateway wallets, and anyone else's wallet looks exactly like one that does not exist."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    assert_ledger_consistent,
    fund,
    register,
    register_service,
)

MICRO = timedelta(microseconds=1)


async def replayed(db, wallet_id: str, at: datetime) -> tuple[Decimal, Decimal]:
    """The oracle: every posting of the wallet whose journal entry is dated at or before `at`,
    summed per bucket (read from the journal itself, joined on the entry's own time)."""
    rows = await db.fetch("SELECT e.created_at, p.bucket, p.amount FROM postings p "
                          "JOIN journal_entries e ON e.id = p.entry_id WHERE p.wallet_id = $1", uuid.UUID(wallet_id))
    balance = sum((r["amount"] for r in rows if r["bucket"] == "B" and r["created_at"] <= at), Decimal(0))
    reserved = sum((r["amount"] for r in rows if r["bucket"] == "R" and r["created_at"] <= at), Decimal(0))
    return balance, reserved


async def entry_times(db, wallet_ids: list[str]) -> list[datetime]:
    rows = await db.fetch("SELECT DISTINCT e.created_at FROM postings p JOIN journal_entries e ON e.id = p.entry_id "
                          "WHERE p.wallet_id = ANY($1::uuid[]) ORDER BY 1", wallet_ids)
    return [r[0] for r in rows]


def rfc3339(at: datetime, offset_minutes: int) -> str:
    """`at` written in another zone: the same instant, another text."""
    zone = timezone(timedelta(minutes=offset_minutes))
    text = at.astimezone(zone).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


async def balance_at(client, headers: dict, wallet_id: str, at: str | None = None):
    params = {"wallet_id": wallet_id, **({"at": at} if at is not None else {})}
    return await client.get("/user/wallet/balance", headers=headers, params=params)


MOVES = st.one_of(
    st.tuples(st.just("transfer"), st.sampled_from([(0, 1), (1, 0), (0, 0)]), st.sampled_from([1, 2]),
              st.integers(1, 400)),
    st.tuples(st.just("deposit"), st.integers(0, 1), st.sampled_from(["paid", "rejected", "pending"]),
              st.integers(1, 900)),
    st.tuples(st.just("withdraw"), st.integers(0, 1), st.sampled_from(["paid", "rejected", "pending"]),
              st.integers(1, 600)),
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(moves=st.lists(MOVES, min_size=1, max_size=8), data=st.data())
async def test_balance_at_any_instant_equals_replaying_the_journal(client, db, moves, data):
    users = [await register(client, "when"), await register(client, "when")]
    service = await register_service(client)
    for user in users:
        await fund(client, user, service, 1, "20")  # credits 19.8
        await api_external_wallet(client, user, 1)
    for move in moves:
        if move[0] == "transfer":
            _, (src, dst), currency, cents = move
            await api_transfer(client, users[src], 1, users[dst]["wallets"][currency]["id"], Decimal(cents) / 100)
        elif move[0] == "deposit":
            _, who, outcome, cents = move
            tx = await (await api_deposit(client, users[who], service, 1, Decimal(cents) / 100)).json()
            if outcome != "pending":
                assert (await api_settle(client, service, "deposit", tx["id"], outcome)).status == 200
        else:
            _, who, outcome, cents = move
            resp = await api_withdraw(client, users[who], service, 1, Decimal(cents) / 100)
            if resp.status == 200 and outcome != "pending":
                tx = await resp.json()
                assert (await api_settle(client, service, "withdraw", tx["id"], outcome)).status == 200
    service_wallets = (await (await client.get("/service/wallets", headers=service["headers"])).json())["wallets"]
    readers = [(u["headers"], u["wallets"][c]["id"]) for u in users for c in (1, 2)]
    readers += [(service["headers"], w["id"]) for w in service_wallets if w["currency_id"] == 1]
    times = await entry_times(db, [wallet for _, wallet in readers])
    created = await db.fetchval("SELECT min(created_at) FROM wallets WHERE id = $1", uuid.UUID(readers[0][1]))
    candidates = [created - MICRO, *times, times[-1] + timedelta(days=1)]
    instants = data.draw(st.lists(
        st.tuples(st.sampled_from(candidates), st.sampled_from([-1, 0, 1]), st.sampled_from([0, 120, -330, 345])),
        min_size=1, max_size=6))
    for base, nudge, offset in instants:
        at = base + nudge * MICRO
        for headers, wallet_id in readers:
            resp = await balance_at(client, headers, wallet_id, rfc3339(at, offset))
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            expected = await replayed(db, wallet_id, at)
            assert (Decimal(body["balance"]), Decimal(body["reserved_balance"])) == expected, (at, wallet_id, body)
            assert body["at"] == at.isoformat(timespec="microseconds") and body["wallet_id"] == wallet_id
    await assert_ledger_consistent(db)


async def test_before_the_wallet_existed_it_held_nothing_and_now_is_the_default(client, db):
    service = await register_service(client)
    alice = await register(client, "alice")
    await fund(client, alice, service, 1, "10")
    wallet = alice["wallets"][1]["id"]
    resp = await balance_at(client, alice["headers"], wallet, "2001-01-01T00:00:00Z")
    body = await resp.json()
    assert resp.status == 200 and body["balance"] == "0.0000000000" and body["reserved_balance"] == "0.0000000000"
    assert body["at"] == "2001-01-01T00:00:00.000000+00:00" and body["currency_id"] == 1
    now = await (await balance_at(client, alice["headers"], wallet)).json()
    current = await (await client.get("/user/wallet", headers=alice["headers"], params={"wallet_id": wallet})).json()
    assert now["balance"] == current["balance"] == "9.9000000000"
    assert datetime.fromisoformat(now["at"]) <= datetime.now(timezone.utc)
    future = await (await balance_at(client, alice["headers"], wallet, "2999-12-31T23:59:59Z")).json()
    assert future["balance"] == current["balance"]


async def test_instants_are_read_as_rfc_3339(client, db):
    service = await register_service(client)
    alice = await register(client, "alice")
    await fund(client, alice, service, 1, "10")
    wallet = alice["wallets"][1]["id"]
    (paid_at,) = await entry_times(db, [wallet])
    # The same instant written five ways; a fraction finer than the microsecond is cut, so an
    # instant a hair after the deposit still includes it, and one a microsecond before does not.
    after = paid_at + MICRO / 2
    texts = [paid_at.isoformat(timespec="microseconds"), rfc3339(paid_at, 90), rfc3339(paid_at, -600),
             paid_at.strftime("%Y-%m-%dt%H:%M:%S.%f") + "z", after.strftime("%Y-%m-%dT%H:%M:%S.%f") + "999Z"]
    for text in texts:
        body = await (await balance_at(client, alice["headers"], wallet, text)).json()
        assert body["balance"] == "9.9000000000", (text, body)
    before = (paid_at - MICRO).strftime("%Y-%m-%dT%H:%M:%S.%f") + "999999Z"
    assert (await (await balance_at(client, alice["headers"], wallet, before)).json())["balance"] == "0.0000000000"
    # A + in an offset that was not percent-encoded arrives as a space: read as +.
    resp = await client.get(f"/user/wallet/balance?wallet_id={wallet}&at=2999-01-01T00:00:00+02:00",
                            headers=alice["headers"])
    assert (await resp.json())["at"] == "2998-12-31T22:00:00.000000+00:00"
    # A leap second is the last microsecond of its minute.
    leap = await (await balance_at(client, alice["headers"], wallet, "2016-12-31T23:59:60Z")).json()
    assert leap["at"] == "2016-12-31T23:59:59.999999+00:00"
    for bad in ("2026-03-31", "2026-03-31T23:59:59", "yesterday", "2026-02-30T00:00:00Z", "2026-03-31T24:00:00Z",
                "2026-03-31T23:59:59+25:00", "1700000000", "2026-03-31T23:59:59.Z", "0001-01-01T00:00:00+01:00"):
        resp = await balance_at(client, alice["headers"], wallet, bad)
        body = await resp.json()
        assert resp.status == 422 and body["code"] == "validation_failed", (bad, body)
        assert body["errors"][0]["loc"] == "at" and body["errors"][0]["type"] == "instant_invalid", (bad, body)


async def test_someone_elses_wallet_looks_missing_to_users_and_services(client):
    service, other_service = await register_service(client), await register_service(client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    mine = (await (await client.get("/service/wallets", headers=service["headers"])).json())["wallets"]
    theirs = (await (await client.get("/service/wallets", headers=other_service["headers"])).json())["wallets"]

    async def refused(headers: dict, wallet_id: str) -> dict:
        resp = await balance_at(client, headers, wallet_id)
        body = await resp.json()
        assert resp.status == 404 and body["code"] == "wallet_not_found", body
        return {k: v for k, v in body.items() if k != "request_id"}

    missing = await refused(alice["headers"], str(uuid.uuid4()))
    assert await refused(alice["headers"], bob["wallets"][1]["id"]) == missing
    assert await refused(alice["headers"], mine[0]["id"]) == missing  # a service's wallet is not a user's
    assert await refused(service["headers"], alice["wallets"][1]["id"]) == missing  # nor a user's a service's
    assert await refused(service["headers"], theirs[0]["id"]) == missing
    operator = (await refused(service["headers"], str(uuid.uuid4())))
    assert operator == missing
    for wallet in mine:  # its service and gateway wallets, in every currency
        resp = await balance_at(client, service["headers"], wallet["id"])
        assert resp.status == 200 and (await resp.json())["currency_id"] == wallet["currency_id"]
    assert (await client.get("/user/wallet/balance", params={"wallet_id": mine[0]["id"]})).status == 401


async def test_audit_names_a_posting_dated_apart_from_its_entry_or_naming_no_record(make_client, admin_url):
    """Balances at an instant and statements read each posting's own time and record: `walletd
    audit` checks they are its entry's time and a record that exists."""
    import asyncpg

    from tests.conftest import create_database, run_cli

    url = await create_database(admin_url)  # a database of its own: this test breaks it on purpose
    client = await make_client(database_url=url)
    service, alice = await register_service(client), await register(client, "alice")
    await fund(client, alice, service, 1, "10")
    code, out = await run_cli(url, "audit")
    assert code == 0 and "audit: clean" in out, out
    conn = await asyncpg.connect(url)
    try:
        entry, gateway, wallet = await conn.fetchrow(
            "SELECT p.entry_id, g.wallet_id, p.wallet_id FROM postings p JOIN postings g ON g.entry_id = p.entry_id "
            "WHERE p.wallet_id = $1 AND g.amount < 0", uuid.UUID(alice["wallets"][1]["id"]))
        ghost = uuid.uuid4()
        # A balanced pair slipped in later under an old entry, naming a record that does not exist.
        await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount, transaction_id) "
                           "VALUES ($1, $2, 1, 'B', 1, $4), ($1, $3, 1, 'B', -1, $4)", entry, wallet, gateway, ghost)
        code, out = await run_cli(url, "audit")
        assert code != 0, out
        assert "posting's time differs from its journal entry's" in out and str(entry) in out, out
        assert f"posting names a missing transaction: entry_id={entry}" in out and str(ghost) in out, out
    finally:
        await conn.close()
