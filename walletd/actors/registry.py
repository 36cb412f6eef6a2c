"""One actor per wallet: a task with a bounded mailbox, handling commands in arrival order.

A command enters exactly one mailbox, the one of the wallet it debits or holds (credits cannot
fail, so they need no actor), so no cycle of waits between actors can form. An actor hands
everything queued in its mailbox to the group committer at once and waits for the commit
before taking more: one wallet never has two batches in flight in this process, and a busy
wallet's commands share a commit. Idle actors retire, so memory tracks active wallets.
"""

from __future__ import annotations

import asyncio
import contextvars
import uuid

from walletd.actors.committer import Envelope, GroupCommitter
from walletd.domain.errors import Overloaded
from walletd.domain.ledger import Command, routing_wallet
from walletd.logs import get_logger

log = get_logger("walletd.actors")


class WalletActor:
    def __init__(self, wallet_id: uuid.UUID, registry: "ActorRegistry") -> None:
        self.wallet_id = wallet_id
        self.registry = registry
        self.mailbox: asyncio.Queue[Envelope] = asyncio.Queue(registry.mailbox_size)
        self.busy = False
        self.retired = False
        # A fresh context: the actor outlives the request that spawned it, so it must not carry
        # that request's id into later log lines.
        self.task = asyncio.create_task(self._run(), name=f"wallet-{wallet_id}", context=contextvars.Context())
        self.task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        # An actor that dies is forgotten; the next message for its wallet spawns a new one.
        if not task.cancelled() and task.exception() is not None:
            log.error("actor.crashed", wallet_id=str(self.wallet_id), error=repr(task.exception()))
        self.registry._retire(self)

    async def _run(self) -> None:
        registry = self.registry
        loop = asyncio.get_running_loop()
        while True:
            if self.mailbox.empty():
                # One timer per idle spell (cheaper than asyncio.wait_for per message, which on
                # Python 3.11 creates a task each time); it cancels this task if nothing arrives.
                idle_timer = loop.call_later(registry.idle_seconds, self._retire_if_idle)
                try:
                    first = await self.mailbox.get()
                except asyncio.CancelledError:
                    if self.retired:
                        return
                    raise
                finally:
                    idle_timer.cancel()
            else:
                first = self.mailbox.get_nowait()
            batch = [first]
            while len(batch) < registry.max_batch and not self.mailbox.empty():
                batch.append(self.mailbox.get_nowait())
            self.busy = True
            # Wait for this batch's outcome (never for the callers' reactions to it), so the
            # wallet's next commands are planned against committed state.
            await registry.committer.submit(batch)
            self.busy = False
            if registry.closing and self.mailbox.empty():
                registry._retire(self)
                return

    def _retire_if_idle(self) -> None:
        # Runs as a loop callback: nothing else runs between this check and the removal, so no
        # message can slip into a mailbox that is being abandoned.
        if self.mailbox.empty() and not self.busy:
            self.retired = True
            self.registry._retire(self)
            self.task.cancel()


class ActorRegistry:
    def __init__(self, committer: GroupCommitter, *, mailbox_size: int = 256, idle_seconds: float = 30.0,
                 max_batch: int = 256, on_idle=None) -> None:
        self.committer = committer
        self.mailbox_size = mailbox_size
        self.idle_seconds = idle_seconds
        self.max_batch = max_batch
        self.actors: dict[uuid.UUID, WalletActor] = {}
        self.closing = False
        self._retired = asyncio.Event()
        # Called once every actor has retired (debounced): the composition root uses it to drop
        # caches and hand freed memory back to the OS, so RSS follows the active wallets.
        self.on_idle = on_idle
        self._idle_call: asyncio.TimerHandle | None = None

    def submit(self, command: Command) -> asyncio.Future:
        """Queue a command on its wallet's actor; the future resolves after commit."""
        if self.closing:
            raise Overloaded("shutting down")
        wallet_id = routing_wallet(command)
        actor = self.actors.get(wallet_id)
        if actor is None:
            actor = self.actors[wallet_id] = WalletActor(wallet_id, self)
        envelope = Envelope(command)
        try:
            actor.mailbox.put_nowait(envelope)
        except asyncio.QueueFull:
            raise Overloaded() from None
        return envelope.future

    async def execute(self, command: Command) -> object:
        # If the caller is cancelled (client gone), only its reply future is cancelled: the actor
        # and the committer never look at it before committing, so an accepted command completes
        # or fails as a whole, and the Idempotency-Key lets the client learn which.
        return await self.submit(command)

    def _retire(self, actor: WalletActor) -> None:
        if self.actors.get(actor.wallet_id) is actor:
            del self.actors[actor.wallet_id]
        if not self.actors:
            self._retired.set()
            if self.on_idle is not None and self._idle_call is None and not self.closing:
                self._idle_call = asyncio.get_running_loop().call_later(1.0, self._idle)

    def _idle(self) -> None:
        self._idle_call = None
        if not self.actors and not self.closing:
            self.on_idle()

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, let every actor finish what it accepted, then stop the committer."""
        self.closing = True
        if self._idle_call is not None:
            self._idle_call.cancel()
        for actor in list(self.actors.values()):
            if actor.mailbox.empty() and not actor.busy:
                actor.task.cancel()  # idle: nothing accepted is lost
                self._retire(actor)
        tasks = [a.task for a in self.actors.values()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.error("actor.shutdown_timeout", wallet=task.get_name())
                task.cancel()
        await self.committer.close()
