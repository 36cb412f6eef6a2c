"""Background work is supervised: a crash is logged and answered, never a silent hang.

Faults are injected into walletd's own objects (a ledger that raises, a worker loop that breaks,
an actor whose hand-off fails); the database underneath is the real one.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from tests.conftest import api_transfer, assert_ledger_consistent, balance, fund, register, register_service
from walletd.actors.committer import GroupCommitter
from walletd.actors.envelope import Envelope
from walletd.appkeys import registry_key
from walletd.domain import errors
from walletd.domain.commands import Transfer
from walletd.persistence.outcomes import Decided


async def setup(client):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    return alice, bob


class BreaksOnce:
    """Wraps the real ledger; the first batch raises a bug instead of applying."""

    def __init__(self, ledger) -> None:
        self.ledger, self.broken = ledger, False

    async def apply(self, commands):
        if not self.broken:
            self.broken = True
            raise RuntimeError("injected bug")
        return await self.ledger.apply(commands)

    def learn(self, decided) -> None:
        self.ledger.learn(decided)


async def test_a_ledger_bug_answers_its_batch_and_the_committer_goes_on(client, log_tap, db):
    alice, bob = await setup(client)
    committer = client.server.app[registry_key].committer
    committer.ledger = BreaksOnce(committer.ledger)
    start, _ = await balance(client, alice, 1)
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")
    assert first.status == 500 and "outcome unknown" in (await first.json())["message"]
    second = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")
    assert second.status == 200, await second.text()
    assert start - (await balance(client, alice, 1))[0] == Decimal(1)
    assert any('"ledger.batch_failed"' in line for line in log_tap.lines)
    await assert_ledger_consistent(db)


class Broken:
    """A stand-in for a metric or counter that raises when touched."""

    def __getattr__(self, name):
        raise RuntimeError(f"injected failure in {name}")


def _raise(*args, **kwargs):
    raise RuntimeError("injected failure after the commit")


AFTER_COMMIT = {  # what runs once a batch has committed, broken one at a time
    "the committer's metrics": lambda mp: mp.setattr("walletd.metrics.committed", _raise),
    "the ledger's path counter": lambda mp: mp.setattr("walletd.metrics.FAST_PATH", Broken()),
    "the predictions learning the batch": lambda mp: mp.setattr(
        "walletd.persistence.predictions.WalletPredictions.learn", _raise),
}


@pytest.mark.parametrize("broken", list(AFTER_COMMIT))
async def test_a_failure_after_the_commit_never_changes_the_answer(client, db, log_tap, monkeypatch, broken):
    """Whatever fails after a batch committed (a metric, a counter, the prediction cache), the
    callers are told it committed: a committed transfer is never answered "nothing moved"."""
    alice, bob = await setup(client)
    start, _ = await balance(client, alice, 1)
    headers = {"Idempotency-Key": f"after-{uuid.uuid4()}"}
    AFTER_COMMIT[broken](monkeypatch)
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    monkeypatch.undo()
    assert resp.status == 200, await resp.text()
    assert start - (await balance(client, alice, 1))[0] == Decimal(3)
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await resp.json()
    assert any('"money.transferred"' in line for line in log_tap.lines), "the audit line of the commit"
    await assert_ledger_consistent(db)


async def test_a_worker_that_dies_is_logged_and_replaced(client, log_tap):
    alice, bob = await setup(client)
    committer = client.server.app[registry_key].committer
    real_take = committer._take
    calls = {"n": 0}

    def take_breaks_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected crash outside the commit")
        return real_take()

    committer._take = take_breaks_once
    resp = await asyncio.wait_for(api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1"), timeout=30)
    assert resp.status == 200, await resp.text()
    assert committer.crashes == 1
    assert any('"committer.worker_died"' in line for line in log_tap.lines)


async def test_an_actor_whose_hand_off_fails_answers_every_command_it_held(client, log_tap):
    alice, bob = await setup(client)
    registry = client.server.app[registry_key]
    real_submit = registry.committer.submit
    registry.committer.submit = lambda batch: (_ for _ in ()).throw(RuntimeError("injected hand-off failure"))
    user, source = uuid.UUID(alice["id"]), uuid.UUID(alice["wallets"][1]["id"])
    target = uuid.UUID(bob["wallets"][1]["id"])
    futures = [registry.submit(Transfer(user, source, target, Decimal(1), "test")) for _ in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=10)
    assert all(isinstance(r, errors.InternalFailure) for r in results), results
    assert any('"actor.crashed"' in line for line in log_tap.lines)
    registry.committer.submit = real_submit
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")
    assert resp.status == 200, await resp.text()  # the next command spawns a fresh actor


class Stuck:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def apply(self, commands):
        await self.release.wait()
        return Decided([errors.Overloaded() for _ in commands], [])

    def learn(self, decided) -> None:
        pass


async def test_close_has_a_timeout_and_refuses_what_was_still_queued():
    ledger = Stuck()
    committer = GroupCommitter(ledger, workers=1, max_batch=1)
    committer.start()
    command = Transfer(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), Decimal(1))
    in_flight, queued = Envelope(command), Envelope(command)
    committer.submit([in_flight])
    committer.submit([queued])
    await asyncio.sleep(0)
    closing = asyncio.create_task(committer.close(timeout=0.2))
    done, _ = await asyncio.wait({closing}, timeout=0.6)
    assert not done, "close must keep waiting for the commit in flight (shielded), up to its own bound"
    assert isinstance(queued.future.exception(), errors.Overloaded)
    ledger.release.set()
    await asyncio.wait_for(closing, timeout=5)
    assert isinstance(in_flight.future.exception(), errors.Overloaded)


def test_nonsense_committer_arguments_are_refused():
    import pytest

    with pytest.raises(ValueError):
        GroupCommitter(object(), workers=0)
