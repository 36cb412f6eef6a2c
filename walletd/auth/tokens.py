"""HS256 JWTs carrying the principal's id (`sub`), role, `iat` and `exp`."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ROLES = ("user", "service")


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    role: str


class TokenError(Exception):
    pass


@dataclass(frozen=True)
class TokenIssuer:
    secret: str
    ttl_seconds: int

    def issue(self, user_id: uuid.UUID, role: str) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "role": role, "iat": now, "exp": now + self.ttl_seconds}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            # algorithms pinned to HS256: "alg: none" and algorithm-confusion tokens fail here.
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"],
                options={"require": ["sub", "role", "iat", "exp"]},
            )
            role = claims["role"]
            if role not in ROLES:
                raise TokenError("unknown role")
            return Principal(uuid.UUID(claims["sub"]), role)
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            raise TokenError(str(exc)) from None
