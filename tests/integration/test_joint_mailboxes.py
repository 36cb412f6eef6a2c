"""A multi-leg transfer debiting several of the caller's wallets sits in each of their mailboxes
(actors/registry.py, Joint): it runs after everything queued before it in every one of them,
before anything queued after it, without deadlock however such commands interleave; and an actor
that dies before reaching one releases the actors waiting for it (the command fails, unrun)."""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal

import pytest

from tests.conftest import assert_ledger_consistent, balance, fund, register, register_service
from tests.polling import until
from walletd.actors.registry import ActorRegistry
from walletd.appkeys import registry_key
from walletd.domain import errors
from walletd.domain.commands import MultiTransfer, Transfer, TransferLeg


def uid(user: dict, currency: int) -> uuid.UUID:
    return uuid.UUID(user["wallets"][currency]["id"])


@pytest.fixture
async def funded(client):
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    for currency in (1, 2):
        await fund(client, alice, service, currency, "10.101010101")  # 10 each
    return client, alice, bob


async def test_a_joint_command_runs_after_what_each_of_its_mailboxes_held_before_it(funded, db):
    client, alice, bob = funded
    registry = client.server.app[registry_key]
    me = uuid.UUID(alice["id"])
    both = (TransferLeg(uid(alice, 1), uid(bob, 1), Decimal(1)), TransferLeg(uid(alice, 2), uid(bob, 2), Decimal(1)))
    # Queued in this order, with no await in between: the drain of USD comes first in USD's
    # mailbox, so the multi-leg transfer finds USD empty, whichever wallet's id is smaller.
    drain = registry.submit(Transfer(me, uid(alice, 1), uid(bob, 3), Decimal(10)))
    joint = registry.submit(MultiTransfer(me, both))
    assert (await drain)["status"] == "close"
    with pytest.raises(errors.LegsRefused) as refusal:
        await joint
    assert refusal.value.errors == [{"index": 0, "code": "insufficient_funds", "message": "insufficient_funds"}]
    # The other way round: the multi-leg transfer first, then a transfer that needs all of EUR.
    joint = registry.submit(MultiTransfer(me, both[1:]))
    late = registry.submit(Transfer(me, uid(alice, 2), uid(bob, 3), Decimal(10)))
    assert len((await joint)["transfers"]) == 1
    with pytest.raises(errors.InsufficientFunds):
        await late
    assert await balance(client, alice, 2) == (Decimal(9), 0)
    await assert_ledger_consistent(db)


async def test_interleaved_joint_commands_across_the_same_wallets_never_deadlock(funded, db):
    client, alice, bob = funded
    registry = client.server.app[registry_key]
    carol = await register(client, "carol")
    service = await register_service(client)
    await fund(client, alice, service, 3, "10.101010101")
    me, rng = uuid.UUID(alice["id"]), random.Random(7)
    futures = []
    for _ in range(150):
        sources = rng.sample([1, 2, 3], rng.choice([1, 2, 3]))
        legs = tuple(TransferLeg(uid(alice, s), uid(rng.choice([bob, carol]), rng.choice([1, 2, 3])),
                                 Decimal("0.01")) for s in sources)
        futures.append(registry.submit(MultiTransfer(me, legs)))
        if rng.random() < 0.5:
            futures.append(registry.submit(Transfer(me, uid(alice, rng.choice([1, 2, 3])), uid(bob, 1),
                                                    Decimal("0.01"))))
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=120)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    await until(lambda: all(not a.mailbox and not a.busy for a in registry.actors.values()), what="actors idle")
    await assert_ledger_consistent(db)


class HeldCommitter:
    """A committer that holds every batch until told: the actors' side of a commit, alone."""

    def __init__(self) -> None:
        self.held: list[tuple[list, asyncio.Future]] = []

    def submit(self, envelopes: list) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        self.held.append((envelopes, done))
        return done

    def commit_all(self) -> None:
        for envelopes, done in self.held:
            for envelope in envelopes:
                if not envelope.future.done():
                    envelope.future.set_result("committed")
            if not done.done():  # the actor that waited for it may be gone
                done.set_result(None)
        self.held = []

    async def close(self, timeout: float = 0) -> None:
        self.commit_all()


async def test_an_actor_that_dies_before_its_joint_command_releases_the_others():
    committer = HeldCommitter()
    registry = ActorRegistry(committer, idle_seconds=5)  # type: ignore[arg-type]
    user, a, b, target = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = registry.submit(Transfer(user, a, target, Decimal(1)))
    joint = registry.submit(MultiTransfer(user, (TransferLeg(a, target, Decimal(1)), TransferLeg(b, target, Decimal(1)))))
    # A holds its first batch at the committer; B reaches the joint command and waits for A.
    await until(lambda: len(committer.held) == 1 and registry.actors[b].busy, interval=0, what="b waiting for a")
    registry.actors[a].task.cancel()
    with pytest.raises(errors.InternalFailure):
        await joint
    assert not first.done()  # handed to the committer before the actor died: the committer answers it
    after = registry.submit(Transfer(user, b, target, Decimal(1)))  # b's actor goes on
    await until(lambda: any(after in [e.future for e in held] for held, _ in committer.held), interval=0,
                what="b's next command at the committer")
    assert all(joint not in [e.future for e in held] for held, _ in committer.held), "the joint command never ran"
    committer.commit_all()
    assert await after == "committed" and await first == "committed"
    await registry.close(timeout=5)


async def test_each_mailbox_of_a_joint_command_holds_its_place_in_line():
    """Before it: every command queued ahead of it in any of its mailboxes commits first. After it:
    nothing queued behind it in any of them is handed over until it has committed."""
    committer = HeldCommitter()
    registry = ActorRegistry(committer, idle_seconds=5)  # type: ignore[arg-type]
    user, a, b, target = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ahead = registry.submit(Transfer(user, a, target, Decimal(1)))
    joint = registry.submit(MultiTransfer(user, (TransferLeg(b, target, Decimal(1)), TransferLeg(a, target, Decimal(1)))))
    behind = registry.submit(Transfer(user, b, target, Decimal(1)))

    def handed_over() -> list[list[asyncio.Future]]:
        return [[e.future for e in envelopes] for envelopes, _ in committer.held]

    await until(lambda: handed_over() == [[ahead]] and registry.actors[b].busy, interval=0, what="only `ahead` out")
    committer.commit_all()
    await until(lambda: handed_over() == [[joint]], interval=0, what="the joint command out, alone")
    await asyncio.sleep(0.05)  # what `behind` would need to slip out, were it not held back
    assert handed_over() == [[joint]]
    committer.commit_all()
    await until(lambda: handed_over() == [[behind]], interval=0, what="`behind` out after it")
    committer.commit_all()
    assert [await f for f in (ahead, joint, behind)] == ["committed"] * 3
    await registry.close(timeout=5)
