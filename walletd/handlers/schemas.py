"""Pydantic models: they validate every request and generate the OpenAPI document.

Amounts arrive as strings or JSON numbers (parsed as Decimal, never float) and leave as
fixed-point strings with 10 places.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, PlainSerializer,
    WithJsonSchema,
)

from walletd.domain.errors import InvalidAmount
from walletd.domain.money import MAX_AMOUNT, fmt, parse_amount


def _amount(raw: object) -> Decimal:
    try:
        return parse_amount(raw)
    except InvalidAmount:
        raise ValueError("Invalid amount") from None


_AMOUNT_DOC = (
    f"Decimal string or number, rounded half-even to 10 places; > 0 and <= {MAX_AMOUNT:f}."
)
Amount = Annotated[
    Decimal,
    BeforeValidator(_amount),
    WithJsonSchema({"type": "string", "example": "0.05", "description": _AMOUNT_DOC}),
]
Money = Annotated[
    Decimal,
    PlainSerializer(fmt, return_type=str),
    WithJsonSchema({"type": "string", "example": "0.0500000000", "pattern": r"^-?\d+\.\d{10}$"}),
]
CurrencyId = Annotated[int, Field(ge=1, le=32767, description="Currency id (1, 2, 3 on a fresh install)")]

_USERNAME = re.compile(r"^[A-Za-z0-9_]{3,64}$")
_SPECIAL = re.compile(r"[^A-Za-z0-9]")


def _password(value: str) -> str:
    problems = []
    if len(value) < 8:
        problems.append("at least 8 characters")
    if not re.search(r"\d", value):
        problems.append("a digit")
    if not re.search(r"[A-Z]", value):
        problems.append("an upper-case letter")
    if not _SPECIAL.search(value):
        problems.append("a special character")
    if problems:
        raise ValueError("password needs " + ", ".join(problems))
    return value


def _username(value: str) -> str:
    if not _USERNAME.match(value):
        raise ValueError("username must be 3-64 characters of A-Z, a-z, 0-9 and _")
    return value


class Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- requests ---------------------------------------------------------------------------------


class RegisterParams(Params):
    username: Annotated[str, AfterValidator(_username)]
    email: EmailStr
    password: Annotated[str, Field(max_length=256), AfterValidator(_password)]


class LoginParams(Params):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class WalletIdParams(Params):
    wallet_id: uuid.UUID


class HistoryParams(Params):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str | None, Field(max_length=64, description="next_cursor of the previous page")] = None


class WalletHistoryParams(HistoryParams):
    wallet_id: uuid.UUID


class ExternalWalletParams(Params):
    wallet_name: Annotated[str, Field(min_length=1, max_length=100)]
    currency_id: CurrencyId


class DepositParams(Params):
    service_user_id: uuid.UUID
    wallet_id: uuid.UUID
    amount: Amount


class WithdrawParams(Params):
    service_user_id: uuid.UUID
    from_wallet_id: uuid.UUID
    amount: Amount


class TransferParams(Params):
    source_wallet_id: uuid.UUID
    target_wallet_id: uuid.UUID
    amount: Amount


class ExchangeParams(Params):
    from_currency: CurrencyId
    to_currency: CurrencyId
    amount: Amount


class SettleParams(Params):
    transaction_id: uuid.UUID
    new_status: Literal["paid", "rejected", "reject"]


class ConversionParams(Params):
    from_currency: Annotated[str, Field(min_length=2, max_length=10, description="Currency code, e.g. EUR")]
    to_currency: Annotated[str, Field(min_length=2, max_length=10)]
    amount: Amount


class SetRateParams(Params):
    from_currency: CurrencyId
    to_currency: CurrencyId
    rate: Amount


class CommissionParams(Params):
    currency_id: CurrencyId
    deposit_rate: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=10)]
    withdraw_rate: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=10)]


# ---- responses --------------------------------------------------------------------------------


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class TokenOut(Model):
    access_token: str
    token_type: str = "bearer"


class ServiceTokenOut(TokenOut):
    user_id: uuid.UUID


class UserOut(Model):
    id: uuid.UUID
    username: str
    email: str
    role: str
    created_at: datetime


class WalletOut(Model):
    id: uuid.UUID
    balance: Money
    reserved_balance: Money
    available: Money
    currency_id: int
    currency: str
    user_id: uuid.UUID


class WalletsOut(Model):
    wallets: list[WalletOut]


class ExternalWalletOut(Model):
    id: uuid.UUID
    wallet_name: str
    currency_id: int
    amount_withdraw: Money
    card_id: uuid.UUID | None
    user_id: uuid.UUID


class TxOut(Model):
    id: uuid.UUID
    from_wallet_id: uuid.UUID | None
    from_currency_id: int | None
    amount: Money
    to_wallet_id: uuid.UUID | None
    to_currency_id: int | None
    rate: Money
    converted_amount: Money
    type: Literal["deposit", "withdraw", "transfer", "commission", "bonus"]
    status: Literal["pending", "paid", "rejected", "close", "expired"]
    timestamp: datetime
    user_id: uuid.UUID
    service_user_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None


class HistoryOut(Model):
    transactions: list[TxOut]
    pending_transactions: list[TxOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next (older) page; null at the end")


class QuoteOut(Model):
    from_currency: int
    amount_int: Money
    to_currency: int
    rate: Money
    amount_ext: Money


class ConversionOut(Model):
    from_currency: str
    to_currency: str
    original_amount: Money
    converted_amount: Money


class StatusOut(Model):
    status: str
    message: str


class LastUpdateOut(Model):
    iso: str
    datetime: datetime


class RateOut(Model):
    from_currency: int
    to_currency: int
    rate: Money
    updated_at: datetime


class CommissionOut(Model):
    service_user_id: uuid.UUID
    currency_id: int
    deposit_rate: Money
    withdraw_rate: Money


class ErrorOut(Model):
    status: int
    message: str
    request_id: str | None = None
    errors: list[dict] | None = Field(default=None, description="Per-field problems: loc, msg")
