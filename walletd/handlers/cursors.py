"""Opaque page cursors that cannot be forged: a statement's cursor carries where the next page
starts and the running balance there, so the next page costs only its own lines. The payload is
signed (HMAC-SHA256 under a key derived from the JWT secret) and names what it pages through; a
cursor edited, made up, or handed to another wallet or period is refused like a malformed one
(422, `type` cursor_invalid, as the history endpoints answer)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson

from walletd.handlers.errors import ValidationFailed

_MAC_BYTES = 16


class CursorSigner:
    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), b"walletd page cursor", hashlib.sha256).digest()

    def encode(self, scope: str, values: list) -> str:
        payload = orjson.dumps([scope, *values], default=str)
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode()

    def decode(self, scope: str, cursor: str) -> list:
        """The values encode() was given for this scope; anything else is refused."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise invalid_cursor() from None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, expected):
            raise invalid_cursor()
        values = orjson.loads(payload)
        if not isinstance(values, list) or not values or values[0] != scope:
            raise invalid_cursor()
        return values[1:]


def invalid_cursor() -> ValidationFailed:
    return ValidationFailed("invalid parameters: cursor", errors=[
        {"loc": "cursor", "msg": "not a cursor walletd issued for this request", "type": "cursor_invalid"}])
