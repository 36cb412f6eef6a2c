"""The hash chain's pure code: the canonical text against an independent rebuild (json.dumps), and
check_seals naming exactly the seal that was altered, removed or rewritten in a random chain."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.strategies import amounts
from walletd.domain.chain import GENESIS, Entry, Seal, canonical_text, check_seals, seal_hash

uuids = st.uuids()
texts = st.text(max_size=12)  # any Unicode, control characters and quotes included
words = st.sampled_from(["transfer", "deposit", "withdraw", "bonus", "close", "paid", "B", "R"])
timestamps = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _item(values) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


@st.composite
def entries(draw) -> Entry:
    postings = draw(st.lists(st.tuples(uuids, st.integers(1, 5), words, amounts), max_size=4))
    records = draw(st.lists(st.lists(st.one_of(st.none(), uuids.map(str), words), min_size=17, max_size=17),
                            max_size=3))
    return Entry(draw(uuids), draw(st.integers(0, 2**40)), draw(words), draw(st.one_of(st.none(), texts)),
                 draw(timestamps),
                 postings=[_item([str(w), str(c), b, f"{a:.10f}"]) for w, c, b, a in postings],
                 records=[_item(r) for r in records])


@given(entries(), st.binary(min_size=32, max_size=32))
def test_the_canonical_text_is_the_documented_json_array(entry, prev):
    # postings and records sorted by their own compact JSON text
    expected = json.dumps(["walletd-journal-1", prev.hex(), str(entry.id), entry.kind, entry.request_id,
                           entry.created_at, [json.loads(p) for p in sorted(entry.postings)],
                           [json.loads(r) for r in sorted(entry.records)]],
                          ensure_ascii=False, separators=(",", ":"))
    assert canonical_text(prev, entry).decode() == expected
    assert seal_hash(prev, entry) == hashlib.sha256(expected.encode()).digest()


@given(entries(), entries())
def test_the_order_of_postings_and_records_does_not_matter_but_their_content_does(entry, other):
    shuffled = Entry(entry.id, entry.xid, entry.kind, entry.request_id, entry.created_at,
                     list(reversed(entry.postings)), list(reversed(entry.records)))
    assert seal_hash(GENESIS, shuffled) == seal_hash(GENESIS, entry)
    changed = Entry(entry.id, entry.xid, entry.kind, entry.request_id, entry.created_at, other.postings, other.records)
    if (sorted(changed.postings), sorted(changed.records)) != (sorted(entry.postings), sorted(entry.records)):
        assert seal_hash(GENESIS, changed) != seal_hash(GENESIS, entry)


def chain_of(journal: list[Entry]) -> list[Seal]:
    seals, prev = [], GENESIS
    for seq, entry in enumerate(journal, start=1):
        digest = seal_hash(prev, entry)
        seals.append(Seal(seq, entry.id, entry.xid, prev, digest))
        prev = digest
    return seals


journals = st.lists(entries(), min_size=2, max_size=8, unique_by=lambda e: e.id)


@given(journals)
def test_an_intact_chain_has_no_problem(journal):
    seals = chain_of(journal)
    assert check_seals(None, seals, {e.id: e for e in journal}) == []
    # checked in two runs, the second continuing from the first's last seal
    assert check_seals(seals[0], seals[1:], {e.id: e for e in journal}) == []


@given(journals, st.data())
@settings(max_examples=60)
def test_each_kind_of_tampering_names_its_seal(journal, data):
    seals = chain_of(journal)
    index = data.draw(st.integers(0, len(journal) - 1))
    target = journal[index]
    by_id = {e.id: e for e in journal}

    altered = dict(by_id)
    altered[target.id] = Entry(target.id, target.xid, target.kind, target.request_id, target.created_at,
                               target.postings + [_item(["x", "1", "B", "1.0000000000"])], target.records)
    assert [(p.kind, p.seq, p.entry_id) for p in check_seals(None, seals, altered)] == \
        [("altered", index + 1, target.id)]

    removed = {i: e for i, e in by_id.items() if i != target.id}
    assert [(p.kind, p.seq) for p in check_seals(None, seals, removed)] == [("removed", index + 1)]

    without_seal = seals[:index] + seals[index + 1:]
    problems = check_seals(None, without_seal, removed)
    if index < len(journal) - 1:  # a missing last seal is a truncated tail: only an expected head shows it
        assert [(p.kind, p.seq) for p in problems][:1] == [("removed", index + 1)]
    else:
        assert problems == []

    if index < len(journal) - 1:  # rewritten: altered, then its seal recomputed
        forged = seals[index]
        resealed = Seal(forged.seq, forged.entry_id, forged.entry_xid, forged.prev_hash,
                        seal_hash(forged.prev_hash, altered[target.id]))
        rewritten = seals[:index] + [resealed] + seals[index + 1:]
        assert [(p.kind, p.seq, p.entry_id) for p in check_seals(None, rewritten, altered)] == \
            [("rewritten", index + 1, target.id)]
