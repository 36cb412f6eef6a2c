"""HTTP authentication: the token headers (`Authorization: Bearer`, the original's `token`) and
HTTP Basic, turned into a verified principal or a domain error that says what was wrong."""

from __future__ import annotations

import base64
import binascii
import functools

from aiohttp import web

from walletd.auth.tokens import Principal, TokenError, TokenExpiredError, TokenIssuer
from walletd.domain import errors
from walletd.persistence import accounts
from walletd.persistence.db import FairPool


def _token_of(value: str) -> str:
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


def bearer_token(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer …` and/or the `token` header. Two credentials that
    disagree, or an Authorization header of another scheme, are refused (TokenInvalid) rather
    than one of them picked: a proxy or log reading the other must not see a different caller."""
    headers = request.headers
    authorization, token_header = headers.get("Authorization"), headers.get("token")
    found = []
    if authorization is not None:
        if authorization[:7].lower() != "bearer " or not authorization[7:].strip():
            raise errors.TokenInvalid("Invalid token: the Authorization header is not `Bearer <token>`")
        found.append(authorization[7:].strip())
    if token_header is not None:
        if not _token_of(token_header):
            raise errors.TokenInvalid("Invalid token: the token header is empty")
        found.append(_token_of(token_header))
    if len(headers.getall("Authorization", ())) > 1 or len(headers.getall("token", ())) > 1 or len(set(found)) > 1:
        raise errors.TokenInvalid("Invalid token: the token and Authorization headers disagree")
    return found[0] if found else None


async def authenticate(request: web.Request, roles: str | tuple[str, ...], tokens: TokenIssuer,
                       pool: FairPool) -> Principal:
    """The token's principal, if its role is one of `roles` (both, on the routes a user and a
    payment service each use for their own wallets)."""
    roles = (roles,) if isinstance(roles, str) else roles
    token = bearer_token(request)
    if not token:
        raise errors.TokenMissing()
    try:
        principal = await tokens.verify_live(token, functools.partial(_role_of, pool))
    except TokenExpiredError:
        raise errors.TokenExpired() from None
    except TokenError:
        raise errors.TokenInvalid() from None
    if principal.role not in roles:
        raise errors.WrongRole(" or ".join(roles))
    return principal


async def _role_of(pool, user_id) -> str | None:
    user = await accounts.get_user(pool, user_id)
    return user["role"] if user is not None else None


def basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() != "basic ":
        raise errors.TokenMissing("Not authenticated: send HTTP Basic credentials")
    try:
        username, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.InvalidCredentials() from None
    if "\x00" in username or "\x00" in password:  # unstorable, so never a valid credential
        raise errors.InvalidCredentials()
    return username, password
