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
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from walletd.domain.errors import InvalidAmount
from walletd.domain.money import MAX_AMOUNT, fmt, parse_amount


def _amount(raw: object) -> Decimal:
    try:
        return parse_amount(raw)
    except InvalidAmount as exc:
        # A typed error (endpoint.validate answers it with code invalid_amount), the reason in ctx.
        raise PydanticCustomError(InvalidAmount.code, "Invalid amount: {reason}", {"reason": exc.reason}) from None


_AMOUNT_DOC = (
    f"Decimal string or number, rounded half-even to 10 places; > 0 and <= {MAX_AMOUNT:f}."
)
Amount = Annotated[
    Decimal,
    BeforeValidator(_amount),
    WithJsonSchema({"type": "string", "examples": ["10.50"], "description": _AMOUNT_DOC}),
]
Money = Annotated[
    Decimal,
    PlainSerializer(fmt, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["10.5000000000"], "pattern": r"^-?\d+\.\d{10}$"}),
]
CurrencyId = Annotated[int, Field(ge=1, le=32767, description="Currency id (1, 2, 3 on a fresh install)",
                                  examples=[1])]
TargetCurrencyId = Annotated[int, Field(ge=1, le=32767, description="Currency id (1, 2, 3 on a fresh install)",
                                        examples=[2])]

_USERNAME = re.compile(r"^[A-Za-z0-9_]{3,64}$")
_SPECIAL = re.compile(r"[^A-Za-z0-9]")


# The rules of _password, for the OpenAPI document (an ECMA-262 pattern: lookaheads are fine there;
# the server checks with _password, which names each missing rule).
_PASSWORD_SCHEMA = {
    "minLength": 8, "pattern": r"^(?=.*[0-9])(?=.*[A-Z])(?=.*[^A-Za-z0-9]).*$", "examples": ["Secr3t-pass"],
    "description": "At least 8 characters, with a digit, an upper-case letter and a character that is not a letter "
                   "or digit.",
}
_USERNAME_SCHEMA = {"pattern": _USERNAME.pattern, "minLength": 3, "maxLength": 64, "examples": ["alice_01"],
                    "description": "3-64 characters of A-Z, a-z, 0-9 and _ (case-sensitive)."}


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
    username: Annotated[str, AfterValidator(_username), Field(json_schema_extra=_USERNAME_SCHEMA)]
    email: Annotated[EmailStr, Field(examples=["alice@example.com"])]
    password: Annotated[str, Field(max_length=256, json_schema_extra=_PASSWORD_SCHEMA), AfterValidator(_password)]


class LoginParams(Params):
    username: Annotated[str, Field(min_length=1, max_length=64, examples=["alice_01"])]
    password: Annotated[str, Field(min_length=1, max_length=256, examples=["Secr3t-pass"])]


class WalletIdParams(Params):
    wallet_id: uuid.UUID


class HistoryParams(Params):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str | None, Field(max_length=64, description="next_cursor of the previous page")] = None


class WalletHistoryParams(HistoryParams):
    wallet_id: uuid.UUID


class ExternalWalletParams(Params):
    wallet_name: Annotated[str, Field(min_length=1, max_length=100, examples=["card"])]
    currency_id: CurrencyId


ServiceUserId = Annotated[uuid.UUID, Field(description="The payment service's user_id (from register_service)",
                                          examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e0a"])]
OwnWalletId = Annotated[uuid.UUID, Field(description="One of the caller's wallets (GET /user/wallets)",
                                        examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e01"])]


class DepositParams(Params):
    service_user_id: ServiceUserId
    wallet_id: OwnWalletId
    amount: Amount


class WithdrawParams(Params):
    service_user_id: ServiceUserId
    from_wallet_id: OwnWalletId
    amount: Amount


class TransferParams(Params):
    source_wallet_id: OwnWalletId
    target_wallet_id: Annotated[uuid.UUID, Field(description="Any user's wallet; not the source",
                                                 examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e02"])]
    amount: Amount


class ExchangeParams(Params):
    from_currency: CurrencyId
    to_currency: TargetCurrencyId
    amount: Amount


class SettleParams(Params):
    transaction_id: Annotated[uuid.UUID, Field(description="The pending deposit's or withdrawal's id",
                                               examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e10"])]
    new_status: Literal["paid", "rejected", "reject"]


class ReverseParams(Params):
    transaction_id: Annotated[uuid.UUID, Field(description="The completed transfer's or paid deposit's id",
                                               examples=["0193a6f0-5b1e-7c2d-9e3f-4a5b6c7d8e10"])]


class ConversionParams(Params):
    from_currency: Annotated[str, Field(min_length=2, max_length=10, description="Currency code", examples=["USD"])]
    to_currency: Annotated[str, Field(min_length=2, max_length=10, description="Currency code", examples=["EUR"])]
    amount: Amount


_FORCE = Field(False, description="The operator confirms a rate further than WALLETD_RATE_MAX_CHANGE from the "
                                  "stored one (it never lifts the round-trip rule)")


class SetRateParams(Params):
    from_currency: CurrencyId
    to_currency: TargetCurrencyId
    rate: Amount
    force: bool = _FORCE


class UpdateRatesParams(Params):
    force: bool = _FORCE


class StaleParams(Params):
    after: uuid.UUID | None = Field(None, description="A transaction id (the last one seen): the page starts after it")
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class CommissionParams(Params):
    currency_id: CurrencyId
    deposit_rate: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=10, examples=["0.01"])]
    withdraw_rate: Annotated[Decimal, Field(ge=0, lt=1, decimal_places=10, examples=["0.02"])]


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
    # Field order = domain.records.tx_json's key order: the order of every record on the wire,
    # first response and idempotent replay alike (endpoint.render).
    id: uuid.UUID
    type: Literal["deposit", "withdraw", "transfer", "commission", "bonus", "reversal"]
    status: Literal["pending", "paid", "rejected", "close", "expired"]
    from_wallet_id: uuid.UUID | None
    from_currency_id: int | None
    amount: Money
    to_wallet_id: uuid.UUID | None
    to_currency_id: int | None
    rate: Money
    converted_amount: Money
    timestamp: datetime
    user_id: uuid.UUID
    service_user_id: uuid.UUID | None = None
    parent_id: uuid.UUID | None = None
    commission_rate: Money | None = Field(default=None, description="Deposits and withdrawals: the payment "
                                          "service's rate, fixed when the customer asked")
    commission: Money | None = Field(default=None, description="Deposits and withdrawals: the commission their "
                                     "settlement charges (amount × commission_rate, rounded half to even)")


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
    status: int = Field(description="The HTTP status, repeated")
    code: str = Field(description="Stable snake_case error code: what clients should match on")
    message: str = Field(description="For people; the original service's text where it had one")
    request_id: str | None = None
    errors: list[dict] | None = Field(default=None, description="Per-field problems: loc, msg")
