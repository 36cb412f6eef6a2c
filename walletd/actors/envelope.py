"""What a wallet actor's mailbox holds: an Envelope per command, carrying the caller's reply
future, and the Joint of a command queued in several mailboxes at once (actors/registry.py says
why that cannot deadlock)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from walletd.domain.commands import Command


@dataclass
class Envelope:
    command: Command
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    joint: Joint | None = None  # set when the command sits in several wallets' mailboxes


class Joint:
    """A command queued in several actors' mailboxes: the last actor to arrive runs it; `ran`
    resolves once it has run (or can no longer run), and releases the actors waiting for it."""

    __slots__ = ("waiting", "ran")

    def __init__(self, actors: int) -> None:
        self.waiting = actors
        self.ran: asyncio.Future = asyncio.get_running_loop().create_future()

    def arrive(self) -> bool:
        """True for the actor that must run it: the last to arrive, if it was not abandoned."""
        self.waiting -= 1
        return self.waiting == 0 and not self.ran.done()

    def release(self) -> None:
        if not self.ran.done():
            self.ran.set_result(None)
