"""Checking the journal against its hash chain: a run of seals at a time (the self-audit's
increments, and the whole chain for `walletd audit`).

What it finds and how it names it (docs/journal-integrity.md):
- altered: an entry, one of its postings or records differs from what its seal covers;
- removed: a sealed entry is gone (or seals are missing from the sequence);
- rewritten: a seal's hash no longer matches the next seal's prev_hash (altered and sealed again);
- inserted: an entry inside the sealed part of the order that no seal names;
- truncated: `--expect-head HASH` names a hash the chain no longer holds (its tail was cut off or
  rewritten).
Problems are listed in chain order, so the first one printed is the first place the journal differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from walletd.domain.chain import ChainProblem, Seal, check_seals
from walletd.persistence import chain
from walletd.persistence.audit import find_problems
from walletd.persistence.db import FairPool

# Entries are read and hashed a part at a time: 2,000 multi-leg entries read at once held ~100 MB
# and hashed for a few hundred ms without yielding to the requests the process serves. A segment's
# first part is FIRST_READ entries; each next part is sized by what the previous one held per entry
# (postings and records) to about ITEMS_PER_READ of them, at most ENTRIES_PER_READ entries. So one
# part can exceed the budget (the first, or the first after light entries give way to heavy ones);
# bounding every part strictly (counting each entry's postings first, or starting small) cost the
# multi-leg bench 25-65 % more PostgreSQL CPU per request in alternating runs (docs/performance.md).
FIRST_READ = 500
ENTRIES_PER_READ = 500
ITEMS_PER_READ = 10_000
# Entries hashed between two turns of the event loop (about a millisecond of CPU for settlements):
# a settlement burst's p99 27-28 ms instead of 28-34 while the self-audit checks it (docs/performance.md).
HASHED_BETWEEN_YIELDS = 100


@dataclass
class Segment:
    """Seals after `previous`, checked: their problems, the ids of the entries they name (in seal
    order; a removed entry is absent), those entries with no posting, the last seal read."""

    problems: list[ChainProblem]
    entry_ids: list[uuid.UUID]
    without_postings: list[uuid.UUID]
    last: Seal | None
    count: int


async def check_after(conn, previous: Seal | None, limit: int = chain.READ_BATCH) -> Segment:
    """The next `limit` seals after `previous`, on a connection outside any transaction: each part is
    read in a short transaction of its own and hashed once it has ended. A snapshot held while
    Python hashes (even the last statement's, which a transaction keeps until its next statement)
    keeps PostgreSQL from pruning the dead versions of the rows updated meanwhile (a payment
    service's wallets, once per batch), and every update of them walks those versions. Sealed
    entries do not change, so parts read at different instants check the same chain."""
    seals = await chain.seals_after(conn, previous.seq if previous else 0, limit)
    segment = Segment([], [], [], seals[-1] if seals else previous, len(seals))
    before, start, step = previous, 0, min(FIRST_READ, ENTRIES_PER_READ)
    while start < len(seals):
        part = seals[start:start + step]
        async with chain.reading(conn, "repeatable_read"):  # an entry's postings and records of one instant
            entries = await chain.read_entries(conn, [s.entry_id for s in part])
        for first in range(0, len(part), HASHED_BETWEEN_YIELDS):
            if first:
                await asyncio.sleep(0)  # the requests this process serves wait for no more than one slice
            segment.problems += check_seals(part[first - 1] if first else before,
                                            part[first:first + HASHED_BETWEEN_YIELDS], entries)
        for seal in part:
            entry = entries.get(seal.entry_id)
            if entry is not None:
                segment.entry_ids.append(entry.id)
                if not entry.postings:
                    segment.without_postings.append(entry.id)
        items = sum(len(e.postings) + len(e.records) for e in entries.values())
        step = max(1, min(ENTRIES_PER_READ, ITEMS_PER_READ * len(part) // max(items, 1)))
        before, start = part[-1], start + len(part)
    return segment


@dataclass
class ChainAudit:
    problems: list[ChainProblem] = field(default_factory=list)
    sealed: int = 0
    head: Seal | None = None
    unsealed: int = 0

    def summary(self) -> str:
        if self.head is None:
            return f"journal chain: nothing sealed yet; {self.unsealed} entries not sealed yet"
        return (f"journal chain: {self.sealed} entries checked, head seq {self.head.seq} hash {self.head.hash.hex()}; "
                f"{self.unsealed} newer entries not sealed yet")


async def audit_chain(source, expect_head: bytes | None = None, *, inserted_limit: int = 100,
                      pace: Callable[[], Awaitable[None]] | None = None) -> ChainAudit:
    """The whole chain, from seal 1 to the head, then the entries inserted inside it and, given an
    expected head, whether the chain still holds it. `source` is a connection, or a pool to take one
    from per segment (a long walk then never holds a connection others wait for); `pace`, awaited
    before each segment, lets the self-audit wait for quiet moments."""
    result = ChainAudit()
    previous: Seal | None = None
    while True:
        if pace is not None:
            await pace()
        async with _connection(source) as conn:
            segment = await check_after(conn, previous)
        if segment.count == 0:
            break
        result.problems.extend(segment.problems)
        result.sealed += segment.count
        previous = segment.last
    result.head = previous
    async with _connection(source) as conn:
        if previous is not None:
            for entry_id, after_seq in await chain.inserted_entries(conn, previous, inserted_limit):
                result.problems.append(inserted(entry_id, after_seq))
        if expect_head is not None:
            result.problems.extend(await expected_head_problems(conn, expect_head, previous))
        result.unsealed = await chain.unsealed_count(conn, previous)
    result.problems.sort(key=lambda p: (p.seq, p.kind != "removed"))
    return result


@contextlib.asynccontextmanager
async def _connection(source):
    if isinstance(source, FairPool):
        async with source.acquire() as conn:
            yield conn
    else:
        yield source


def inserted(entry_id: uuid.UUID, after_seq: int) -> ChainProblem:
    return ChainProblem(after_seq, "inserted", entry_id,
                        f"entry {entry_id} was inserted after seal {after_seq}: it lies inside the sealed part "
                        "of the chain, where no seal names it")


async def expected_head_problems(conn, expect_head: bytes, last: Seal | None) -> list[ChainProblem]:
    if await chain.seq_of_hash(conn, expect_head) is not None:
        return []
    ends = f"seq {last.seq}, hash {last.hash.hex()}" if last else "nothing sealed"
    return [ChainProblem(last.seq + 1 if last else 1, "truncated", None,
                         f"the expected head {expect_head.hex()} is not in the chain (it ends at {ends}): entries "
                         "sealed after it were removed with their seals, or the chain was rewritten")]


async def run_full_audit(url: str, expect_head: bytes | None = None) -> tuple[list[str], str]:
    """`walletd audit`: every check of find_problems, then the chain. Returns the problems as lines
    (the chain's in chain order, so its first line names the first place that differs) and a
    one-line summary of the chain."""
    conn = await asyncpg.connect(url)
    try:
        problems = await find_problems(conn)
        result = await audit_chain(conn, expect_head)
    finally:
        await conn.close()
    return problems + [str(p) for p in result.problems], result.summary()
