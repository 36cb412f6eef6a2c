"""Webhook signatures: `Walletd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw
body>")>`, one more `v1=` per previous secret during a rotation's overlap. `verify` is what a
receiver does (docs/payment-service.md's receiver is this function)."""

from __future__ import annotations

import hashlib
import hmac
import time


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int, *previous: str) -> str:
    """`t=<timestamp>,v1=<hex>`, and one more `v1=` per previous secret (a rotation's overlap)."""
    return ",".join([f"t={timestamp}", *(f"v1={_digest(s, body, timestamp)}" for s in (secret, *previous))])


def verify(secret: str, body: bytes, header: str, tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does (docs/payment-service.md's receiver is this function): any `v1=` made with its
    secret over this body, at a recent timestamp."""
    try:
        items = [item.split("=", 1) for item in header.split(",")]
        timestamp = int(next(value for key, value in items if key == "t"))
        signatures = [value for key, value in items if key == "v1"]
    except (ValueError, StopIteration):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _digest(secret, body, timestamp)
    return any(hmac.compare_digest(expected, signature) for signature in signatures)
