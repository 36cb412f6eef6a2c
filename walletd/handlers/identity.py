"""Registration, login and tokens for users and service users."""

from __future__ import annotations

import hmac

from aiohttp import web

from walletd.appkeys import pool_key, principal_key, request_id_key, settings_key, tokens_key
from walletd.auth.passwords import hash_password, verify_password
from walletd.auth.tokens import Principal
from walletd.domain.errors import DuplicateAccount, InvalidCredentials, TooManyAttempts
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import OperatorKeyRequired
from walletd.handlers.schemas import LoginParams, RegisterParams, ServiceTokenOut, TokenOut, UserOut
from walletd.logs import get_logger
from walletd.persistence import accounts

routes = Routes()
log = get_logger("walletd.auth")
_OPERATOR_HEADER = {"name": "X-Operator-Key", "in": "header", "required": True, "schema": {"type": "string"},
                    "description": "The operator credential (env WALLETD_OPERATOR_KEY)."}


async def _register(request: web.Request, params: RegisterParams, role: str):
    settings = request.app[settings_key]
    password_hash = await hash_password(params.password)
    try:
        user_id, bonus_entry = await accounts.create_user(
            request.app[pool_key], username=params.username, email=params.email, password_hash=password_hash,
            role=role, signup_bonus=settings.signup_bonus if role == "user" else 0,
            request_id=request.get(request_id_key))
    except Exception as exc:
        log.info("auth.register_failed", username=params.username, role=role, reason=type(exc).__name__)
        raise
    log.info("auth.registered", user_id=str(user_id), username=params.username, role=role)
    if bonus_entry is not None:
        log.info("money.signup_bonus", entry_id=str(bonus_entry), user_id=str(user_id),
                 amount=f"{settings.signup_bonus:f}", request_id=request.get(request_id_key))
    request[principal_key] = str(user_id)
    return user_id, request.app[tokens_key].issue(user_id, role)


@routes("POST", "/auth/register", summary="Register a user; a wallet in every currency is created",
        params=RegisterParams, response=TokenOut, tags=["auth"],
        errors=[DuplicateAccount])
async def register(request: web.Request, params: RegisterParams):
    _, token = await _register(request, params, "user")
    return TokenOut(access_token=token)


@routes("POST", "/auth/register_service", summary="Register a service user (payment service); operator only",
        params=RegisterParams, response=ServiceTokenOut, tags=["service"], extra_headers=[_OPERATOR_HEADER],
        description="Requires header X-Operator-Key equal to WALLETD_OPERATOR_KEY. With no key configured "
                    "registration is refused unless WALLETD_OPEN_SERVICE_REGISTRATION=1 (development only).",
        errors=[OperatorKeyRequired, DuplicateAccount])
async def register_service(request: web.Request, params: RegisterParams):
    settings = request.app[settings_key]
    given = request.headers.get("X-Operator-Key", "")
    if settings.operator_key:
        allowed = hmac.compare_digest(given.encode(), settings.operator_key.encode())
    else:
        allowed = settings.open_service_registration
    if not allowed:
        log.warning("auth.register_service_refused", username=params.username,
                    configured=bool(settings.operator_key))
        message = ("operator credential required (X-Operator-Key)" if settings.operator_key else
                   "service registration is closed: set WALLETD_OPERATOR_KEY and send it as X-Operator-Key")
        raise OperatorKeyRequired(message)
    user_id, token = await _register(request, params, "service")
    return ServiceTokenOut(access_token=token, user_id=user_id)


async def _login(request: web.Request, username: str, password: str, role: str):
    user = await accounts.find_user(request.app[pool_key], username)
    ok = await verify_password(user["password_hash"] if user else None, password)
    if not ok or user["role"] != role:
        log.info("auth.login_failed", username=username, role=role)
        raise InvalidCredentials()
    log.info("auth.login", user_id=str(user["id"]), role=role)
    request[principal_key] = str(user["id"])
    return user["id"], request.app[tokens_key].issue(user["id"], role)


@routes("POST", "/auth/login", summary="Log in; returns a JWT", params=LoginParams, response=TokenOut,
        tags=["auth"], errors=[InvalidCredentials, TooManyAttempts])
async def login(request: web.Request, params: LoginParams):
    _, token = await _login(request, params.username, params.password, "user")
    return TokenOut(access_token=token)


@routes("GET", "/user/get/token", summary="A JWT for HTTP Basic credentials", auth="basic", response=TokenOut,
        tags=["auth"], errors=[InvalidCredentials, TooManyAttempts])
async def token_for_basic(request: web.Request, credentials: tuple[str, str]):
    _, token = await _login(request, *credentials, "user")
    return TokenOut(access_token=token)


@routes("GET", "/service/auth/login", summary="Log a service user in", params=LoginParams,
        response=ServiceTokenOut, tags=["service"], errors=[InvalidCredentials, TooManyAttempts])
async def service_login(request: web.Request, params: LoginParams):
    user_id, token = await _login(request, params.username, params.password, "service")
    return ServiceTokenOut(access_token=token, user_id=user_id)


@routes("GET", "/user/get/id", summary="The caller's id and profile", auth="user", response=UserOut, tags=["user"])
async def user_id(request: web.Request, principal: Principal):
    user = await accounts.get_user(request.app[pool_key], principal.user_id)
    if user is None:  # a valid token for a user that no longer exists
        raise web.HTTPUnauthorized(reason="Invalid token")
    return UserOut(**dict(user))
