"""Registration, login and tokens for users and service users."""

from __future__ import annotations

from aiohttp import web

from walletd.appkeys import (
    breaker_key,
    keys_key,
    passwords_key,
    pool_key,
    principal_key,
    request_id_key,
    settings_key,
    throttle_key,
    tokens_key,
)
from walletd.auth.operator import OperatorPrincipal
from walletd.auth.passwords import PasswordPool
from walletd.auth.throttle import LoginThrottle, TooManyAttempts
from walletd.auth.tokens import Principal
from walletd.config import Settings
from walletd.domain.errors import DuplicateAccount, InvalidCredentials, OutcomeUnknown, Overloaded
from walletd.handlers.endpoint import Routes
from walletd.handlers.schemas import LoginParams, RegisterParams, ServiceTokenOut, TokenOut, UserOut
from walletd.logs import get_logger
from walletd.persistence import accounts

routes = Routes()
log = get_logger("walletd.auth")
_HASH_BUSY = (Overloaded, "too many logins in progress, retry later")  # the password-hash pool is full
_REGISTRATION_UNKNOWN = (OutcomeUnknown, accounts.REGISTRATION_UNKNOWN)  # its COMMIT was cut off


async def _register(request: web.Request, params: RegisterParams, role: str):
    settings = request.app[settings_key]
    password_hash = await request.app[passwords_key].hash(params.password, request.remote or "unknown")
    try:
        user_id, bonus_entry = await accounts.create_user(
            request.app[pool_key], username=params.username, email=params.email, password_hash=password_hash,
            role=role, signup_bonus=settings.signup_bonus,
            request_id=request.get(request_id_key), in_doubt_seconds=settings.in_doubt_seconds,
            breaker=request.app[breaker_key])
    except Exception as exc:
        log.info("auth.register_failed", username=params.username, role=role, reason=type(exc).__name__)
        raise
    log.info("auth.registered", user_id=str(user_id), username=params.username, role=role,
             principal=request.get(principal_key))  # "operator" for a service user it registered
    if bonus_entry is not None:
        log.info("money.signup_bonus", entry_id=str(bonus_entry), user_id=str(user_id),
                 amount=f"{settings.signup_bonus:f}", request_id=request.get(request_id_key))
    if principal_key not in request:  # registered by the operator: the request's principal stays "operator"
        request[principal_key] = str(user_id)
    return user_id, request.app[tokens_key].issue(user_id, role)


@routes("POST", "/auth/register", summary="Register a user; a wallet in every currency is created",
        params=RegisterParams, response=TokenOut, tags=["auth"], auth="anonymous",
        errors=[DuplicateAccount, _HASH_BUSY, _REGISTRATION_UNKNOWN])
async def register(request: web.Request, params: RegisterParams):
    _, token = await _register(request, params, "user")
    return TokenOut(access_token=token)


@routes("POST", "/auth/register_service", summary="Register a service user (payment service); operator only",
        params=RegisterParams, response=ServiceTokenOut, tags=["service"], auth="operator",
        open_when="open_service_registration",
        description="Requires header X-Operator-Key equal to WALLETD_OPERATOR_KEY. With "
                    "WALLETD_OPEN_SERVICE_REGISTRATION=1 (development only) anyone may register; with neither "
                    "registration is refused.",
        errors=[DuplicateAccount, _HASH_BUSY, _REGISTRATION_UNKNOWN])
async def register_service(request: web.Request, principal: OperatorPrincipal | None, params: RegisterParams):
    user_id, token = await _register(request, params, "service")
    return ServiceTokenOut(access_token=token, user_id=user_id)


def setup(app: web.Application, settings: Settings) -> None:
    """The password-hash pool and the login throttle, one each per app."""
    app[passwords_key] = PasswordPool(settings.hash_threads, settings.hash_queue, settings.hash_queue_per_address)
    app[throttle_key] = LoginThrottle(settings.login_max_failures, settings.login_max_failures_per_address,
                                      settings.login_window_seconds, app[keys_key].pseudonym)

    async def close_pool(app: web.Application) -> None:
        app[passwords_key].close()

    app.on_cleanup.append(close_pool)


async def _login(request: web.Request, username: str, password: str, role: str):
    """Every password check goes through here: throttled, and timed alike for unknown users."""
    pool, throttle = request.app[pool_key], request.app[throttle_key]
    address = request.remote or "unknown"
    try:
        had_failures = await throttle.check(pool, username, address)
    except web.HTTPTooManyRequests:
        log.info("auth.login_throttled", username_hmac=throttle.pseudonym(username), role=role, client=address)
        raise
    user = await accounts.find_user(pool, username)
    ok = await request.app[passwords_key].verify(user["password_hash"] if user else None, password, address)
    if not ok or user is None or user["role"] != role:
        await throttle.failed(pool, username, address)
        # Never the typed name (people type passwords into it): the user id, or its keyed pseudonym.
        who = {"user_id": str(user["id"])} if user else {"username_hmac": throttle.pseudonym(username)}
        log.info("auth.login_failed", role=role, client=address, **who)
        raise InvalidCredentials()
    if had_failures:
        await throttle.succeeded(pool, username)
    log.info("auth.login", user_id=str(user["id"]), role=role)
    request[principal_key] = str(user["id"])
    return user["id"], request.app[tokens_key].issue(user["id"], role)


@routes("POST", "/auth/login", summary="Log in; returns a JWT", params=LoginParams, response=TokenOut,
        tags=["auth"], auth="anonymous", errors=[InvalidCredentials, TooManyAttempts, _HASH_BUSY])
async def login(request: web.Request, params: LoginParams):
    _, token = await _login(request, params.username, params.password, "user")
    return TokenOut(access_token=token)


@routes("GET", "/user/get/token", summary="A JWT for HTTP Basic credentials", auth="basic", response=TokenOut,
        tags=["auth"], errors=[InvalidCredentials, TooManyAttempts, _HASH_BUSY])
async def token_for_basic(request: web.Request, credentials: tuple[str, str]):
    _, token = await _login(request, *credentials, "user")
    return TokenOut(access_token=token)


@routes("GET", "/service/auth/login", summary="Log a service user in", params=LoginParams, auth="anonymous",
        response=ServiceTokenOut, tags=["service"], errors=[InvalidCredentials, TooManyAttempts, _HASH_BUSY])
async def service_login(request: web.Request, params: LoginParams):
    user_id, token = await _login(request, params.username, params.password, "service")
    return ServiceTokenOut(access_token=token, user_id=user_id)


@routes("GET", "/user/get/id", summary="The caller's id and profile", auth="user", response=UserOut, tags=["user"])
async def user_id(request: web.Request, principal: Principal):
    user = await accounts.get_user(request.app[pool_key], principal.user_id)
    if user is None:  # a valid token for a user that no longer exists
        raise web.HTTPUnauthorized(reason="Invalid token")
    return UserOut(**dict(user))
