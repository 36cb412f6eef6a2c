"""What a ledger batch decided, as values: the committer answers its callers from a `Decided`
before anything else runs, and a `Replay` is a stored first answer given again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from walletd.domain import errors
from walletd.domain.ledger import Effects

# (error, request id) -> (HTTP status, the JSON-ready error body the first answer carries).
RefusalResponse = Callable[[errors.DomainError, "str | None"], tuple[int, dict]]


@dataclass(frozen=True)
class Replay:
    """A stored first answer (a movement, or a refusal the ledger decided) returned for a retried
    Idempotency-Key."""

    status: int
    body: dict


@dataclass
class Decided:
    """A batch's outcome, fixed once its decisive step returned: results aligned with the commands
    (a tx dict, a Replay, or a DomainError), the audit events of what committed, and what this
    process learns from it once the callers are answered (PgLedger.learn)."""

    results: list[object]
    events: list[tuple[str, dict]]
    path: str = "fast"  # fast, locked (read under locks, also one command at a time) or in_doubt
    learned: list[Effects] = field(default_factory=list)  # committed on predicted balances
    forget: set[uuid.UUID] = field(default_factory=set)  # wallets to re-read before the next plan
    found: list[str] = field(default_factory=list)  # markers of in-doubt writes found committed

    def add(self, other: "Decided") -> None:
        self.results += other.results
        self.events += other.events
        self.learned += other.learned
        self.forget |= other.forget
        self.found += other.found
