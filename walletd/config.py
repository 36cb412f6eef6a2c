"""Settings, read from the environment once by the composition root (never at import time)."""

from __future__ import annotations

import binascii
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from cryptography.fernet import Fernet


class ConfigError(Exception):
    """The environment does not describe a runnable walletd."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    read_database_url: str | None = None  # history pages only; see docs/ha.md
    data_dir: Path = Path(".walletd")
    jwt_secret: str | None = None
    jwt_secret_previous: str | None = None  # still verifies tokens during a rotation (docs/security.md)
    secrets_key: str | None = None  # encrypts webhook secrets at rest (walletd/keys.py)
    token_ttl_seconds: int = 3600
    operator_key: str | None = None
    # Still accepted beside operator_key while a rotation is under way (docs/authority.md).
    operator_key_previous: str | None = None
    open_service_registration: bool = False
    signup_bonus: Decimal = Decimal(0)
    rates_url: str | None = None
    rates_max_age_seconds: int = 86400
    # A rate write further than this fraction from the stored rate needs force=true.
    rate_max_change: Decimal = Decimal("0.2")
    # The highest commission rate a payment service may set, or have a request fixed at.
    max_commission_rate: Decimal = Decimal("0.10")
    seed_file: Path | None = None
    max_body_bytes: int = 64 * 1024
    mailbox_size: int = 256
    actor_idle_seconds: float = 30.0
    max_batch: int = 256
    max_batch_legs: int = 1000  # legs of one POST /wallet/transfers
    committers: int = 2
    pool_size: int = 8
    in_doubt_seconds: float = 30.0
    db_acquire_timeout: float = 5.0
    db_connect_timeout: float = 5.0
    log_level: str = "info"
    idempotency_retention_seconds: int = 86400
    # events to the payment service: the stale sweep, webhook delivery and secrets (walletd/jobs/, walletd/webhooks/)
    pending_ttl_seconds: float = 604800.0
    webhook_horizon_seconds: float = 259200.0
    webhook_backoff_seconds: float = 2.0
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency: int = 16
    webhook_allow_hosts: tuple[str, ...] = ()  # names or CIDRs a webhook may reach although internal
    webhook_rotation_overlap_seconds: float = 86400.0
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    # Login throttling, the password-hash pool and slow clients (docs/configuration.md).
    login_max_failures: int = 10
    login_max_failures_per_address: int = 100
    login_window_seconds: int = 900
    hash_threads: int = 2
    hash_queue: int = 8
    hash_queue_per_address: int = 2
    header_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 15.0
    max_connections: int = 512
    # The journal's hash chain and the self-audit (walletd/jobs/, docs/journal-integrity.md).
    seal_interval_seconds: float = 1.0
    head_log_interval_seconds: float = 300.0
    audit_interval_seconds: float = 10.0
    audit_full_interval_seconds: float = 3600.0
    audit_max_wait_seconds: float = 10.0

    @property
    def rates_max_age(self) -> timedelta:
        return timedelta(seconds=self.rates_max_age_seconds)

    @property
    def operator_keys(self) -> tuple[str, ...]:
        """Every operator key accepted now: the current one, and the previous one during a rotation."""
        return tuple(key for key in (self.operator_key, self.operator_key_previous) if key)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        """Every value is checked here, at start: a nonsense value exits with a message naming
        the variable instead of hanging or refusing every request later."""
        env = dict(os.environ if env is None else env)
        read = _Reader(env)
        max_age = read.integer("WALLETD_RATES_MAX_AGE", 86400, minimum=1)
        level = env.get("WALLETD_LOG_LEVEL", "info").strip().lower()
        if level not in LOG_LEVELS:
            raise ConfigError(f"WALLETD_LOG_LEVEL={level!r}: expected one of {', '.join(LOG_LEVELS)}")
        bonus = read.decimal("WALLETD_SIGNUP_BONUS", "0")
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            read_database_url=env.get("WALLETD_READ_DATABASE_URL") or None,
            data_dir=Path(env.get("WALLETD_DATA_DIR", ".walletd")),
            jwt_secret=read.secret("WALLETD_JWT_SECRET"),
            jwt_secret_previous=read.secret("WALLETD_JWT_SECRET_PREVIOUS"),
            secrets_key=env.get("WALLETD_SECRETS_KEY", "").strip() or None,
            token_ttl_seconds=read.integer("WALLETD_TOKEN_TTL", 3600, minimum=1),
            operator_key=read.operator_key("WALLETD_OPERATOR_KEY"),
            operator_key_previous=read.operator_key("WALLETD_OPERATOR_KEY_PREVIOUS"),
            open_service_registration=_flag(env.get("WALLETD_OPEN_SERVICE_REGISTRATION")),
            signup_bonus=bonus,
            rates_url=env.get("WALLETD_RATES_URL") or None,
            rates_max_age_seconds=max_age,
            rate_max_change=read.fraction("WALLETD_RATE_MAX_CHANGE", "0.2", above_zero=True),
            max_commission_rate=read.fraction("WALLETD_MAX_COMMISSION_RATE", "0.10", above_zero=False),
            seed_file=Path(env["WALLETD_SEED_FILE"]) if env.get("WALLETD_SEED_FILE") else None,
            max_body_bytes=read.integer("WALLETD_MAX_BODY_BYTES", 64 * 1024, minimum=1024),
            mailbox_size=read.integer("WALLETD_MAILBOX_SIZE", 256, minimum=1),
            actor_idle_seconds=read.number("WALLETD_ACTOR_IDLE_SECONDS", 30.0, minimum=0.1),
            max_batch=read.integer("WALLETD_MAX_BATCH", 256, minimum=1),
            max_batch_legs=read.integer("WALLETD_MAX_BATCH_LEGS", 1000, minimum=1),
            committers=read.integer("WALLETD_COMMITTERS", 2, minimum=1),
            pool_size=read.integer("WALLETD_POOL_SIZE", 8, minimum=2),
            in_doubt_seconds=read.number("WALLETD_IN_DOUBT_SECONDS", 30.0, minimum=0.5),
            db_acquire_timeout=read.number("WALLETD_DB_ACQUIRE_TIMEOUT", 5.0, minimum=0.1),
            db_connect_timeout=read.number("WALLETD_DB_CONNECT_TIMEOUT", 5.0, minimum=0.1),
            log_level=level,
            idempotency_retention_seconds=read.integer("WALLETD_IDEMPOTENCY_RETENTION", 86400, minimum=1),
            pending_ttl_seconds=read.number("WALLETD_PENDING_TTL", 604800.0, minimum=0.1),
            webhook_horizon_seconds=read.number("WALLETD_WEBHOOK_HORIZON", 259200.0, minimum=1.0),
            webhook_backoff_seconds=read.number("WALLETD_WEBHOOK_BACKOFF", 2.0, minimum=0.01),
            webhook_timeout_seconds=read.number("WALLETD_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            webhook_concurrency=read.integer("WALLETD_WEBHOOK_CONCURRENCY", 16, minimum=1),
            webhook_allow_hosts=read.hosts_or_networks("WALLETD_WEBHOOK_ALLOW_HOSTS"),
            webhook_rotation_overlap_seconds=read.number("WALLETD_WEBHOOK_ROTATION_OVERLAP", 86400.0, minimum=0.0),
            trusted_proxies=read.networks("WALLETD_TRUSTED_PROXIES"),
            login_max_failures=read.integer("WALLETD_LOGIN_MAX_FAILURES", 10, minimum=1),
            login_max_failures_per_address=read.integer("WALLETD_LOGIN_MAX_FAILURES_PER_ADDRESS", 100, minimum=1),
            login_window_seconds=read.integer("WALLETD_LOGIN_WINDOW_SECONDS", 900, minimum=1),
            hash_threads=read.integer("WALLETD_HASH_THREADS", 2, minimum=1),
            hash_queue=read.integer("WALLETD_HASH_QUEUE", 8, minimum=1),
            hash_queue_per_address=read.integer("WALLETD_HASH_QUEUE_PER_ADDRESS", 2, minimum=1),
            header_timeout_seconds=read.number("WALLETD_HEADER_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            body_timeout_seconds=read.number("WALLETD_BODY_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            max_connections=read.integer("WALLETD_MAX_CONNECTIONS", 512, minimum=1),
            seal_interval_seconds=read.number("WALLETD_SEAL_INTERVAL_SECONDS", 1.0, minimum=0.05),
            head_log_interval_seconds=read.number("WALLETD_HEAD_LOG_INTERVAL_SECONDS", 300.0, minimum=1.0),
            audit_interval_seconds=read.number("WALLETD_AUDIT_INTERVAL_SECONDS", 10.0, minimum=0.1),
            audit_full_interval_seconds=read.number("WALLETD_AUDIT_FULL_INTERVAL_SECONDS", 3600.0, minimum=1.0),
            audit_max_wait_seconds=read.number("WALLETD_AUDIT_MAX_WAIT_SECONDS", 10.0, minimum=0.0),
        )
        if settings.operator_key_previous and not settings.operator_key:
            raise ConfigError("WALLETD_OPERATOR_KEY_PREVIOUS is set but WALLETD_OPERATOR_KEY is not: a rotation "
                              "needs the new key too")
        if bonus < 0:
            raise ConfigError(f"WALLETD_SIGNUP_BONUS={bonus}: must not be negative")
        if settings.secrets_key is not None:
            secrets_keys(settings.secrets_key)  # a malformed key stops walletd here, naming the variable
        if settings.hash_queue < settings.hash_threads:
            raise ConfigError(f"WALLETD_HASH_QUEUE={settings.hash_queue} must be at least WALLETD_HASH_THREADS "
                              f"({settings.hash_threads}): a thread with nothing to hash is wasted")
        if settings.hash_queue_per_address > settings.hash_queue:
            raise ConfigError(f"WALLETD_HASH_QUEUE_PER_ADDRESS={settings.hash_queue_per_address} must not exceed "
                              f"WALLETD_HASH_QUEUE ({settings.hash_queue})")
        if settings.max_batch_legs > MAX_BATCH_LEGS:
            raise ConfigError(f"WALLETD_MAX_BATCH_LEGS={settings.max_batch_legs}: must be at most {MAX_BATCH_LEGS} "
                              "(all legs of a request are one journal entry, written by one statement)")
        if settings.open_service_registration and settings.operator_key:
            # An explicit key means the operator means to restrict registration; the switch says the
            # opposite. Neither may silently win.
            raise ConfigError("WALLETD_OPEN_SERVICE_REGISTRATION=1 and WALLETD_OPERATOR_KEY are both set: the first "
                              "lets anyone register a payment service, the second restricts it to the operator; "
                              "unset one of them")
        if settings.committers >= settings.pool_size:
            raise ConfigError(f"WALLETD_COMMITTERS={settings.committers} needs WALLETD_POOL_SIZE above it "
                              f"(is {settings.pool_size}): reads need connections too")
        return settings


LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_BATCH_LEGS = 10_000
# The operator key is the one credential that sets rates and ends other parties' pending money:
# short keys are refused at start (generated ones are 32 random bytes, 43 characters).
OPERATOR_KEY_MIN_LENGTH = 24


def check_operator_key(key: str, source: str) -> str:
    """The key, or ConfigError naming where it came from when it is too short to be a credential."""
    if len(key) < OPERATOR_KEY_MIN_LENGTH:
        raise ConfigError(f"{source} is {len(key)} characters: an operator key needs at least "
                          f"{OPERATOR_KEY_MIN_LENGTH} (e.g. python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    return key


SECRETS_KEY_VARIABLE = "WALLETD_SECRETS_KEY"


def secrets_keys(raw: str | None) -> list[str]:
    """The keys of WALLETD_SECRETS_KEY, first the one that encrypts (walletd/keys.py derives
    everything from them); ConfigError naming the variable when it is unset or malformed."""
    names = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if not names:
        raise ConfigError(f"{SECRETS_KEY_VARIABLE} is not set: it encrypts webhook secrets at rest (generate one "
                          "with `walletd secrets-key`, or `openssl rand -base64 32 | tr '+/' '-_'`)")
    try:
        for name in names:
            Fernet(name.encode())
    except (ValueError, binascii.Error):
        raise ConfigError(f"{SECRETS_KEY_VARIABLE}: each key must be 32 bytes in URL-safe base64 (44 characters); "
                          "generate one with `walletd secrets-key`") from None
    return names


# HS256 keys shorter than the hash are easier to brute-force offline from any one token (RFC 7518 3.2).
MIN_JWT_SECRET_BYTES = 32


def check_jwt_secret(secret: str, source: str) -> str:
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(f"{source} is {len(secret.encode())} bytes: a JWT secret must be at least "
                          f"{MIN_JWT_SECRET_BYTES} bytes (e.g. `openssl rand -base64 48`)")
    return secret


def network(text: str) -> IPv4Network | IPv6Network:
    """A CIDR or a single address (a /32 or /128); host bits must be zero."""
    return ip_network(text.strip(), strict=True)


_HOST_NAME = re.compile(r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?")


def _items(raw: str) -> list[str]:
    return [item for item in raw.replace(",", " ").split() if item]


class _Reader:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value.strip() if value is not None and value.strip() else None

    def secret(self, name: str) -> str | None:
        value = self.env.get(name) or None
        return None if value is None else check_jwt_secret(value, name)

    def networks(self, name: str) -> tuple[str, ...]:
        items = _items(self.env.get(name, ""))
        for item in items:
            try:
                network(item)
            except ValueError as exc:
                raise ConfigError(f"{name}: {item!r} is not a CIDR ({exc})") from None
        return tuple(items)

    def hosts_or_networks(self, name: str) -> tuple[str, ...]:
        items = _items(self.env.get(name, ""))
        for item in items:
            try:
                network(item)
            except ValueError as exc:
                if not _HOST_NAME.fullmatch(item) or item.rstrip(".").rsplit(".", 1)[-1].isdigit():
                    raise ConfigError(f"{name}: {item!r} is neither a host name nor a CIDR ({exc})") from None
        return tuple(items)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.optional_integer(name, minimum=minimum)
        return default if value is None else value

    def optional_integer(self, name: str, *, minimum: int) -> int | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value}: must be at least {minimum}")
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from None
        if not value >= minimum or value == float("inf"):
            raise ConfigError(f"{name}={raw}: must be a finite number of at least {minimum}")
        return value

    def operator_key(self, name: str) -> str | None:
        value = self.env.get(name) or None
        return None if value is None else check_operator_key(value, name)

    def fraction(self, name: str, default: str, *, above_zero: bool) -> Decimal:
        """A rate in [0, 1) (or (0, 1) when above_zero), as an exact Decimal."""
        value = self.decimal(name, default)
        if value >= 1 or value < 0 or (above_zero and value == 0):
            low = "above 0" if above_zero else "at least 0"
            raise ConfigError(f"{name}={value}: must be {low} and below 1")
        return value

    def decimal(self, name: str, default: str) -> Decimal:
        raw = self._raw(name) or default
        try:
            value = Decimal(raw)
        except ArithmeticError:
            raise ConfigError(f"{name}={raw!r}: expected a decimal amount") from None
        if not value.is_finite():
            raise ConfigError(f"{name}={raw!r}: expected a finite decimal amount")
        return value
