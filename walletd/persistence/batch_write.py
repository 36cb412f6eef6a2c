"""Everything one ledger batch decided (its Effects), written by one call of the schema's
walletd_write_batch(doc jsonb) (migration 0005, extended by 0006, 0009 and 0012; the document's shape is
written down there).

One JSON parameter: a single document is several times cheaper to encode than dozens of typed
arrays, and the statement-level postings trigger sees the whole batch at once. The function
counts the settlements itself: a settlement whose compare-and-set finds the transaction no
longer pending raises serialization_failure, and nothing of the batch is written.
"""

from __future__ import annotations

import orjson

from walletd.domain.effects import Effects

WRITE_BATCH = "SELECT walletd_write_batch($1::jsonb)"


def writes_anything(fx: Effects, idempotency_rows: list) -> bool:
    return bool(fx.entries or fx.new_transactions or fx.status_updates or idempotency_rows)


def batch_document(fx: Effects, idempotency_rows: list) -> str:
    return orjson.dumps(batch_fields(fx, idempotency_rows), default=str).decode()


def batch_fields(fx: Effects, idempotency_rows: list) -> dict:
    document = {
        "now": fx.now,
        "entries": [{"id": e, "kind": k, "request_id": r} for e, k, r in fx.entries],
        "postings": [{"entry_id": e, "wallet_id": w, "currency_id": c, "bucket": b, "amount": a, "transaction_id": t}
                     for (e, w, c, b, a), t in zip(fx.postings, fx.posting_records, strict=True)],
        "transactions": fx.new_transactions,
        "settled": [{"id": i, "status": st, "entry_id": e, "from_status": was, "settled_by": by}
                    for i, st, e, was, by in fx.status_updates],
        "paid_out": [{"id": i, "amount": a} for i, a in fx.external_credits],
        "idempotency": [{"principal_id": p, "key": k, "request_hash": h, "status_code": c, "response": r}
                        for p, k, h, c, r in idempotency_rows],
    }
    if fx.outbox:  # only deposits and withdrawals: the function skips the outbox without it
        document["events"] = [
            {"id": event["id"], "service_user_id": service_user_id, "type": event["type"],
             "transaction_id": event["data"]["id"], "body": orjson.dumps(event).decode()}
            for service_user_id, event in fx.outbox]
    return document


async def write_batch(conn, fx: Effects, idempotency_rows: list) -> None:
    """One round trip. Raises what the server raised (see the module docstring)."""
    await conn.fetchval(WRITE_BATCH, batch_document(fx, idempotency_rows))
