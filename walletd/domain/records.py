"""A transaction record as the API shows it: tx_json, so the first response, its idempotent
replay and the events agree; history pages split the same fields from PostgreSQL's one text per
record (tx_from_line; tests/e2e/test_history.py compares the two record by record)."""

from __future__ import annotations

from walletd.domain.money import fmt


def tx_json(row, memo: dict | None = None) -> dict:
    """A transactions row (record or dict) exactly as the API shows it (handlers.schemas.TxOut):
    JSON-ready, so it can be stored as an idempotent response. The stored copy comes back from jsonb
    with its keys reordered; handlers.endpoint.render writes both in TxOut's field order.

    A column may arrive already as its text (history pages select ids, amounts and the instant as
    text: NUMERIC(…, 10) prints all ten places, ISO instants in UTC with microseconds), which is
    kept as it is. memo: a dict kept across the records of one answer, whose ids, instant and
    amounts recur (the legs of a multi-leg transfer share their source, owner, time and often
    amount and rate): each value is rendered once."""
    return {
        "id": _text(row["id"], None), "type": row["type"], "status": row["status"],  # an id is unique: no memo
        "from_wallet_id": _text(row["from_wallet_id"], memo), "from_currency_id": row["from_currency_id"],
        "amount": _amount(row["amount"], memo), "to_wallet_id": _text(row["to_wallet_id"], memo),
        "to_currency_id": row["to_currency_id"], "rate": _amount(row["rate"], memo),
        "converted_amount": _amount(row["converted_amount"], memo),
        "timestamp": _instant(row["created_at"], memo),
        "user_id": _text(row["user_id"], memo), "service_user_id": _text(row["service_user_id"], memo),
        "parent_id": _text(row["parent_id"], memo),
        # Fixed on deposit and withdrawal requests; absent on every other record (a dict or an
        # asyncpg Record: both have get()).
        "commission_rate": _amount(row.get("commission_rate"), memo),
        "commission": _amount(row.get("commission"), memo),
    }


# The record's fields in tx_json's (and TxOut's) order.
TX_FIELDS = ("id", "type", "status", "from_wallet_id", "from_currency_id", "amount", "to_wallet_id", "to_currency_id",
             "rate", "converted_amount", "timestamp", "user_id", "service_user_id", "parent_id", "commission_rate",
             "commission")


def tx_from_line(line: str) -> dict:
    """tx_json of a record PostgreSQL wrote as one text (persistence/history.py): TX_FIELDS in
    order, each as tx_json writes it, between unit separators (U+001F), '' for NULL (no field of a
    record is ever empty text). Spelled out rather than zipped: a history page calls it 50 times."""
    v = line.split("\x1f")
    return {
        "id": v[0], "type": v[1], "status": v[2], "from_wallet_id": v[3] or None,
        "from_currency_id": int(v[4]) if v[4] else None, "amount": v[5] or None, "to_wallet_id": v[6] or None,
        "to_currency_id": int(v[7]) if v[7] else None, "rate": v[8] or None, "converted_amount": v[9] or None,
        "timestamp": v[10], "user_id": v[11] or None, "service_user_id": v[12] or None, "parent_id": v[13] or None,
        "commission_rate": v[14] or None, "commission": v[15] or None,
    }


# Three near-copies rather than one helper taking the render function: a history page calls them
# 13 times per record, and the extra call cost 1 µs per record (+14 %, timeit).
def _text(value, memo: dict | None):
    if value is None or value.__class__ is str:
        return value
    if memo is None:
        return str(value)
    found = memo.get(value)
    if found is None:
        found = memo[value] = str(value)
    return found


def _amount(value, memo: dict | None):
    if value is None or value.__class__ is str:
        return value
    if memo is None:
        return fmt(value)
    found = memo.get(value)
    if found is None:
        found = memo[value] = fmt(value)
    return found


def _instant(value, memo: dict | None) -> str:
    if value.__class__ is str:
        return value
    if memo is None:
        return value.isoformat(timespec="microseconds")
    found = memo.get(value)
    if found is None:
        found = memo[value] = value.isoformat(timespec="microseconds")
    return found
