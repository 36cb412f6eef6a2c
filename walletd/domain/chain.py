"""The journal's hash chain as pure code: the canonical text of an entry, its seal, and the check of
a run of seals against the entries they name.

Seal n is SHA-256 over the UTF-8 bytes of the compact JSON array

    ["walletd-journal-1", prev_hash_hex, entry_id, kind, request_id, created_at, [posting…], [record…]]

where prev_hash is seal n−1's hash (32 zero bytes for seal 1), every value is a JSON string or null,
and postings and records are sorted by their own JSON text. The database's sealer
(walletd_seal_journal, migration 0011) writes the same text. The audit rebuilds it with its own
queries (persistence/chain.py: built-in functions only) and hashes it here, so replacing a function
stored in the database it audits cannot make the audit agree. docs/journal-integrity.md is the
reference for an auditor's own implementation.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

VERSION = "walletd-journal-1"
GENESIS = bytes(32)


@dataclass
class Entry:
    """A journal entry as the chain covers it: its own fields as canonical texts, and the canonical
    JSON item of each posting and of each record that is no longer pending (in any order)."""

    id: uuid.UUID
    xid: int
    kind: str
    request_id: str | None
    created_at: str  # UTC, microseconds: 2026-01-31T23:59:59.000001Z
    postings: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Seal:
    seq: int
    entry_id: uuid.UUID
    entry_xid: int
    prev_hash: bytes
    hash: bytes


def canonical_text(prev_hash: bytes, entry: Entry) -> bytes:
    head = orjson.dumps([VERSION, prev_hash.hex(), str(entry.id), entry.kind, entry.request_id, entry.created_at])
    return b"".join((head[:-1], b",[", ",".join(sorted(entry.postings)).encode(), b"],[",
                     ",".join(sorted(entry.records)).encode(), b"]]"))


def seal_hash(prev_hash: bytes, entry: Entry) -> bytes:
    return hashlib.sha256(canonical_text(prev_hash, entry)).digest()


@dataclass(frozen=True)
class ChainProblem:
    """One place where the journal no longer matches its chain. `seq` is the position in the chain
    (for an inserted entry: the seal it follows), so sorting by it puts the first problem first."""

    seq: int
    kind: str  # altered, removed, rewritten, inserted, truncated
    entry_id: uuid.UUID | None
    message: str

    @property
    def key(self) -> str:
        """Names the problem, not its wording: the same problem found twice has one key."""
        return f"chain:{self.kind}:{self.seq}:{self.entry_id or ''}"

    def __str__(self) -> str:
        return f"journal chain: {self.message}"


def check_seals(previous: Seal | None, seals: Sequence[Seal], entries: dict[uuid.UUID, Entry]) -> list[ChainProblem]:
    """Checks a run of consecutive seals (in seq order) against the entries they name, continuing
    from `previous` (None before seal 1). Every seal is checked against its own stored prev_hash, so
    one altered entry is named alone instead of breaking every seal after it; a seal whose hash was
    rewritten shows as a link the next seal no longer matches (it still holds the original)."""
    problems: list[ChainProblem] = []
    before = previous
    for seal in seals:
        expected_seq = before.seq + 1 if before else 1
        if seal.seq != expected_seq:
            problems.append(ChainProblem(
                expected_seq, "removed", None,
                f"seals {expected_seq}..{seal.seq - 1} are missing: the entries sealed there were removed "
                "together with their seals"))
        elif seal.prev_hash != (before.hash if before else GENESIS):
            assert before is None or before.seq == seal.seq - 1
            named = before.entry_id if before else None
            problems.append(ChainProblem(
                seal.seq - 1, "rewritten", named,
                f"seal {seal.seq - 1} (entry {named}) was rewritten: seal {seal.seq} still chains to its "
                "original hash, so that entry was altered and sealed again"))
        entry = entries.get(seal.entry_id)
        if entry is None:
            problems.append(ChainProblem(seal.seq, "removed", seal.entry_id,
                                         f"entry {seal.entry_id} (seal {seal.seq}) was removed"))
        elif seal_hash(seal.prev_hash, entry) != seal.hash or entry.xid != seal.entry_xid:
            problems.append(ChainProblem(
                seal.seq, "altered", seal.entry_id,
                f"entry {seal.entry_id} (seal {seal.seq}) was altered: the entry, its postings or its records "
                "differ from what was sealed"))
        before = seal
    return problems
