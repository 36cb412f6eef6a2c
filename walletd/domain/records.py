"""A transaction record as the API shows it: one function, so the first response, its
idempotent replay and the history pages (rendered by PostgreSQL to match) agree."""

from __future__ import annotations

from walletd.domain.money import fmt


def tx_json(row, memo: dict | None = None) -> dict:
    """A transactions row (record or dict) exactly as the API shows it (handlers.schemas.TxOut):
    JSON-ready, so it can be stored as an idempotent response. The stored copy comes back from jsonb
    with its keys reordered; handlers.endpoint.render writes both in TxOut's field order.

    memo: a dict kept across the records of one answer, whose ids, instant and amounts recur (the
    legs of a multi-leg transfer share their source, owner, time and often amount and rate): each
    value is rendered once."""
    def text(value):
        if value is None:
            return None
        if memo is None:
            return str(value)
        found = memo.get(value)
        if found is None:
            found = memo[value] = str(value)
        return found

    def money(value):  # history queries already select NUMERIC(…, 10) as its fixed-point text
        if isinstance(value, str):
            return value
        if memo is None:
            return fmt(value)
        found = memo.get(value)
        if found is None:
            found = memo[value] = fmt(value)
        return found

    def fee(name):  # fixed on deposit and withdrawal requests; absent on every other record
        value = row.get(name)  # a dict or an asyncpg Record: both have get()
        return None if value is None else money(value)

    created_at = row["created_at"]
    if memo is None or (timestamp := memo.get(created_at)) is None:
        timestamp = created_at.isoformat(timespec="microseconds")
        if memo is not None:
            memo[created_at] = timestamp
    return {
        "id": str(row["id"]), "type": row["type"], "status": row["status"],
        "from_wallet_id": text(row["from_wallet_id"]), "from_currency_id": row["from_currency_id"],
        "amount": money(row["amount"]), "to_wallet_id": text(row["to_wallet_id"]),
        "to_currency_id": row["to_currency_id"], "rate": money(row["rate"]),
        "converted_amount": money(row["converted_amount"]),
        "timestamp": timestamp,
        "user_id": text(row["user_id"]), "service_user_id": text(row["service_user_id"]),
        "parent_id": text(row["parent_id"]), "commission_rate": fee("commission_rate"),
        "commission": fee("commission"),
    }
