"""Failures on Citus, with real `walletd serve` processes: one of two walletd processes SIGKILLed
under random concurrent transfers across shards, then a worker node stopped under load and
restarted. Afterwards every acknowledged transfer is present exactly once, no 503 moved money,
balances are exactly what the acknowledged transfers say, money is conserved per currency, no
worker holds a prepared transaction, every entry is sealed into the hash chain, and `walletd
audit` (books and chain) and the processes' self-audit are clean."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp
import pytest

from tests.citus.conftest import recover_two_phase, worker_of
from tests.conftest import OPERATOR_KEY, PASSWORD, ServeProcess, run_cli, unique
from tests.oracles import net_of_commission
from tests.polling import until

FUNDING = "100"
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60)


@dataclass
class Load:
    """What the clients sent and heard, per Idempotency-Key."""

    users: list[dict]
    planned: dict[str, tuple[dict, dict, Decimal]] = field(default_factory=dict)  # key -> (source, target, amount)
    acknowledged: dict[str, dict] = field(default_factory=dict)  # key -> the 200 body
    refused: set[str] = field(default_factory=set)  # answered 503, not retried yet
    unanswered: set[str] = field(default_factory=set)  # no answer (the process died), not retried yet
    statuses: Counter = field(default_factory=Counter)
    by_base: Counter = field(default_factory=Counter)  # acknowledgements per walletd process
    bad: list[str] = field(default_factory=list)  # answers the outcome contract forbids

    def plan(self, rng: random.Random) -> str:
        source, target = rng.sample(self.users, 2)
        key = uuid.uuid4().hex
        self.planned[key] = (source, target, Decimal(rng.randint(1, 100)) / 100)
        return key


async def call(session, method: str, url: str, **kwargs) -> tuple[int, dict, dict]:
    async with session.request(method, url, timeout=CLIENT_TIMEOUT, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def send(session, load: Load, base: str, key: str) -> int:
    """One attempt of a planned transfer; returns the status (0: no answer, the process is gone)."""
    source, target, amount = load.planned[key]
    try:
        status, headers, body = await call(session, "POST", base + "/wallet/transfer", headers={
            **source["headers"], "Idempotency-Key": key}, params={
            "source_wallet_id": source["wallets"][1]["id"], "target_wallet_id": target["wallets"][1]["id"],
            "amount": str(amount)})
    except (aiohttp.ClientError, asyncio.TimeoutError):
        load.statuses["no answer"] += 1
        return 0
    load.statuses[status] += 1
    if status == 200:
        load.acknowledged[key] = body
        load.by_base[base] += 1
    elif status == 503:
        if not headers.get("Retry-After"):
            load.bad.append(f"503 without Retry-After: {body}")
    else:
        load.bad.append(f"{status}: {body}")
    return status


async def register_funded(session, base: str, service: dict, count: int) -> list[dict]:
    users = []
    for _ in range(count):
        name = unique("load")
        status, _, body = await call(session, "POST", base + "/auth/register", json={
            "username": name, "email": f"{name}@example.com", "password": PASSWORD})
        assert status == 200, body
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        _, _, me = await call(session, "GET", base + "/user/get/id", headers=headers)
        _, _, wallets = await call(session, "GET", base + "/user/wallets", headers=headers)
        user = {"id": me["id"], "headers": headers, "wallets": {w["currency_id"]: w for w in wallets["wallets"]}}
        status, _, tx = await call(session, "POST", base + "/wallet/deposit", headers=headers, params={
            "service_user_id": service["id"], "wallet_id": user["wallets"][1]["id"], "amount": FUNDING})
        assert status == 200, tx
        status, _, settled = await call(session, "PUT", base + "/service/transaction/deposit",
                                        headers=service["headers"], params={"transaction_id": tx["id"],
                                                                            "new_status": "paid"})
        assert status == 200, settled
        users.append(user)
    return users


async def register_service_user(session, base: str) -> dict:
    name = unique("svc")
    status, _, body = await call(session, "POST", base + "/auth/register_service", headers={
        "X-Operator-Key": OPERATOR_KEY}, json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
    assert status == 200, body
    return {"id": body["user_id"], "headers": {"Authorization": f"Bearer {body['access_token']}"}}


async def verify(db, database_url: str, load: Load) -> None:
    """Exactly once, exact balances, conservation, nothing half-applied, every entry sealed into the
    hash chain (by the walletd processes' sealers), a clean audit of the books and the chain, and no
    problem found by the processes' self-audit."""
    await recover_two_phase(database_url)
    assert not load.bad, load.bad[:5]
    assert set(load.acknowledged) == set(load.planned), "every planned transfer was acknowledged in the end"
    ids = [body["id"] for body in load.acknowledged.values()]
    assert len(set(ids)) == len(ids)
    users = [u["id"] for u in load.users]
    # Each transfer is stored once on the sender's shard and once on the receiver's (owner_id).
    copies = await db.fetch("SELECT id::text, owner_id = user_id AS sender_side, count(*) FROM transactions "
                            "WHERE user_id = ANY($1::uuid[]) AND type = 'transfer' AND from_user_id = user_id "
                            "GROUP BY 1, 2", users)
    assert {(r[0], r[1]) for r in copies} == {(i, side) for i in ids for side in (True, False)}
    assert all(r[2] == 1 for r in copies)
    entries = await db.fetchval("SELECT count(DISTINCT e.id) FROM journal_entries e WHERE e.kind = 'transfer' "
                                "AND e.user_id = ANY($1::uuid[])", users)
    assert entries == len(ids)
    expected = {u["id"]: net_of_commission(FUNDING) for u in load.users}
    for source, target, amount in load.planned.values():
        expected[source["id"]] -= amount
        expected[target["id"]] += amount
    rows = await db.fetch("SELECT user_id::text, balance, reserved_balance FROM wallets "
                          "WHERE user_id = ANY($1::uuid[]) AND currency_id = 1", users)
    assert {r[0]: (r[1], r[2]) for r in rows} == {u: (b, 0) for u, b in expected.items()}
    assert sum(expected.values()) == len(users) * net_of_commission(FUNDING)
    await until(lambda: db.fetchval("SELECT NOT EXISTS (SELECT 1 FROM journal_entries e WHERE NOT EXISTS "
                                    "(SELECT 1 FROM journal_seals s WHERE s.entry_id = e.id))"),
                timeout=60, what="every entry sealed")
    head = await db.fetchrow("SELECT seq, encode(hash, 'hex') AS hash FROM journal_seals ORDER BY seq DESC LIMIT 1")
    code, out = await run_cli(database_url, "audit", "--expect-head", head["hash"])
    assert code == 0 and "audit: clean" in out, out
    assert f"head seq {head['seq']}" in out and "0 newer entries not sealed yet" in out, out
    assert await db.fetch("SELECT key, problem FROM audit_problems") == []


@pytest.fixture(scope="module")
async def servers(database_url):
    procs = [ServeProcess(database_url, WALLETD_IN_DOUBT_SECONDS="30"), ServeProcess(database_url)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with aiohttp.ClientSession() as session:
            yield procs, session
    finally:
        for p in procs:
            await p.stop()


async def test_two_processes_random_transfers_across_shards_one_sigkilled(servers, db, database_url):
    procs, session = servers
    victim = await ServeProcess(database_url).start()  # its own: the module's two survive this test
    try:
        service = await register_service_user(session, procs[0].url)
        load = Load(await register_funded(session, procs[0].url, service, 10))
        # At least two: a database made after another test added a worker to the cluster has three.
        assert len({await worker_of(db, u["id"]) for u in load.users}) >= 2, "users on more than one worker"
        rng = random.Random(20261205)
        bases = [victim.url, procs[0].url]
        killed = asyncio.Event()

        async def client(number: int) -> None:
            for _ in range(25):
                key = load.plan(rng)
                attempts = 0
                while key not in load.acknowledged:
                    # Half the clients talk to the victim until it dies, then to the survivor.
                    base = bases[1] if killed.is_set() or number % 2 else bases[0]
                    await send(session, load, base, key)
                    attempts += 1
                    assert attempts < 200, f"{key} never acknowledged"
                    if key not in load.acknowledged:
                        await asyncio.sleep(0.05)

        async def killer() -> None:
            while load.by_base[victim.url] < 25 or len(load.acknowledged) < 60:
                await asyncio.sleep(0.02)
            victim.kill()
            killed.set()

        await asyncio.gather(killer(), *(client(n) for n in range(8)))
        assert victim.proc is not None and victim.proc.returncode is not None, "the victim died"
        assert load.by_base[victim.url] > 0 and load.by_base[procs[0].url] > 0, (load.by_base, load.statuses, load.bad[:3])
        await verify(db, database_url, load)
    finally:
        await victim.stop()


async def test_a_worker_stopped_under_load_answers_503_and_recovers(servers, db, database_url, citus_cluster):
    procs, session = servers
    service = await register_service_user(session, procs[0].url)
    victim_node = citus_cluster.workers[-1]
    # Eight users hash onto one worker now and then: more are registered until each side has two.
    on_victim: list[dict] = []
    elsewhere: list[dict] = []

    async def place(users: list[dict]) -> None:
        for user in users:
            (on_victim if await worker_of(db, user["id"]) == victim_node.port else elsewhere).append(user)

    await place(await register_funded(session, procs[1].url, service, 8))
    for _ in range(32):
        if len(on_victim) >= 2 and len(elsewhere) >= 2:
            break
        await place(await register_funded(session, procs[1].url, service, 1))
    users = on_victim + elsewhere
    assert len(on_victim) >= 2 and len(elsewhere) >= 2, "users on both workers"
    load = Load(users)
    rng = random.Random(7)
    phase = {"name": "before"}
    during: Counter = Counter()

    async def client(number: int) -> None:
        base = procs[number % 2].url
        while phase["name"] != "after":
            key = load.plan(rng)
            status = await send(session, load, base, key)
            if phase["name"] == "down":
                during[status] += 1
            if status == 503:
                load.refused.add(key)  # retried once the worker is back
            elif status != 200:
                load.unanswered.add(key)
            await asyncio.sleep(0.02)

    clients = [asyncio.create_task(client(n)) for n in range(6)]
    try:
        while len(load.acknowledged) < 40:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(citus_cluster.stop_node, victim_node.name, "immediate")
        phase["name"] = "down"
        await asyncio.sleep(6)
        # Reads that need the stopped worker: 503 + Retry-After; the other worker's users still read.
        status, headers, body = await call(session, "GET", procs[0].url + "/user/wallets",
                                           headers=on_victim[0]["headers"])
        assert status == 503 and headers.get("Retry-After") and body["code"] == "unavailable", (status, body)
        status, _, body = await call(session, "GET", procs[0].url + "/user/wallets", headers=elsewhere[0]["headers"])
        assert status == 200, body
    finally:
        if phase["name"] == "down":
            await asyncio.to_thread(citus_cluster.start_node, victim_node.name)
        phase["name"] = "after"
        await asyncio.gather(*clients)
    assert during[503] > 0, during  # the outage was seen, and answered 503 ...
    assert set(during) <= {200, 503}, during  # ... never 500, never a wrong answer
    # Nothing answered 503 moved: once Citus has finished (or rolled back) every prepared
    # transaction, no refused key is stored, and no refused transfer has a record.
    await recover_two_phase(database_url)
    refused = sorted(load.refused)
    stored = await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", refused)
    assert stored == 0, f"{stored} of {len(refused)} keys answered 503 were stored"
    # Then every transfer not acknowledged is retried with its key and goes through exactly once.
    async def retry(keys: list[str]) -> None:
        for key in keys:
            for attempt in range(100):
                if await send(session, load, procs[attempt % 2].url, key) == 200:
                    break
                await asyncio.sleep(0.2)

    todo = refused + sorted(load.unanswered)
    await asyncio.gather(*(retry(todo[n::8]) for n in range(8)))
    await verify(db, database_url, load)
