"""The journal's hash chain: every movement made through HTTP is sealed, in the order its transaction
took, and `walletd audit` names the first entry altered, removed or inserted by SQL (with the
append-only triggers disabled, as a superuser could), or a tail cut off (--expect-head).

Each test has a database of its own: they tamper with it."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest

from tests.chain_oracle import recompute
from tests.conftest import (
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    create_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.polling import until


@pytest.fixture
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


async def unsealed(db) -> int:
    return await db.fetchval("SELECT count(*) FROM journal_entries e "
                             "WHERE NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.entry_id = e.id)")


async def all_sealed(db) -> int:
    """Waits until the app's sealer has sealed every entry; returns the chain's length."""
    await until(lambda: _none_left(db), what="every entry sealed")
    return await db.fetchval("SELECT count(*) FROM journal_seals")


async def _none_left(db) -> bool:
    return await unsealed(db) == 0


async def audit(database_url: str, *args: str) -> tuple[int, list[str]]:
    code, out = await run_cli(database_url, "audit", *args)
    return code, out.strip().splitlines()


def chain_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("journal chain: ") and " checked" not in line]


async def movements(client) -> dict:
    """A bit of everything walletd writes: deposits paid and rejected, transfers in one currency and
    across two, a withdrawal paid and one rejected."""
    service = await register_service(client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await fund(client, alice, service, 1, "500")
    await fund(client, bob, service, 2, "80")
    resp = await client.post("/wallet/deposit", headers=alice["headers"], params={
        "service_user_id": service["id"], "wallet_id": alice["wallets"][1]["id"], "amount": "7"})
    assert (await api_settle(client, service, "deposit", (await resp.json())["id"], "rejected")).status == 200
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "12.5")).status == 200
    assert (await api_transfer(client, alice, 1, bob["wallets"][2]["id"], "3")).status == 200
    await api_external_wallet(client, alice, 1)
    for outcome in ("paid", "rejected"):
        resp = await api_withdraw(client, alice, service, 1, "20")
        assert resp.status == 200, await resp.text()
        assert (await api_settle(client, service, "withdraw", (await resp.json())["id"], outcome)).status == 200
    return {"service": service, "alice": alice, "bob": bob}


async def entry_of_transfer(db, wallet_id: str) -> asyncpg.Record:
    return await db.fetchrow(
        """SELECT e.id, s.seq FROM transactions t JOIN journal_entries e ON e.id = t.entry_id
           JOIN journal_seals s ON s.entry_id = e.id
           WHERE t.type = 'transfer' AND t.to_wallet_id = $1 AND t.parent_id IS NULL ORDER BY s.seq LIMIT 1""",
        uuid.UUID(wallet_id))


async def test_every_movement_is_sealed_and_the_chain_matches_an_independent_recomputation(client, db):
    await movements(client)
    length = await all_sealed(db)
    entries = await db.fetchval("SELECT count(*) FROM journal_entries")
    assert length == entries == 8  # 2 deposits paid, 2 transfers, 2 withdrawals: hold + outcome
    seqs = [r[0] for r in await db.fetch("SELECT seq FROM journal_seals ORDER BY seq")]
    assert seqs == list(range(1, length + 1))
    links = await db.fetch("SELECT s.prev_hash, p.hash FROM journal_seals s "
                           "LEFT JOIN journal_seals p ON p.seq = s.seq - 1 ORDER BY s.seq")
    assert bytes(links[0][0]) == bytes(32) and all(bytes(a) == bytes(b) for a, b in links[1:])
    for seq, stored, recomputed in await recompute(db):
        assert stored == recomputed, f"seal {seq}"
    # records whose withdrawal settled left their hold entry for the settling one: still covered once
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE status <> 'pending' AND entry_id IS NOT NULL "
                             "AND NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.entry_id = transactions.entry_id)"
                             ) == 0


async def test_the_audit_passes_a_clean_chain_and_prints_its_head(client, db, database_url):
    await movements(client)
    length = await all_sealed(db)
    head = bytes(await db.fetchval("SELECT hash FROM journal_seals ORDER BY seq DESC LIMIT 1"))
    code, lines = await audit(database_url, "--expect-head", head.hex())
    assert code == 0, lines
    assert f"journal chain: {length} entries checked, head seq {length} hash {head.hex()}; 0 newer entries " \
           "not sealed yet" in lines
    assert lines[-1] == "audit: clean"


async def test_a_posting_moved_to_another_wallet_with_balances_fixed_is_named(client, db, database_url):
    people = await movements(client)
    carol = await register(client, "carol")
    bob_wallet = people["bob"]["wallets"][1]["id"]
    await all_sealed(db)
    target = await entry_of_transfer(db, bob_wallet)
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")  # the append-only triggers off
        amount = await db.fetchval("UPDATE postings SET wallet_id = $1 WHERE entry_id = $2 AND wallet_id = $3 "
                                   "RETURNING amount", uuid.UUID(carol["wallets"][1]["id"]),
                                   target["id"], uuid.UUID(bob_wallet))
        await db.execute("UPDATE wallets SET balance = balance - $1 WHERE id = $2", amount,
                         uuid.UUID(bob_wallet))
        await db.execute("UPDATE wallets SET balance = balance + $1 WHERE id = $2", amount,
                         uuid.UUID(carol["wallets"][1]["id"]))
    code, lines = await audit(database_url)
    assert code == 1
    # balances still equal their postings and every entry balances; the transfer's record no longer
    # matches its entry, and the chain names the entry
    transfer_id = await db.fetchval("SELECT id FROM transactions WHERE entry_id = $1", target["id"])
    assert [line.split(", type=")[0] for line in lines if not line.startswith(("journal chain: ", "audit: "))] == [
        f"transaction record disagrees with its journal entry (amount, wallets or status): id={transfer_id}"]
    assert chain_lines(lines) == [
        f"journal chain: entry {target['id']} (seal {target['seq']}) was altered: the entry, its postings or its "
        "records differ from what was sealed"]


async def test_an_altered_record_is_named(client, db, database_url):
    people = await movements(client)
    await all_sealed(db)
    target = await entry_of_transfer(db, people["bob"]["wallets"][1]["id"])
    await db.execute("UPDATE transactions SET amount = amount + 1 WHERE entry_id = $1", target["id"])
    code, lines = await audit(database_url)
    assert code == 1
    assert chain_lines(lines)[0].startswith(f"journal chain: entry {target['id']} (seal {target['seq']}) was altered")


async def test_a_deleted_entry_is_named(client, db, database_url):
    people = await movements(client)
    await all_sealed(db)
    target = await entry_of_transfer(db, people["bob"]["wallets"][1]["id"])
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        # undo its postings' effect, so every balance still equals its postings
        await db.execute("UPDATE wallets w SET balance = w.balance - p.amount FROM postings p "
                         "WHERE p.entry_id = $1 AND p.wallet_id = w.id", target["id"])
        await db.execute("DELETE FROM postings WHERE entry_id = $1", target["id"])
        await db.execute("DELETE FROM transactions WHERE entry_id = $1", target["id"])
        await db.execute("DELETE FROM journal_entries WHERE id = $1", target["id"])
    code, lines = await audit(database_url)
    assert code == 1
    assert chain_lines(lines) == [f"journal chain: entry {target['id']} (seal {target['seq']}) was removed"]


async def test_a_deleted_entry_with_its_seal_is_named_by_the_gap(client, db, database_url):
    people = await movements(client)
    await all_sealed(db)
    target = await entry_of_transfer(db, people["bob"]["wallets"][1]["id"])
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE wallets w SET balance = w.balance - p.amount FROM postings p "
                         "WHERE p.entry_id = $1 AND p.wallet_id = w.id", target["id"])
        for table, column in (("postings", "entry_id"), ("transactions", "entry_id"), ("journal_seals", "entry_id"),
                              ("journal_entries", "id")):
            await db.execute(f"DELETE FROM {table} WHERE {column} = $1", target["id"])
    code, lines = await audit(database_url)
    assert code == 1
    seq = target["seq"]
    assert chain_lines(lines) == [f"journal chain: seals {seq}..{seq} are missing: the entries sealed there were "
                                  "removed together with their seals"]


async def test_an_inserted_entry_is_named(client, db, database_url):
    people = await movements(client)
    alice, bob = people["alice"], people["bob"]
    await all_sealed(db)
    # Inserted in the middle of the sealed history: the position (xid, id) and time of a sealed entry.
    middle = await db.fetchrow("SELECT e.id, e.xid::text, e.created_at, s.seq FROM journal_entries e "
                               "JOIN journal_seals s ON s.entry_id = e.id ORDER BY s.seq LIMIT 1 OFFSET 3")
    forged = uuid.UUID(int=middle["id"].int + 1)
    a, b = (uuid.UUID(p["wallets"][1]["id"]) for p in (alice, bob))
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("INSERT INTO journal_entries (id, kind, created_at, xid) VALUES ($1, 'transfer', $2, $3::xid8)",
                         forged, middle["created_at"], int(middle["xid"]))
        await db.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) VALUES "
                         "($1, $2, 1, 'B', -50), ($1, $3, 1, 'B', 50)", forged, a, b)
        await db.execute("UPDATE wallets SET balance = balance - 50 WHERE id = $1", a)
        await db.execute("UPDATE wallets SET balance = balance + 50 WHERE id = $1", b)
    code, lines = await audit(database_url)
    assert code == 1
    assert chain_lines(lines) == [
        f"journal chain: entry {forged} was inserted after seal {middle['seq']}: it lies inside the sealed part of "
        "the chain, where no seal names it"]


async def test_a_rewritten_seal_is_named(client, db, database_url):
    people = await movements(client)
    await all_sealed(db)
    target = await entry_of_transfer(db, people["bob"]["wallets"][1]["id"])
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("UPDATE transactions SET amount = amount + 1 WHERE entry_id = $1", target["id"])
        # the forger seals the altered entry again with the database's own function
        body = await db.fetchval("SELECT body FROM walletd_chain_bodies(ARRAY[$1::uuid])", target["id"])
        await db.execute("""UPDATE journal_seals SET hash = sha256(convert_to('["walletd-journal-1","'
                            || encode(prev_hash, 'hex') || '",' || $2 || ']', 'UTF8')) WHERE seq = $1""",
                         target["seq"], body)
    code, lines = await audit(database_url)
    assert code == 1
    assert chain_lines(lines) == [
        f"journal chain: seal {target['seq']} (entry {target['id']}) was rewritten: seal {target['seq'] + 1} still "
        "chains to its original hash, so that entry was altered and sealed again"]


async def test_expect_head_detects_a_truncated_tail(client, db, database_url):
    people = await movements(client)
    alice, bob = people["alice"], people["bob"]
    for amount in ("2", "3"):  # the tail to cut off
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount)).status == 200
    length = await all_sealed(db)
    head = bytes(await db.fetchval("SELECT hash FROM journal_seals WHERE seq = $1", length))
    tail = [r[0] for r in await db.fetch("SELECT entry_id FROM journal_seals WHERE seq > $1", length - 2)]
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        # both transfers undone by hand, every balance equal to its postings again
        await db.execute("UPDATE wallets w SET balance = w.balance - t.b FROM (SELECT wallet_id, sum(amount) AS b "
                         "FROM postings WHERE entry_id = ANY($1) GROUP BY wallet_id) t WHERE t.wallet_id = w.id", tail)
        for table, column in (("postings", "entry_id"), ("transactions", "entry_id"), ("journal_seals", "entry_id"),
                              ("journal_entries", "id")):
            await db.execute(f"DELETE FROM {table} WHERE {column} = ANY($1)", tail)
    code, lines = await audit(database_url)
    assert (code, chain_lines(lines)) == (0, [])  # a cut-off tail leaves a chain that holds together
    code, lines = await audit(database_url, "--expect-head", head.hex())
    assert code == 1
    new_head = bytes(await db.fetchval("SELECT hash FROM journal_seals WHERE seq = $1", length - 2))
    assert chain_lines(lines) == [
        f"journal chain: the expected head {head.hex()} is not in the chain (it ends at seq {length - 2}, hash "
        f"{new_head.hex()}): entries sealed after it were removed with their seals, or the chain was rewritten"]
    code, lines = await audit(database_url, "--expect-head", "00" * 31 + "zz")
    assert code == 2 and "expected 64 hexadecimal digits" in "\n".join(lines)


async def test_the_head_is_written_to_the_log(client, db, log_tap):
    await movements(client)
    await all_sealed(db)
    head = await db.fetchrow("SELECT seq, hash, entry_id FROM journal_seals ORDER BY seq DESC LIMIT 1")

    def logged():
        lines = [json.loads(line) for line in log_tap.lines if '"journal.head"' in line]
        return lines and lines[-1]
    first = await until(logged, what="a journal.head line")
    assert set(first) >= {"seq", "hash", "entry_id"} and first["seq"] <= head["seq"]
    sealed = await db.fetchrow("SELECT hash, entry_id FROM journal_seals WHERE seq = $1", first["seq"])
    assert (first["hash"], first["entry_id"]) == (bytes(sealed["hash"]).hex(), str(sealed["entry_id"]))


async def test_an_entry_waits_for_every_older_transaction_and_is_sealed_in_their_order(client, db, database_url):
    """The horizon: an entry is sealed only once every transaction that began before it has ended, so
    one that commits late still takes its place (by transaction id) in the chain."""
    people = await movements(client)
    await all_sealed(db)
    alice, bob = people["alice"], people["bob"]
    late = await asyncpg.connect(database_url)
    try:
        transaction = late.transaction()
        await transaction.start()
        late_xid = int(await late.fetchval("SELECT pg_current_xact_id()::text"))  # older than what follows
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
        later = await db.fetchrow("SELECT id, xid::text::bigint AS xid FROM journal_entries ORDER BY xid DESC LIMIT 1")
        assert later["xid"] > late_xid
        # The transfer committed, but a transaction older than it is still running: it waits.
        await db.fetch("SELECT * FROM walletd_seal_journal(1000)")
        assert await unsealed(db) == 1
        wallet = await late.fetchrow("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
        entry = uuid.uuid4()
        await late.execute("SELECT walletd_write_batch($1::jsonb)", json.dumps({
            "now": "2026-01-01T00:00:00Z", "entries": [{"id": str(entry), "kind": "bonus", "request_id": None}],
            "postings": [{"entry_id": str(entry), "wallet_id": str(wallet["id"]), "currency_id": 1, "bucket": "B",
                          "amount": "1"},
                         {"entry_id": str(entry), "wallet_id": alice["wallets"][1]["id"], "currency_id": 1,
                          "bucket": "B", "amount": "-1"}]}))
        await transaction.commit()
    finally:
        await late.close()
    await all_sealed(db)
    order = {r[0]: r[1] for r in await db.fetch("SELECT entry_id, seq FROM journal_seals WHERE entry_id = ANY($1)",
                                                [entry, later["id"]])}
    assert order[entry] < order[later["id"]]  # committed last, sealed first: its transaction began first
    code, lines = await audit(database_url)
    assert code == 0, lines


async def test_the_seals_are_append_only(client, db):
    await movements(client)
    await all_sealed(db)
    for statement in ("UPDATE journal_seals SET sealed_at = now()", "DELETE FROM journal_seals",
                      "TRUNCATE journal_seals"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM journal_seals") > 0


async def test_free_text_in_an_entry_is_sealed_and_checked_alike(client, db, database_url):
    """An entry's request_id is the chain's only free text: the database escapes it with to_json, the
    audit with its JSON encoder, the oracle with json.dumps; all three must agree on quotes,
    backslashes, control characters and non-ASCII (written here as any writer of the table could)."""
    people = await movements(client)
    request_id = 'q"uo\\te \t\u0001 é€😀 <>&'
    desk = await db.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    entry = uuid.uuid4()
    await db.execute("SELECT walletd_write_batch($1::jsonb)", json.dumps({
        "now": "2026-01-01T00:00:00Z", "entries": [{"id": str(entry), "kind": "bonus", "request_id": request_id}],
        "postings": [{"entry_id": str(entry), "wallet_id": str(desk), "currency_id": 1, "bucket": "B", "amount": "-1"},
                     {"entry_id": str(entry), "wallet_id": people["bob"]["wallets"][1]["id"], "currency_id": 1,
                      "bucket": "B", "amount": "1"}]}))
    await all_sealed(db)
    assert await db.fetchval("SELECT request_id FROM journal_entries WHERE id = $1", entry) == request_id
    for seq, stored, recomputed in await recompute(db):
        assert stored == recomputed, f"seal {seq}"
    code, lines = await audit(database_url)
    assert code == 0, lines
    assert chain_lines(lines) == [], lines


async def test_a_segment_read_in_parts_names_what_one_read_names(client, db, monkeypatch):
    """The audit reads and hashes a segment's entries a part at a time, each part sized by the
    postings and records the previous one held per entry (walletd/integrity/verify.py). Parts of
    one entry, of three, of one item, or sized around 40-leg entries check the same chain as one
    read: the same ids in seal order, the same entries without postings, the same problems at the
    same seals."""
    from walletd.integrity import verify
    from walletd.persistence import chain

    people = await movements(client)
    alice, bob = people["alice"], people["bob"]
    for n in range(3):
        resp = await client.post("/wallet/transfers", headers=alice["headers"], json={"transfers": [
            {"source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": bob["wallets"][1]["id"],
             "amount": f"0.0{n + 1}"} for _ in range(40)]})
        assert resp.status == 200, await resp.text()
    length = await all_sealed(db)
    altered = await entry_of_transfer(db, bob["wallets"][1]["id"])
    await db.execute("UPDATE transactions SET amount = amount + 1 WHERE entry_id = $1", altered["id"])
    emptied = await db.fetchrow("SELECT entry_id, seq FROM journal_seals WHERE seq = 1")
    removed = await db.fetchrow("SELECT entry_id, seq FROM journal_seals ORDER BY seq DESC LIMIT 1")  # a 40-leg one
    async with db.transaction():
        await db.execute("SET LOCAL session_replication_role = replica")
        await db.execute("DELETE FROM postings WHERE entry_id = $1", emptied["entry_id"])
        for table, column in (("postings", "entry_id"), ("transactions", "entry_id"), ("journal_entries", "id")):
            await db.execute(f"DELETE FROM {table} WHERE {column} = $1", removed["entry_id"])
    parts_read: list[int] = []
    read_entries = chain.read_entries

    async def counted(conn, ids):
        parts_read.append(len(ids))
        return await read_entries(conn, ids)

    monkeypatch.setattr(chain, "read_entries", counted)

    async def read_segment() -> verify.Segment:
        parts_read.clear()
        return await verify.check_after(db, None, length)

    whole = await read_segment()
    assert parts_read == [length]
    assert [(p.kind, p.seq) for p in whole.problems] == [
        ("altered", emptied["seq"]), ("altered", altered["seq"]), ("removed", removed["seq"])]
    assert whole.count == length and len(whole.entry_ids) == length - 1
    assert whole.without_postings == [emptied["entry_id"]]
    for first, entries_per_read, items_per_read, most in ((50, 1, 10**6, 1), (50, 3, 10**6, 3), (2, 500, 1, 2),
                                                          (2, 500, 200, None)):
        monkeypatch.setattr(verify, "FIRST_READ", first)
        monkeypatch.setattr(verify, "ENTRIES_PER_READ", entries_per_read)
        monkeypatch.setattr(verify, "ITEMS_PER_READ", items_per_read)
        parts = await read_segment()
        assert len(parts_read) > 1, parts_read
        if most is not None:
            assert max(parts_read) == most, parts_read
        assert sum(parts_read) == length
        assert (parts.problems, parts.entry_ids, parts.without_postings, parts.last, parts.count) == (
            whole.problems, whole.entry_ids, whole.without_postings, whole.last, whole.count), parts_read
    # One read hashed in slices (the event loop turns between them): the same chain, each slice
    # chained to the last seal of the one before.
    for setting, value in (("FIRST_READ", length), ("ENTRIES_PER_READ", length), ("ITEMS_PER_READ", 10**6)):
        monkeypatch.setattr(verify, setting, value)
    slices: list[int] = []
    check_seals = verify.check_seals

    def sliced_check(before, seals, entries):
        slices.append(len(seals))
        return check_seals(before, seals, entries)

    monkeypatch.setattr(verify, "check_seals", sliced_check)
    for size in (1, 2, length):
        monkeypatch.setattr(verify, "HASHED_BETWEEN_YIELDS", size)
        slices.clear()
        sliced = await read_segment()
        assert parts_read == [length] and sum(slices) == length and max(slices) == size, slices
        assert (sliced.problems, sliced.entry_ids, sliced.without_postings, sliced.last) == (
            whole.problems, whole.entry_ids, whole.without_postings, whole.last), size
