"""One actor per wallet: a task with a bounded mailbox, handling commands in arrival order.

A command enters the mailbox of each wallet it debits or holds (credits cannot fail, so they
need no actor): one mailbox for every command but a multi-leg transfer from several of the
caller's wallets. An actor hands everything queued in its mailbox to the group committer at once
and waits for the commit before taking more: one wallet never has two batches in flight in this
process, and a busy wallet's commands share a commit. Idle actors retire, so memory tracks
active wallets.

A command in several mailboxes (a Joint) is put into all of them in one synchronous step, with
no await between the puts, so every mailbox holds such commands in the same relative order. An
actor that reaches one first commits everything queued before it, then arrives; the last to
arrive runs it, the others wait until it has run. No cycle of waits can form: the oldest joint
command not yet run has, in each of its mailboxes, only single-mailbox commands (which finish on
their own) and older joint commands (already run) ahead of it, so all its actors arrive.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from walletd import metrics
from walletd.actors.committer import GroupCommitter
from walletd.actors.envelope import Envelope, Joint
from walletd.domain.commands import Command, routing_wallets
from walletd.domain.errors import InternalFailure, Overloaded, Unavailable
from walletd.logs import get_logger

log = get_logger("walletd.actors")


class WalletActor:
    # Kept small (slots, one deque, one wake-up future while idle): a burst can spawn an actor
    # for each of a hundred thousand wallets.
    __slots__ = ("wallet_id", "registry", "mailbox", "busy", "retired", "task", "_wakeup")

    def __init__(self, wallet_id: uuid.UUID, registry: "ActorRegistry") -> None:
        self.wallet_id = wallet_id
        self.registry = registry
        self.mailbox: deque[Envelope] = deque()
        self.busy = False
        self.retired = False
        self._wakeup: asyncio.Future | None = None
        # A fresh context: the actor outlives the request that spawned it, so it must not carry
        # that request's id into later log lines.
        self.task = asyncio.create_task(self._run(), name=f"wallet-{wallet_id}", context=contextvars.Context())
        self.task.add_done_callback(self._finished)

    def post(self, envelope: Envelope) -> None:
        if len(self.mailbox) >= self.registry.mailbox_size:
            raise Overloaded()
        self.mailbox.append(envelope)
        metrics.MAILBOX_DEPTH.inc()
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _finished(self, task: asyncio.Task) -> None:
        # An actor that dies is forgotten; the next message for its wallet spawns a new one. What
        # it had queued was never handed to the committer, so nothing of it moved: say so.
        if not task.cancelled() and task.exception() is not None:
            log.error("actor.crashed", wallet_id=str(self.wallet_id), error=repr(task.exception()),
                      queued=len(self.mailbox))
        while self.mailbox:
            envelope = self.mailbox.popleft()
            metrics.MAILBOX_DEPTH.dec()
            if envelope.joint is not None:
                envelope.joint.release()  # this actor will never arrive: it can never run
            if not envelope.future.done():
                envelope.future.set_exception(
                    Overloaded("shutting down") if self.registry.closing else InternalFailure())
        self.registry._retire(self)

    async def _run(self) -> None:
        registry = self.registry
        loop = asyncio.get_running_loop()
        mailbox = self.mailbox
        while True:
            if not mailbox:
                # One timer per idle spell; it retires the actor if nothing arrives meanwhile.
                self._wakeup = loop.create_future()
                idle_timer = loop.call_later(registry.idle_seconds, self._retire_if_idle)
                try:
                    await self._wakeup
                except asyncio.CancelledError:
                    if self.retired:
                        return
                    raise
                finally:
                    idle_timer.cancel()
                    self._wakeup = None
                continue
            batch: list[Envelope] = []
            while mailbox and len(batch) < registry.max_batch:
                batch.append(mailbox.popleft())
                if batch[-1].joint is not None:
                    break  # a joint command ends the batch: what follows waits until it has run
            metrics.MAILBOX_DEPTH.dec(len(batch))
            self.busy = True
            if batch[-1].joint is None:
                await self._commit(batch)
            else:
                await self._arrive(batch)
            self.busy = False
            if registry.closing and not mailbox:
                registry._retire(self)
                return

    async def _arrive(self, batch: list[Envelope]) -> None:
        """Commit what came before the joint command that ends the batch, then arrive at it: run
        it if this actor arrives last, else wait until it has run."""
        joint = batch[-1].joint
        assert joint is not None
        try:
            await self._commit(batch[:-1])
        except BaseException:
            # This actor will never arrive: the joint command cannot run (nothing of it moved;
            # what came before it is the committer's to answer).
            joint.release()
            if not batch[-1].future.done():
                batch[-1].future.set_exception(InternalFailure())
            raise
        if joint.arrive():
            try:
                await self._commit(batch[-1:])
            finally:
                joint.release()
        else:
            await joint.ran

    async def _commit(self, batch: list[Envelope]) -> None:
        if not batch:
            return
        try:
            handed = self.registry.committer.submit(batch)
        except BaseException:
            # The hand-off itself failed: the batch never reached the committer, so nothing
            # of it moved, and it must not be lost with the actor.
            for envelope in batch:
                if not envelope.future.done():
                    envelope.future.set_exception(InternalFailure())
            raise
        # From here the committer answers every command of the batch, whatever becomes of
        # this actor (a cancelled actor must not say "nothing moved" of a batch the
        # committer may still commit). Wait for the batch's outcome (never for the callers'
        # reactions to it), so the wallet's next commands are planned against committed state.
        await handed

    def _retire_if_idle(self) -> None:
        # Runs as a loop callback: nothing else runs between this check and the removal, so no
        # message can slip into a mailbox that is being abandoned.
        if not self.mailbox and not self.busy:
            self.retired = True
            self.registry._retire(self)
            self.task.cancel()


class ActorRegistry:
    def __init__(self, committer: GroupCommitter, *, mailbox_size: int = 256, idle_seconds: float = 30.0,
                 max_batch: int = 256, on_idle=None, admit: Callable[[], bool] = lambda: True) -> None:
        if mailbox_size < 1 or max_batch < 1 or idle_seconds <= 0:
            raise ValueError("mailbox_size and max_batch must be >= 1 and idle_seconds > 0")
        self.committer = committer
        # Asked before a command is queued; False refuses it at once (503, nothing moved). The
        # composition root passes the database breaker's admission gate (persistence/breaker.py).
        self.admit = admit
        self.mailbox_size = mailbox_size
        self.idle_seconds = idle_seconds
        self.max_batch = max_batch
        self.actors: dict[uuid.UUID, WalletActor] = {}
        self.closing = False
        # Called once every actor has retired (debounced): the composition root uses it to drop
        # caches and hand freed memory back to the OS, so RSS follows the active wallets.
        self.on_idle = on_idle
        self._idle_call: asyncio.TimerHandle | None = None

    def submit(self, command: Command) -> asyncio.Future:
        """Queue a command on its wallet's actor; the future resolves after commit."""
        if self.closing:
            raise Overloaded("shutting down")
        if not self.admit():
            raise Unavailable()
        actors = [self._actor(wallet_id) for wallet_id in routing_wallets(command)]
        envelope = Envelope(command)
        if len(actors) > 1:
            if any(len(actor.mailbox) >= self.mailbox_size for actor in actors):
                raise Overloaded()  # before any put: a joint command is in every mailbox or none
            envelope.joint = Joint(len(actors))
        for actor in actors:  # no await in between: see the module docstring
            actor.post(envelope)
        return envelope.future

    def _actor(self, wallet_id: uuid.UUID) -> WalletActor:
        actor = self.actors.get(wallet_id)
        if actor is None:
            actor = self.actors[wallet_id] = WalletActor(wallet_id, self)
        return actor

    async def execute(self, command: Command) -> Any:
        # If the caller is cancelled (client gone), only its reply future is cancelled: the actor
        # and the committer never look at it before committing, so an accepted command completes
        # or fails as a whole, and the Idempotency-Key lets the client learn which.
        return await self.submit(command)

    def _retire(self, actor: WalletActor) -> None:
        if self.actors.get(actor.wallet_id) is actor:
            del self.actors[actor.wallet_id]
        if not self.actors:
            if self.on_idle is not None and self._idle_call is None and not self.closing:
                self._idle_call = asyncio.get_running_loop().call_later(1.0, self._idle)

    def _idle(self) -> None:
        self._idle_call = None
        if not self.actors and not self.closing:
            self.actors = {}  # a dict never shrinks its table; a new one does
            self.on_idle()

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let every actor finish what it accepted, then stop the committer."""
        self.closing = True
        if self._idle_call is not None:
            self._idle_call.cancel()
        for actor in list(self.actors.values()):
            if not actor.mailbox and not actor.busy:
                actor.task.cancel()  # idle: nothing accepted is lost
                self._retire(actor)
        tasks = [a.task for a in self.actors.values()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.error("actor.shutdown_timeout", wallet=task.get_name())
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        await self.committer.close(timeout)
