"""A transaction record as the API shows it: one function, so the first response, its
idempotent replay and the history pages (rendered by PostgreSQL to match) agree."""

from __future__ import annotations

from walletd.domain.money import fmt


def tx_json(row) -> dict:
    """A transactions row (record or dict) exactly as the API shows it (handlers.schemas.TxOut):
    JSON-ready, so it can be stored as an idempotent response. The stored copy comes back from jsonb
    with its keys reordered; handlers.endpoint.render writes both in TxOut's field order."""
    def text(value):
        return None if value is None else str(value)

    def money(value):  # history queries already select NUMERIC(…, 10) as its fixed-point text
        return value if isinstance(value, str) else fmt(value)

    return {
        "id": str(row["id"]), "type": row["type"], "status": row["status"],
        "from_wallet_id": text(row["from_wallet_id"]), "from_currency_id": row["from_currency_id"],
        "amount": money(row["amount"]), "to_wallet_id": text(row["to_wallet_id"]),
        "to_currency_id": row["to_currency_id"], "rate": money(row["rate"]),
        "converted_amount": money(row["converted_amount"]),
        "timestamp": row["created_at"].isoformat(timespec="microseconds"),
        "user_id": str(row["user_id"]), "service_user_id": text(row["service_user_id"]),
        "parent_id": text(row["parent_id"]),
    }
