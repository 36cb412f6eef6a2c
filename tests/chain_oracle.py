"""The journal chain recomputed from scratch, as docs/journal-integrity.md defines it: from the raw
columns, with json.dumps and hashlib, never with walletd's code or the database's functions. Tests
compare the seals the database wrote with it."""

from __future__ import annotations

import hashlib
import json
from datetime import timezone

_RECORD_COLUMNS = ("id", "type", "status", "from_wallet_id", "from_currency_id", "from_user_id", "amount",
                   "to_wallet_id", "to_currency_id", "to_user_id", "rate", "converted_amount", "user_id",
                   "service_user_id", "external_wallet_id", "parent_id", "created_at", "commission_rate", "commission",
                   "settled_by")


def _value(value):
    if value is None:
        return None
    if hasattr(value, "astimezone"):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if hasattr(value, "quantize"):
        return f"{value:.10f}"
    return str(value)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def entry_text(prev: bytes, entry, postings, records) -> bytes:
    posting_items = sorted(_json([_value(p[k]) for k in ("wallet_id", "currency_id", "bucket", "amount")])
                           for p in postings)
    record_items = sorted(_json([_value(r[k]) for k in _RECORD_COLUMNS]) for r in records)
    head = _json(["walletd-journal-1", prev.hex(), str(entry["id"]), entry["kind"], entry["request_id"],
                  _value(entry["created_at"])])
    return (head[:-1] + ",[" + ",".join(posting_items) + "],[" + ",".join(record_items) + "]]").encode()


async def recompute(conn) -> list[tuple[int, bytes, bytes]]:
    """(seq, stored hash, recomputed hash) for every seal, the chain rebuilt from seal 1."""
    seals = await conn.fetch("SELECT seq, entry_id, hash FROM journal_seals ORDER BY seq")
    entries = {r["id"]: r for r in await conn.fetch("SELECT id, kind, request_id, created_at FROM journal_entries")}
    postings: dict = {}
    for p in await conn.fetch("SELECT entry_id, wallet_id, currency_id, bucket, amount FROM postings"):
        postings.setdefault(p["entry_id"], []).append(p)
    records: dict = {}
    # On Citus a record between two users is stored once per side; the chain covers its first copy.
    distributed = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    first_copy = " AND owner_id = user_id" if distributed else ""
    for r in await conn.fetch(f"SELECT entry_id, {', '.join(_RECORD_COLUMNS)} FROM transactions "
                              f"WHERE entry_id IS NOT NULL AND status <> 'pending'{first_copy}"):
        records.setdefault(r["entry_id"], []).append(r)
    prev = bytes(32)
    out = []
    for seal in seals:
        entry_id = seal["entry_id"]
        entry = entries[entry_id]
        covered = [] if entry["kind"] == "withdraw_expired" else records.get(entry_id, [])
        digest = hashlib.sha256(entry_text(prev, entry, postings.get(entry_id, []), covered)).digest()
        out.append((seal["seq"], bytes(seal["hash"]), digest))
        prev = digest
    return out
