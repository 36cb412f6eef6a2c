"""What a ledger batch decided, as a value: the committer answers its callers from a `Decided`
before anything else runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from walletd.domain import errors
from walletd.domain.effects import Effects

# (error, request id) -> (HTTP status, the JSON-ready error body the first answer carries).
RefusalResponse = Callable[[errors.DomainError, "str | None"], tuple[int, dict]]


@dataclass
class Decided:
    """A batch's outcome, fixed once the step that commits returned: results aligned with the
    commands (a tx dict, a Replay, or a DomainError), the audit lines of what committed, and what
    this process learns from it once the callers are answered (PgLedger.learn)."""

    results: list[object]
    audit_lines: list[tuple[str, dict]]  # (event name, fields) of each line, logged after the answers
    path: str = "fast"  # fast, locked (read under locks, also one command at a time) or in_doubt
    learn_from: list[Effects] = field(default_factory=list)  # committed on predicted balances
    forget: set[uuid.UUID] = field(default_factory=set)  # wallets to re-read before the next plan
    found_committed: list[str] = field(default_factory=list)  # evidence labels of in-doubt writes found committed

    def add(self, other: "Decided") -> None:
        self.results += other.results
        self.audit_lines += other.audit_lines
        self.learn_from += other.learn_from
        self.forget |= other.forget
        self.found_committed += other.found_committed
