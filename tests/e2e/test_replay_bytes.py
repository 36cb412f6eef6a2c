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
