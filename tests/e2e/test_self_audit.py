"""The self-audit job: new entries are checked a moment after they are sealed (chain, balances
against postings, reserved balances against pending holds), the whole journal every full interval;
a problem is logged once as audit.problem at error level and counted by walletd_audit_problems.

Each test has a database of its own: they tamper with it."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import api_transfer, create_database, fund, register, register_service
from tests.polling import until


@pytest.fixture
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


FAST = {"seal_interval_seconds": 0.05, "audit_interval_seconds": 0.1}


async def metric(client, name: str) -> float | None:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def problems_logged(log_tap) -> list[dict]:
    return [json.loads(line) for line in log_tap.lines if '"audit.problem"' in line]


async def users(client) -> tuple[dict, dict, dict]:
    service = await register_service(client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await fund(client, alice, service, 1, "300")
    return service, alice, bob


async def checked_everything(db) -> bool:
    return await db.fetchval("SELECT c.verified_seq = (SELECT count(*) FROM journal_entries) FROM audit_cursor c")


async def test_new_entries_are_checked_and_the_metrics_say_so(make_client, db, log_tap):
    client = await make_client(**FAST)
    before = await metric(client, "walletd_audit_verified_entries_total") or 0
    _, alice, bob = await users(client)
    for amount in ("1", "2", "3"):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount)).status == 200
    await until(lambda: checked_everything(db), what="the self-audit reached the last entry")
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    verified = await until(lambda: _at_least(client, "walletd_audit_verified_entries_total", before + entries))
    assert verified == before + entries  # each new entry checked once
    assert await metric(client, "walletd_audit_problems") == 0
    last = await metric(client, "walletd_audit_last_success_timestamp_seconds")
    assert last is not None and time.time() - 60 < last <= time.time() + 1
    assert problems_logged(log_tap) == []
    assert await db.fetchval("SELECT count(*) FROM audit_balances WHERE balance <> 0") >= 3


async def _at_least(client, name: str, value: float):
    current = await metric(client, name)
    return current if current is not None and current >= value else None


async def test_a_balance_edited_outside_the_journal_is_found_when_the_wallet_moves_next(make_client, db, log_tap):
    client = await make_client(**FAST)
    _, alice, bob = await users(client)
    await until(lambda: checked_everything(db))
    bob_wallet = uuid.UUID(bob["wallets"][1]["id"])
    await db.execute("UPDATE wallets SET balance = balance + 100 WHERE id = $1", bob_wallet)  # money from nowhere
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5")).status == 200

    def found():
        return [p for p in problems_logged(log_tap) if p["key"] == f"balance:{bob_wallet}"]
    (line,) = await until(found, what="audit.problem about bob's wallet")
    assert line["level"] == "error"
    assert line["problem"] == (f"wallet {bob_wallet} holds balance 105.0000000000 / reserved 0.0000000000, its "
                               "postings sum to 5.0000000000 / 0.0000000000")
    await until(lambda: _at_least(client, "walletd_audit_problems", 1))
    # found once: the next movement of the same wallet does not log it again
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    await until(lambda: checked_everything(db))
    assert len(found()) == 1 and await metric(client, "walletd_audit_problems") == 1
    assert await db.fetchval("SELECT problem FROM audit_problems WHERE key = $1", f"balance:{bob_wallet}") \
        == line["problem"]


async def test_a_reserved_balance_no_pending_withdrawal_holds_is_found(make_client, db, log_tap):
    client = await make_client(**FAST)
    _, alice, bob = await users(client)
    await until(lambda: checked_everything(db))
    wallet = uuid.UUID(alice["wallets"][1]["id"])
    # balance moved into the hold without a withdrawal: sums unchanged, but nothing holds it
    await db.execute("UPDATE wallets SET balance = balance - 10, reserved_balance = reserved_balance + 10 "
                     "WHERE id = $1", wallet)
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200

    def keys():
        return {p["key"] for p in problems_logged(log_tap)}
    await until(lambda: {f"holds:{wallet}", f"balance:{wallet}"} <= keys(), what="holds and balance problems")
    (holds,) = [p for p in problems_logged(log_tap) if p["key"] == f"holds:{wallet}"]
    assert holds["problem"] == f"wallet {wallet} has reserved balance 10.0000000000, its pending withdrawals hold 0.0000000000"


async def test_an_entry_altered_after_its_check_is_found_by_the_full_pass(make_client, db, log_tap):
    client = await make_client(**FAST, audit_full_interval_seconds=1.0)
    _, alice, bob = await users(client)
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "4")).status == 200
    await until(lambda: checked_everything(db))
    entry = await db.fetchrow("SELECT s.seq, s.entry_id FROM journal_seals s JOIN transactions t "
                              "ON t.entry_id = s.entry_id WHERE t.type = 'transfer' AND t.amount = 4")
    await db.execute("UPDATE transactions SET amount = 40 WHERE entry_id = $1", entry["entry_id"])
    key = f"chain:altered:{entry['seq']}:{entry['entry_id']}"
    line = await until(lambda: [p for p in problems_logged(log_tap) if p["key"] == key], timeout=30,
                       what="the full pass names the altered entry")
    assert line[0]["problem"].startswith(f"journal chain: entry {entry['entry_id']} (seal {entry['seq']}) was altered")
    assert line[0]["level"] == "error"
    await until(lambda: _at_least(client, "walletd_audit_problems", 1))


async def test_the_full_pass_records_each_faulty_record_under_its_own_key(make_client, db, log_tap):
    """Two records with the same fault are two problems: each is logged and stored, not only the first."""
    client = await make_client(**FAST, audit_full_interval_seconds=1.0)
    _, alice, bob = await users(client)
    for amount in ("3", "5"):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount)).status == 200
    await until(lambda: checked_everything(db))
    ids = [r[0] for r in await db.fetch("SELECT id FROM transactions WHERE type = 'transfer' AND amount IN (3, 5)")]
    await db.execute("UPDATE transactions SET amount = amount + 1 WHERE id = ANY($1::uuid[])", ids)
    title = "transaction record disagrees with its journal entry"

    def record_problems() -> list[dict]:
        return [p for p in problems_logged(log_tap) if p["problem"].startswith(title)]

    found = await until(lambda: len(record_problems()) >= 2 and record_problems(), timeout=30,
                        what="the full pass names both altered records")
    assert {str(i) for i in ids} == {next(str(i) for i in ids if str(i) in p["problem"]) for p in found}
    stored = await db.fetchval("SELECT count(*) FROM audit_problems WHERE problem LIKE $1", title + "%")
    assert stored == 2
