"""HS256 JWTs carrying the principal's id (`sub`), role, `iat` and `exp`.

Tokens are signed with the current secret. During a rotation the previous secret
(WALLETD_JWT_SECRET_PREVIOUS) still verifies the tokens it signed, until they expire: no client
is logged out at the switch, and after one token lifetime the previous secret can go.
"""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import jwt

ROLES = ("user", "service")


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str

    # Cached: a principal lives in the token cache and is named in every request's log line.
    @functools.cached_property
    def subject(self) -> str:
        return str(self.user_id)


class TokenError(Exception):
    pass


class TokenExpiredError(TokenError):
    """A token walletd issued whose `exp` has passed (told apart so the client knows to log in again)."""


@dataclass(frozen=True)
class TokenIssuer:
    secret: str
    ttl_seconds: int
    previous_secret: str | None = None
    # Verified tokens, so a client's every request does not pay for HMAC and JSON parsing again;
    # each hit still checks expiry. Bounded: cleared whole when full. An entry is (principal,
    # expiry, whether its user was found to exist by verify_live).
    _verified: dict = field(default_factory=dict, compare=False, repr=False)
    cache_limit: int = 10_000

    def issue(self, user_id: uuid.UUID, role: str) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "role": role, "iat": now, "exp": now + self.ttl_seconds}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires, _ = cached
            if time.time() < expires:
                return principal
            del self._verified[token]  # the decode below raises TokenExpiredError
        principal, expires = self._decode(token)
        if len(self._verified) >= self.cache_limit:
            self._verified.clear()
        self._verified[token] = (principal, expires, False)
        return principal

    async def verify_live(self, token: str, role_of: Callable[[uuid.UUID], Awaitable[str | None]]) -> Principal:
        """verify(), and the token's user must still exist with the token's role (deleted users, or a
        token signed for another database with the same secret, are refused). role_of is asked once
        per token; the answer is remembered with the verified token."""
        cached = self._verified.get(token)
        if cached is not None and cached[2] and time.time() < cached[1]:
            return cached[0]
        principal = self.verify(token)
        if await role_of(principal.user_id) != principal.role:
            self._verified.pop(token, None)
            raise TokenError("the token's user does not exist")
        entry = self._verified.get(token)
        if entry is not None:
            self._verified[token] = (entry[0], entry[1], True)
        return principal

    def forget(self) -> None:
        self._verified.clear()

    def _claims(self, token: str) -> dict:
        # algorithms pinned to HS256: "alg: none" and algorithm-confusion tokens fail here.
        options: jwt.types.Options = {"require": ["sub", "role", "iat", "exp"]}
        try:
            return jwt.decode(token, self.secret, algorithms=["HS256"], options=options)
        except jwt.InvalidSignatureError:
            if self.previous_secret is None:
                raise
            return jwt.decode(token, self.previous_secret, algorithms=["HS256"], options=options)

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = self._claims(token)
            role = claims["role"]
            if role not in ROLES:
                raise TokenError("unknown role")
            return Principal(uuid.UUID(claims["sub"]), role), float(claims["exp"])
        except jwt.ExpiredSignatureError:
            raise TokenExpiredError("expired") from None
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            raise TokenError(str(exc)) from None
