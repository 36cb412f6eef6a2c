"""HTTP authentication: the token headers (`Authorization: Bearer`, the original's `token`) and
HTTP Basic, turned into a verified principal or a domain error that says what was wrong."""

from __future__ import annotations

import base64
import binascii
import functools

from aiohttp import web

from walletd.appkeys import pool_key, principal_key, tokens_key
from walletd.auth.tokens import Principal, TokenError, TokenExpiredError
from walletd.domain import errors
from walletd.persistence import accounts


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    token = request.headers.get("token")
    if token:
        return token[7:].strip() if token[:7].lower() == "bearer " else token.strip()
    return None


async def authenticate(request: web.Request, roles: str | tuple[str, ...]) -> Principal:
    """The token's principal, if its role is one of `roles` (both, on the routes a user and a
    payment service each use for their own wallets)."""
    roles = (roles,) if isinstance(roles, str) else roles
    token = bearer_token(request)
    if not token:
        raise errors.TokenMissing()
    try:
        principal = await request.app[tokens_key].verify_live(token, functools.partial(_role_of, request.app[pool_key]))
    except TokenExpiredError:
        raise errors.TokenExpired() from None
    except TokenError:
        raise errors.TokenInvalid() from None
    if principal.role not in roles:
        raise errors.WrongRole(" or ".join(roles))
    request[principal_key] = principal.subject
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
