"""Refused money movements and idempotent replays each leave one audit line, written at the HTTP
edge: `money.refused` (reason = the error code, wallet, principal, request id) and `money.replayed`."""

from __future__ import annotations

import json
import uuid

from tests.conftest import api_deposit, api_settle, api_transfer, fund, register, register_service


def lines_of(log_tap, resp, event: str) -> list[dict]:
    request_id = resp.headers["X-Request-ID"]
    return [line for line in map(json.loads, log_tap.lines)
            if line.get("event") == event and line.get("request_id") == request_id]


async def refused_once(log_tap, resp, status: int, reason: str) -> dict:
    assert resp.status == status, await resp.text()
    assert (await resp.json())["code"] == reason
    found = lines_of(log_tap, resp, "money.refused")
    assert len(found) == 1, found
    assert found[0]["reason"] == reason and found[0]["level"] == "info"
    return found[0]


async def test_refusals_are_audited_with_reason_wallet_and_principal(client, log_tap):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "10")
    own, bobs = alice["wallets"][1]["id"], bob["wallets"][1]["id"]

    overdraft = await api_transfer(client, alice, 1, bobs, "500")
    line = await refused_once(log_tap, overdraft, 400, "insufficient_funds")
    assert (line["wallet"], line["target_wallet_id"], line["amount"]) == (own, bobs, "500.0000000000")
    assert line["principal"] == alice["id"] and line["path"] == "/wallet/transfer"

    elsewhere = await client.post("/wallet/transfer", headers=alice["headers"], params={
        "source_wallet_id": bobs, "target_wallet_id": own, "amount": "1"})
    line = await refused_once(log_tap, elsewhere, 400, "wallet_not_found")
    assert line["wallet"] == bobs and line["principal"] == alice["id"]

    deposit = await client.post("/wallet/deposit", headers=alice["headers"], params={
        "service_user_id": service["id"], "wallet_id": bobs, "amount": "1"})
    assert (await refused_once(log_tap, deposit, 400, "wallet_not_found"))["wallet"] == bobs

    bad_amount = await api_transfer(client, alice, 1, bobs, "-5")
    assert "amount" not in await refused_once(log_tap, bad_amount, 400, "invalid_amount")  # it never parsed


async def test_a_conflicting_settlement_is_audited(client, log_tap):
    alice, service = await register(client, "alice"), await register_service(client)
    pending = await (await api_deposit(client, alice, service, 1, "5")).json()
    assert (await api_settle(client, service, "deposit", pending["id"], "paid")).status == 200
    conflict = await api_settle(client, service, "deposit", pending["id"], "rejected")
    line = await refused_once(log_tap, conflict, 409, "transaction_already_settled")
    assert line["transaction_id"] == pending["id"] and line["new_status"] == "rejected"
    assert line["principal"] == service["id"]


async def test_a_replay_is_audited_once_and_a_first_answer_is_not(client, log_tap):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "10")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers=key)
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers=key)
    assert first.status == again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert lines_of(log_tap, first, "money.replayed") == []
    (line,) = lines_of(log_tap, again, "money.replayed")
    assert line["principal"] == alice["id"] and line["wallet"] == alice["wallets"][1]["id"]
    assert line["idempotency_key"] == key["Idempotency-Key"]
    assert lines_of(log_tap, again, "money.refused") == []


async def test_refusals_elsewhere_are_not_money_events(client, log_tap):
    """Only the money-moving routes audit refusals; an unknown wallet on a read is just a 404."""
    alice = await register(client, "alice")
    resp = await client.get("/user/wallet", headers=alice["headers"], params={"wallet_id": str(uuid.uuid4())})
    assert resp.status == 404
    assert lines_of(log_tap, resp, "money.refused") == []
