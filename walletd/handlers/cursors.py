"""A statement's page cursor: it carries the period, both end balances, where the next page
starts and the running balance there, so the next page costs only its own lines. Sealed as the
history cursors are (AES-SIV under a key derived from WALLETD_SECRETS_KEY, walletd/keys.py) and
bound to the wallet it pages: unreadable, unforgeable, refused anywhere else like a malformed one
(422, `type` cursor_invalid, as the history endpoints answer)."""

from __future__ import annotations

import uuid

import orjson

from walletd.handlers.errors import ValidationFailed
from walletd.keys import ServerKeys

LONGEST = 1024  # characters: a statement cursor is about 300


def seal(keys: ServerKeys, wallet_id: uuid.UUID, values: list) -> str:
    return keys.seal_bytes(_scope(wallet_id), orjson.dumps(values, default=str))


def open_sealed(keys: ServerKeys, wallet_id: uuid.UUID, cursor: str) -> list:
    """The values seal() was given for this wallet's statement; anything else is refused."""
    payload = keys.open_bytes(_scope(wallet_id), cursor, LONGEST)
    if payload is None:
        raise invalid_cursor()
    return orjson.loads(payload)


def _scope(wallet_id: uuid.UUID) -> bytes:
    return b"statement:" + wallet_id.bytes


def invalid_cursor(msg: str = "not a cursor walletd issued for this statement") -> ValidationFailed:
    return ValidationFailed("invalid parameters: cursor", errors=[{"loc": "cursor", "msg": msg,
                                                                   "type": "cursor_invalid"}])
