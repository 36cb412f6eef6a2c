"""A transaction record as the API shows it: one function, so the first response, its
idempotent replay, the history pages and the events agree."""

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
