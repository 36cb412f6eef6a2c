"""GET /user/wallet/statement?wallet_id=&from=&to=: the movements of a wallet's balance in a
period, with the opening and closing balances; opening + the sum of the lines = closing on every
walk of the pages; a hold is an outgoing line when placed and an incoming one when released;
cursors cannot be forged or reused elsewhere; the CSV (Accept: text/csv or format=csv) is RFC 4180
with a header row and holds exactly the lines of the JSON pages."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

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

FIELDS = ["transaction_id", "type", "status", "amount", "balance_after", "timestamp"]
TOP = ["wallet_id", "currency_id", "from", "to", "opening_balance", "closing_balance", "entries", "next_cursor"]


@pytest.fixture
async def world(client):
    """alice's USD wallet: a paid deposit, transfers out and in (one across currencies), a
    withdrawal paid, one rejected, one still pending, and a deposit rejected."""
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")  # +99
    await fund(client, bob, service, 2, "50")
    await api_external_wallet(client, alice, 1)
    records = {}
    for amount in ("1.5", "2.25"):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount)).status == 200
    records["in"] = await (await api_transfer(client, bob, 2, alice["wallets"][1]["id"], "3")).json()
    for outcome in ("paid", "rejected", None):
        tx = await (await api_withdraw(client, alice, service, 1, "4")).json()
        records[f"withdraw_{outcome}"] = tx
        if outcome:
            assert (await api_settle(client, service, "withdraw", tx["id"], outcome)).status == 200
    rejected = await (await api_deposit(client, alice, service, 1, "7")).json()
    assert (await api_settle(client, service, "deposit", rejected["id"], "rejected")).status == 200
    return {"alice": alice, "bob": bob, "service": service, "records": records}


async def statement(client, headers: dict, wallet_id: str, **params):
    return await client.get("/user/wallet/statement", headers=headers, params={"wallet_id": wallet_id, **params})


async def walk(client, headers: dict, wallet_id: str, limit: int, **params) -> tuple[dict, list[dict]]:
    """Every page from the first; returns the first page and all lines, checking each page."""
    resp = await statement(client, headers, wallet_id, limit=limit, **params)
    first = await resp.json()
    assert resp.status == 200, first
    body, lines = first, []
    while True:
        assert list(body) == TOP and all(list(line) == FIELDS for line in body["entries"])
        assert (body["opening_balance"], body["closing_balance"]) == (first["opening_balance"], first["closing_balance"])
        assert len(body["entries"]) <= limit
        lines += body["entries"]
        if body["next_cursor"] is None:
            return first, lines
        assert len(body["entries"]) == limit, "only the last page may be short"
        resp = await statement(client, headers, wallet_id, limit=limit, cursor=body["next_cursor"])
        body = await resp.json()
        assert resp.status == 200, body


def running_total_holds(first: dict, lines: list[dict]) -> None:
    balance = Decimal(first["opening_balance"])
    for line in lines:
        balance += Decimal(line["amount"])
        assert Decimal(line["balance_after"]) == balance, line
    assert balance == Decimal(first["closing_balance"])


async def test_opening_plus_every_line_is_closing_on_every_walk_of_the_pages(client, world):
    alice = world["alice"]
    wallet = alice["wallets"][1]["id"]
    walks = []
    for limit in (1, 3, 7, 200):
        first, lines = await walk(client, alice["headers"], wallet, limit)
        running_total_holds(first, lines)
        walks.append(lines)
    assert all(lines == walks[0] for lines in walks)
    lines = walks[0]
    assert first["opening_balance"] == "0.0000000000" and first["from"] is None and first["currency_id"] == 1
    current = await (await client.get("/user/wallet", headers=alice["headers"], params={"wallet_id": wallet})).json()
    assert first["closing_balance"] == current["balance"]
    # deposit +99, two transfers out, one in, three holds (out), one release (in); the paid
    # withdrawal spends its hold (reserved only: no line), the rejected deposit moved nothing.
    records = world["records"]
    assert [(line["type"], line["amount"]) for line in lines] == [
        ("deposit", "99.0000000000"), ("transfer", "-1.5000000000"), ("transfer", "-2.2500000000"),
        ("transfer", records["in"]["converted_amount"]), ("withdraw", "-4.0000000000"),
        ("withdraw", "-4.0000000000"), ("withdraw", "4.0000000000"), ("withdraw", "-4.0000000000")]
    assert lines[3]["transaction_id"] == records["in"]["id"]
    assert [line["transaction_id"] for line in lines[4:]] == [
        records["withdraw_paid"]["id"], records["withdraw_rejected"]["id"], records["withdraw_rejected"]["id"],
        records["withdraw_None"]["id"]]
    assert [line["status"] for line in lines[4:]] == ["paid", "rejected", "rejected", "pending"]
    times = [line["timestamp"] for line in lines]
    assert times == sorted(times) and lines[3]["timestamp"] == records["in"]["timestamp"]


async def test_a_period_opens_and_closes_at_the_balances_of_its_ends(client, world):
    alice = world["alice"]
    wallet = alice["wallets"][1]["id"]
    _, everything = await walk(client, alice["headers"], wallet, 200)
    start, end = everything[2]["timestamp"], everything[5]["timestamp"]
    first, lines = await walk(client, alice["headers"], wallet, 2, **{"from": start, "to": end})
    assert lines == [{**line} for line in everything[3:6]]  # after `from`, up to `to` included
    assert first["opening_balance"] == everything[2]["balance_after"]
    assert first["closing_balance"] == everything[5]["balance_after"]
    assert first["from"] == start and first["to"] == end
    for at, expected in ((start, first["opening_balance"]), (end, first["closing_balance"])):
        body = await (await client.get("/user/wallet/balance", headers=alice["headers"],
                                       params={"wallet_id": wallet, "at": at})).json()
        assert body["balance"] == expected
    empty = await (await statement(client, alice["headers"], wallet, **{"from": end, "to": end})).json()
    assert empty["entries"] == [] and empty["opening_balance"] == empty["closing_balance"]
    resp = await statement(client, alice["headers"], wallet, **{"from": end, "to": start})
    body = await resp.json()
    assert resp.status == 422 and body["errors"][0]["type"] == "period_invalid", body


async def test_cursors_cannot_be_forged_or_used_elsewhere(client, world):
    alice, bob = world["alice"], world["bob"]
    wallet = alice["wallets"][1]["id"]
    page = await (await statement(client, alice["headers"], wallet, limit=2)).json()
    cursor = page["next_cursor"]
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in (flipped, "abc", cursor[:-4], "x" * 2000, str(uuid.uuid4())):
        resp = await statement(client, alice["headers"], wallet, cursor=bad)
        body = await resp.json()
        assert resp.status == 422 and body["code"] == "validation_failed", (bad, body)
        assert body["errors"][0]["loc"] == "cursor", body
    other = alice["wallets"][2]["id"]
    assert (await statement(client, alice["headers"], other, cursor=cursor)).status == 422
    assert (await statement(client, alice["headers"], wallet, cursor=cursor, to=page["to"])).status == 200
    assert (await statement(client, alice["headers"], wallet, cursor=cursor, to="2001-01-01T00:00:00Z")).status == 422
    # Someone else's wallet looks missing, with or without a cursor.
    resp = await statement(client, bob["headers"], wallet, cursor=cursor)
    assert resp.status == 404 and (await resp.json())["code"] == "wallet_not_found"


async def test_csv_is_rfc_4180_with_a_header_and_every_line_of_the_pages(client, world):
    alice = world["alice"]
    wallet = alice["wallets"][1]["id"]
    first, lines = await walk(client, alice["headers"], wallet, 3)
    for how in ({"headers": {**alice["headers"], "Accept": "text/csv"}, "params": {}},
                {"headers": alice["headers"], "params": {"format": "csv"}}):
        resp = await client.get("/user/wallet/statement", headers=how["headers"],
                                params={"wallet_id": wallet, "to": first["to"], **how["params"]})
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert resp.headers["Walletd-Opening-Balance"] == first["opening_balance"]
        assert resp.headers["Walletd-Closing-Balance"] == first["closing_balance"]
        raw = await resp.read()
        assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF, nothing else
        rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
        assert rows[0] == FIELDS
        assert rows[1:] == [[line[f] or "" for f in FIELDS] for line in lines]
    resp = await client.get("/user/wallet/statement", headers=alice["headers"],
                            params={"wallet_id": wallet, "format": "csv", "cursor": first["next_cursor"]})
    assert resp.status == 422
    json_anyway = await statement(client, {**alice["headers"], "Accept": "application/json"}, wallet)
    assert json_anyway.headers["Content-Type"].startswith("application/json")


async def test_a_payment_service_reads_its_own_wallets_statements(client, world):
    service, alice = world["service"], world["alice"]
    wallets = (await (await client.get("/service/wallets", headers=service["headers"])).json())["wallets"]
    by_kind = {(w["kind"], w["currency_id"]): w for w in wallets}
    first, lines = await walk(client, service["headers"], by_kind[("service", 1)]["id"], 2)
    running_total_holds(first, lines)
    # Commission on alice's deposit (1% of 100) and on her paid withdrawal (2% of 4).
    assert [(line["type"], line["amount"]) for line in lines] == [("deposit", "1.0000000000"),
                                                                  ("withdraw", "0.0800000000")]
    first, lines = await walk(client, service["headers"], by_kind[("gateway", 1)]["id"], 50)
    assert [line["amount"] for line in lines] == ["-100.0000000000", "3.9200000000"]
    assert first["closing_balance"] == by_kind[("gateway", 1)]["balance"] == "-96.0800000000"
    resp = await statement(client, service["headers"], alice["wallets"][1]["id"])
    assert resp.status == 404
    resp = await statement(client, alice["headers"], by_kind[("service", 1)]["id"])
    assert resp.status == 404


async def test_a_statement_of_a_wallet_without_movements_is_empty_and_balanced(client):
    carol = await register(client, "carol")
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    body = await (await statement(client, carol["headers"], carol["wallets"][3]["id"], to=later)).json()
    assert body["entries"] == [] and body["next_cursor"] is None
    assert body["opening_balance"] == body["closing_balance"] == "0.0000000000"
