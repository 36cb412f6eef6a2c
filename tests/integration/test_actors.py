"""Wallet actors: a bounded mailbox answers 503 with Retry-After when full, idle actors retire,
shutdown finishes every accepted command, and a client that goes away does not cancel one."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import aiohttp

from tests.conftest import (
    api_transfer,
    assert_ledger_consistent,
    balance,
    fund,
    register,
    register_service,
)
from tests.polling import until
from walletd.appkeys import ledger_key, registry_key
from walletd.domain.commands import Transfer


def registry_of(client):
    return client.server.app[registry_key]


async def all_retired(registry) -> None:
    await until(lambda: not registry.actors, 10, what="every actor retired after its idle time")


async def until_busy(registry) -> None:
    """Yield to the loop until some actor has a batch at the committer (submitted, not committed):
    interval 0, because that state lasts only one commit."""
    await until(lambda: any(a.busy for a in registry.actors.values()), 10, interval=0,
                what="an actor with a batch at the committer")


def all_idle(registry) -> bool:
    """Every accepted command has been answered: no actor holds a queued or in-flight command."""
    return all(not a.mailbox and not a.busy for a in registry.actors.values())


async def test_full_mailbox_is_503_with_retry_after_and_moves_nothing(make_client, db):
    client = await make_client(mailbox_size=1)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "101.0101010101")  # credits exactly 100
    start = await balance(client, alice, 1)
    assert start == (Decimal(100), 0)
    responses = await asyncio.gather(*[api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")
                                       for _ in range(60)])
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    busy = [r for r in responses if r.status == 503]
    assert busy, "a mailbox of one must overflow under a burst of 60"
    assert statuses.count(200) >= 1
    for resp in busy:
        assert resp.headers.get("Retry-After") == "1"
        body = await resp.json()
        assert body["status"] == 503 and body["message"].startswith("wallet busy")
    ok = statuses.count(200)
    assert await balance(client, alice, 1) == (Decimal(100 - ok), 0)
    assert await balance(client, bob, 1) == (Decimal(ok), 0)
    # Retrying after the burst succeeds.
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    await assert_ledger_consistent(db)


async def test_idle_actors_retire_and_respawn(make_client, db):
    client = await make_client(actor_idle_seconds=0.2)
    registry = registry_of(client)
    users = [await register(client, f"idle{i}") for i in range(6)]
    service = await register_service(client)
    for user in users:
        await fund(client, user, service, 1, "10")
    await all_retired(registry)  # the funding actors

    peak = 0
    burst = asyncio.gather(*[api_transfer(client, user, currency, users[(i + 1) % 6]["wallets"][1]["id"], "0.01")
                             for i, user in enumerate(users) for currency in (1, 2, 3) for _ in range(3)])
    while not burst.done():
        peak = max(peak, len(registry.actors))
        await asyncio.sleep(0.001)  # samples the registry while the burst runs: not a wait
    statuses = [r.status for r in burst.result()]
    assert statuses.count(200) == 18 and statuses.count(400) == 36, statuses  # only currency 1 is funded
    assert peak >= 6, f"one actor per busy wallet, saw at most {peak}"
    await all_retired(registry)
    # A retired wallet's actor comes back on the next command.
    resp = await api_transfer(client, users[0], 1, users[1]["wallets"][1]["id"], "0.01")
    assert resp.status == 200
    assert set(registry.actors) <= {uuid.UUID(users[0]["wallets"][1]["id"])}
    await assert_ledger_consistent(db)


async def test_caches_are_dropped_once_every_actor_has_retired(make_client, log_tap):
    client = await make_client(actor_idle_seconds=0.2)
    app = client.server.app
    user, service = await register(client, "mem"), await register_service(client)
    await fund(client, user, service, 1, "10")
    assert len(app[ledger_key].predictions), "the settlement left predictions behind"
    await all_retired(registry_of(client))
    await until(lambda: not len(app[ledger_key].predictions), 10, what="the prediction cache dropped")
    assert any('"memory.released"' in line for line in log_tap.lines)


async def test_graceful_shutdown_commits_every_accepted_command(make_client, db):
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "1000")
    start = (await balance(client, alice, 1))[0]
    server = client.server
    registry = registry_of(client)
    session = aiohttp.ClientSession()  # our own session: closing the server must not close it
    url = str(server.make_url("/wallet/transfer"))

    async def transfer(i):
        try:
            async with session.post(url, headers=alice["headers"], params={
                    "source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": bob["wallets"][1]["id"],
                    "amount": "1"}) as resp:
                return resp.status, await resp.json()
        except aiohttp.ClientError as exc:
            return None, repr(exc)

    committed_before = registry.committer.commands
    try:
        burst = [asyncio.create_task(transfer(i)) for i in range(80)]
        # Close while commands are in flight: as soon as the wallet's actor has a batch at the committer.
        await until_busy(registry)
        in_flight = 80 - (registry.committer.commands - committed_before)
        await server.close()
        results = await asyncio.wait_for(asyncio.gather(*burst), 30)
    finally:
        await session.close()
    ok = [body["id"] for status, body in results if status == 200]
    assert ok, results[:3]
    assert all(status in (200, 503, None) for status, _ in results), results
    committed = {str(r[0]) for r in await db.fetch(
        "SELECT t.id FROM transactions t JOIN journal_entries e ON e.id = t.entry_id "
        "WHERE t.from_wallet_id = $1 AND t.type = 'transfer'", alice["wallets"][1]["id"])}
    assert in_flight > 0, "the server was meant to close mid-burst"
    assert set(ok) <= committed, "every 200 is durable"
    final = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", alice["wallets"][1]["id"])
    assert final == start - len(committed), "nothing half-done: each committed transfer moved exactly 1"
    assert registry.actors == {} and registry.closing
    await assert_ledger_consistent(db)


async def test_registry_close_drains_every_queued_command(make_client, db):
    """Commands already in the mailboxes when shutdown starts are all executed, not dropped."""
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    for currency in (1, 2):
        await fund(client, alice, service, currency, "1000")
    registry = registry_of(client)
    user = uuid.UUID(alice["id"])
    futures = [registry.submit(Transfer(user, uuid.UUID(alice["wallets"][1 + i % 2]["id"]),
                                        uuid.UUID(bob["wallets"][1 + i % 3]["id"]), Decimal("0.5")))
               for i in range(100)]
    await registry.close()
    assert all(f.done() for f in futures)
    results = [f.result() for f in futures]  # raises if any command failed
    ids = [r["id"] for r in results]
    assert len(set(ids)) == 100
    assert await db.fetchval("SELECT count(*) FROM transactions t JOIN journal_entries e ON e.id = t.entry_id "
                             "WHERE t.id = ANY($1::uuid[])", ids) == 100
    assert registry.actors == {}
    try:
        registry.submit(Transfer(user, uuid.UUID(alice["wallets"][1]["id"]), uuid.UUID(bob["wallets"][1]["id"]),
                                 Decimal(1)))
    except Exception as exc:  # a closed registry refuses new work
        assert type(exc).__name__ == "Overloaded"
    else:
        raise AssertionError("a closed registry accepted a command")
    await assert_ledger_consistent(db)


async def test_a_client_that_goes_away_does_not_cancel_an_accepted_command(make_client, db):
    """Requests cancelled mid-flight (the client disconnects) either never reached an actor or
    complete as a whole; retrying each with its Idempotency-Key applies each exactly once."""
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 2, "1000")
    start = (await balance(client, alice, 2))[0]
    keys = [f"gone-{uuid.uuid4()}" for _ in range(40)]
    tasks = [asyncio.create_task(api_transfer(client, alice, 2, bob["wallets"][2]["id"], "2.5",
                                              {"Idempotency-Key": key})) for key in keys]
    await until_busy(registry_of(client))  # disconnect while a batch of them is at the committer
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(task.cancelled() for task in tasks) > 0
    await until(lambda: all_idle(registry_of(client)), what="accepted commands finish on their own")
    replayed = 0
    for key in keys:
        resp = await api_transfer(client, alice, 2, bob["wallets"][2]["id"], "2.5", {"Idempotency-Key": key})
        assert resp.status == 200, await resp.text()
        replayed += resp.headers.get("Idempotent-Replayed") == "true"
    assert replayed > 0, "some cancelled requests had been accepted, and completed anyway"
    assert await balance(client, alice, 2) == (start - Decimal("2.5") * 40, 0)
    assert await balance(client, bob, 2) == (Decimal("2.5") * 40, 0)
    await assert_ledger_consistent(db)


async def test_an_actor_cancelled_while_the_committer_holds_its_batch_never_says_nothing_moved(make_client, db):
    """The actor of a wallet is cancelled (a shutdown past its timeout does that) while its batch
    waits at the committer for a row lock: the batch then commits, and its caller must hear so,
    not "internal error; nothing moved"."""
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    start, _ = await balance(client, alice, 1)
    registry = registry_of(client)
    lock = db.transaction()
    await lock.start()
    await db.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", uuid.UUID(bob["wallets"][1]["id"]))
    try:
        transfer = asyncio.create_task(api_transfer(client, alice, 1, bob["wallets"][1]["id"], "4",
                                                    {"Idempotency-Key": f"cancel-{uuid.uuid4()}"}))

        async def commit_waits_for_the_lock() -> bool:
            return await db.fetchval("SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'walletd' "
                                     "AND wait_event_type = 'Lock'")
        await until(commit_waits_for_the_lock, what="the batch's write waiting for the payee's row lock")
        actor = registry.actors[uuid.UUID(alice["wallets"][1]["id"])]
        assert actor.busy
        actor.task.cancel()
        await until(lambda: actor.task.done(), what="the actor cancelled")
    finally:
        await lock.rollback()
    resp = await asyncio.wait_for(transfer, 30)
    assert resp.status == 200, await resp.text()
    assert start - (await balance(client, alice, 1))[0] == Decimal(4)
    # The wallet's next command gets a fresh actor.
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    await assert_ledger_consistent(db)
