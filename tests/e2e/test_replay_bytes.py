"""An idempotent replay answers the first response's exact bytes, although the stored copy comes
back from jsonb with its keys reordered: both go through one serializer in the model's order."""

from __future__ import annotations

import json
import uuid

from tests.conftest import (
    api_deposit,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    fund,
    register,
    register_service,
)
from walletd.handlers.schemas import TxOut


async def first_and_replay(call) -> tuple[str, bytes, bytes]:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await call(key)
    assert first.status == 200, await first.text()
    body = await first.read()
    again = await call(key)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    return key["Idempotency-Key"], body, await again.read()


async def test_replays_are_byte_identical_for_every_money_route(client, db):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "50")
    await api_external_wallet(client, alice, 1)
    pending = await (await api_deposit(client, alice, service, 1, "3")).json()
    calls = {
        "transfer": lambda key: api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1.5", headers=key),
        "cross-currency transfer": lambda key: api_transfer(client, alice, 1, bob["wallets"][2]["id"], "2",
                                                            headers=key),
        "deposit": lambda key: api_deposit(client, alice, service, 1, "7", headers=key),
        "withdraw": lambda key: api_withdraw(client, alice, service, 1, "4", headers=key),
        "settlement": lambda key: api_settle(client, service, "deposit", pending["id"], "paid", headers=key),
    }
    for name, call in calls.items():
        key, first, replay = await first_and_replay(call)
        assert first == replay, (name, first, replay)
        stored = await db.fetchval("SELECT response::text FROM idempotency_keys WHERE key = $1", key)
        assert list(json.loads(stored)) != list(TxOut.model_fields)  # jsonb reordered it: a raw replay would differ
    assert list((await (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).json()).keys()) == \
        list(TxOut.model_fields)


async def test_refusals_the_ledger_decides_replay_byte_for_byte_with_their_status(make_client, db):
    """Each refusal the ledger decides is the key's outcome: the retry answers its status and its
    bytes (the first request's id included) with Idempotent-Replayed, even once the cause is gone,
    and moves nothing."""
    client = await make_client(rates_max_age_seconds=3600)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await api_external_wallet(client, alice, 1)
    pending = await (await api_deposit(client, alice, service, 1, "3")).json()
    assert (await api_settle(client, service, "deposit", pending["id"], "paid")).status == 200
    usd_to_rub = "from_currency_id = 1 AND to_currency_id = 3"
    nowhere = str(uuid.uuid4())
    saved_rate = await db.fetchrow(f"SELECT rate, updated_at FROM exchange_rates WHERE {usd_to_rub}")
    # A source wallet that is not the caller's is refused before the command enters any queue (no
    # actor for it, no row written): the answer cannot change, since a wallet never changes owner.
    REFUSED_BEFORE_THE_LEDGER = {"someone else's wallet"}
    cases = {  # name: (call, the expected first answer, what then removes the cause)
        "insufficient funds": (lambda k: api_transfer(client, alice, 1, bob["wallets"][1]["id"], "50", headers=k),
                               (400, "insufficient_funds"), lambda: fund(client, alice, service, 1, "100")),
        "someone else's wallet": (lambda k: api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers={
            **k, **bob["headers"]}), (400, "wallet_not_found"), None),
        "a missing target": (lambda k: api_transfer(client, alice, 1, nowhere, "1", headers=k),
                             (400, "target_wallet_not_found"), None),
        "a missing rate": (lambda k: api_transfer(client, alice, 1, bob["wallets"][3]["id"], "1", headers=k),
                           (400, "exchange_rate_not_found"), None),
        "a stale rate": (lambda k: api_transfer(client, alice, 1, bob["wallets"][3]["id"], "2", headers=k),
                         (409, "exchange_rate_stale"), None),
        "a settlement conflict": (lambda k: api_settle(client, service, "deposit", pending["id"], "rejected",
                                                       headers=k), (409, "transaction_already_settled"), None),
    }
    for name, (call, (status, code), remove_cause) in cases.items():
        if name == "a missing rate":
            await db.execute(f"DELETE FROM exchange_rates WHERE {usd_to_rub}")
        if name == "a stale rate":
            await db.execute("INSERT INTO exchange_rates (from_currency_id, to_currency_id, rate, updated_at) "
                             "VALUES (1, 3, $1, now() - interval '2 hours')", saved_rate["rate"])
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = await call(key)
        body = await first.read()
        assert (first.status, json.loads(body)["code"]) == (status, code), (name, body)
        assert "Idempotent-Replayed" not in first.headers
        if remove_cause is not None:
            await remove_cause()
        if name in ("a missing rate", "a stale rate"):
            await db.execute(f"UPDATE exchange_rates SET updated_at = now() WHERE {usd_to_rub}")
        snapshot = await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id")
        again = await call(key)
        if name in REFUSED_BEFORE_THE_LEDGER:  # nothing stored, and the same refusal every time
            assert (again.status, (await again.json())["code"]) == (status, code), name
            assert "Idempotent-Replayed" not in again.headers, name
        else:
            assert again.status == status and again.headers.get("Idempotent-Replayed") == "true", name
            assert await again.read() == body, name
        assert await db.fetch("SELECT id, balance, reserved_balance FROM wallets ORDER BY id") == snapshot, name
    await db.execute(f"UPDATE exchange_rates SET rate = $1, updated_at = $2 WHERE {usd_to_rub}", *saved_rate)
