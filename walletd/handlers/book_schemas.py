"""Models of the books endpoints (balances at an instant, statements, a payment service's own
wallets) and of multi-leg transfers; the shared shapes (amounts, Money, TxOut) are schemas.py's."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from walletd.domain import errors
from walletd.domain.instants import EXAMPLE, iso, parse_instant
from walletd.handlers.schemas import Amount, Model, Money, OwnWalletId, Params, TxOut, WalletOut


def _instant(raw: object) -> datetime:
    if isinstance(raw, datetime) and raw.tzinfo is not None:
        return raw
    if not isinstance(raw, str):
        raise PydanticCustomError("instant_invalid", "not an RFC 3339 date-time string")
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise PydanticCustomError("instant_invalid", "{reason}", {"reason": str(exc)}) from None


# An instant a client names: RFC 3339, with a UTC offset (domain/instants.py).
Instant = Annotated[
    datetime,
    BeforeValidator(_instant),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": [EXAMPLE],
                    "description": "RFC 3339 date-time with a UTC offset (Z or ±hh:mm)"}),
]
# An instant walletd answers with, written as transaction timestamps are (UTC, microseconds).
Timestamp = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-03-31T23:59:59.000000+00:00"]}),
]
ReadableWalletId = Annotated[uuid.UUID, Field(
    description="One of the caller's wallets (a payment service: one of its service or gateway wallets)",
    examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e01"])]


# ---- balance at an instant ------------------------------------------------------------------------


class BalanceParams(Params):
    wallet_id: ReadableWalletId
    at: Annotated[Instant | None, Field(description="The instant (default: now)")] = None


class BalanceOut(Model):
    wallet_id: uuid.UUID
    currency_id: int
    at: Timestamp
    balance: Money
    reserved_balance: Money


# ---- statements ---------------------------------------------------------------------------------


class StatementParams(Params):
    model_config = ConfigDict(extra="ignore", frozen=True, validate_by_name=False, validate_by_alias=True)

    wallet_id: ReadableWalletId
    from_: Annotated[Instant | None, Field(alias="from", description="The period starts after this instant "
                                                                      "(default: the beginning)")] = None
    to: Annotated[Instant | None, Field(description="The period ends at this instant, included (default: now)")] = None
    limit: Annotated[int, Field(ge=1, le=200, description="Lines per page (JSON only)")] = 50
    cursor: Annotated[str | None, Field(max_length=1024, description="next_cursor of the previous page (JSON only)")] \
        = None
    format: Annotated[Literal["json", "csv"] | None, Field(
        description="csv: the whole statement as RFC 4180 CSV (as `Accept: text/csv`)")] = None


class StatementLineOut(Model):
    transaction_id: uuid.UUID | None = Field(description="The transaction record the line belongs to")
    type: str | None
    status: str | None = Field(description="The record's status now")
    amount: Money = Field(description="Signed: + into the wallet's balance, − out of it")
    balance_after: Money
    timestamp: Timestamp


class StatementOut(Model):
    model_config = ConfigDict(frozen=True, serialize_by_alias=True, validate_by_name=True)

    wallet_id: uuid.UUID
    currency_id: int
    from_: Annotated[Timestamp | None, Field(alias="from")]
    to: Timestamp
    opening_balance: Money
    closing_balance: Money
    entries: list[StatementLineOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last")


# ---- a payment service's wallets ----------------------------------------------------------------


class ServiceWalletOut(WalletOut):
    kind: Literal["service", "gateway"]


class ServiceWalletsOut(Model):
    wallets: list[ServiceWalletOut]


# ---- multi-leg transfers ------------------------------------------------------------------------


class TransferLegParams(Params):
    source_wallet_id: OwnWalletId
    target_wallet_id: Annotated[uuid.UUID, Field(description="Any user's wallet; not the leg's source",
                                                 examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e02"])]
    amount: Amount


def _leg_refusal(index: int, exc: ValidationError) -> dict:
    found = exc.errors(include_url=False, include_input=False, include_context=True)
    fields = ", ".join(".".join(str(part) for part in err["loc"]) or "leg" for err in found)
    if all(err["type"] == errors.InvalidAmount.code for err in found):
        return {"index": index, "code": errors.InvalidAmount.code,
                "message": f"{errors.InvalidAmount.message}: {found[0]['ctx']['reason']}"}
    return {"index": index, "code": "validation_failed", "message": f"invalid parameters: {fields}"}


def _legs(raw: object) -> object:
    """Each leg validated on its own, so a refusal names every malformed leg by its index (the
    whole list at once first: the common case, and pydantic's fastest)."""
    if not isinstance(raw, list):
        return raw  # pydantic says it is not a list
    try:
        return _LEGS.validate_python(raw)
    except ValidationError:
        pass
    legs, refused = [], []
    for index, item in enumerate(raw):
        try:
            legs.append(TransferLegParams.model_validate(item))
        except ValidationError as exc:
            refused.append(_leg_refusal(index, exc))
    if refused:
        raise PydanticCustomError(errors.LegsRefused.code, "{count} leg(s) refused",
                                  {"count": len(refused), "legs": refused})
    return legs


_LEGS = TypeAdapter(list[TransferLegParams])


class TransfersParams(Params):
    transfers: Annotated[list[TransferLegParams], BeforeValidator(_legs), Field(
        min_length=1, description="The legs, 1 to WALLETD_MAX_BATCH_LEGS (default 1000): all move or none",
        examples=[[{"source_wallet_id": "0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e01",
                    "target_wallet_id": "0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e02", "amount": "10.50"}]])]


class TransfersOut(Model):
    transfers: list[TxOut] = Field(description="One record per leg, in request order")
