"""Settings, read from the environment once by the composition root (never at import time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path


class ConfigError(Exception):
    """The environment does not describe a runnable walletd."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".walletd")
    jwt_secret: str | None = None
    token_ttl_seconds: int = 3600
    operator_key: str | None = None
    open_service_registration: bool = False
    signup_bonus: Decimal = Decimal(0)
    rates_url: str | None = None
    rates_max_age_seconds: int | None = None
    seed_file: Path | None = None
    max_body_bytes: int = 64 * 1024
    mailbox_size: int = 256
    actor_idle_seconds: float = 30.0
    max_batch: int = 256
    committers: int = 2
    pool_size: int = 8
    log_level: str = "info"
    # Login throttling, the password-hash pool and slow clients (README "Login throttling", "Slow clients").
    login_max_failures: int = 10
    login_max_failures_per_address: int = 100
    login_window_seconds: int = 900
    hash_threads: int = 2
    hash_queue: int = 8
    hash_queue_per_address: int = 2
    header_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 15.0
    max_connections: int = 512

    @property
    def rates_max_age(self) -> timedelta | None:
        return None if self.rates_max_age_seconds is None else timedelta(seconds=self.rates_max_age_seconds)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        max_age = env.get("WALLETD_RATES_MAX_AGE")
        try:
            return cls(
                database_url=env.get("DATABASE_URL") or None,
                data_dir=Path(env.get("WALLETD_DATA_DIR", ".walletd")),
                jwt_secret=env.get("WALLETD_JWT_SECRET") or None,
                token_ttl_seconds=int(env.get("WALLETD_TOKEN_TTL", "3600")),
                operator_key=env.get("WALLETD_OPERATOR_KEY") or None,
                open_service_registration=_flag(env.get("WALLETD_OPEN_SERVICE_REGISTRATION")),
                signup_bonus=Decimal(env.get("WALLETD_SIGNUP_BONUS", "0")),
                rates_url=env.get("WALLETD_RATES_URL") or None,
                rates_max_age_seconds=int(max_age) if max_age else None,
                seed_file=Path(env["WALLETD_SEED_FILE"]) if env.get("WALLETD_SEED_FILE") else None,
                max_body_bytes=int(env.get("WALLETD_MAX_BODY_BYTES", str(64 * 1024))),
                mailbox_size=int(env.get("WALLETD_MAILBOX_SIZE", "256")),
                actor_idle_seconds=float(env.get("WALLETD_ACTOR_IDLE_SECONDS", "30")),
                max_batch=int(env.get("WALLETD_MAX_BATCH", "256")),
                committers=int(env.get("WALLETD_COMMITTERS", "2")),
                pool_size=int(env.get("WALLETD_POOL_SIZE", "8")),
                log_level=env.get("WALLETD_LOG_LEVEL", "info"),
                login_max_failures=int(env.get("WALLETD_LOGIN_MAX_FAILURES", "10")),
                login_max_failures_per_address=int(env.get("WALLETD_LOGIN_MAX_FAILURES_PER_ADDRESS", "100")),
                login_window_seconds=int(env.get("WALLETD_LOGIN_WINDOW_SECONDS", "900")),
                hash_threads=int(env.get("WALLETD_HASH_THREADS", "2")),
                hash_queue=int(env.get("WALLETD_HASH_QUEUE", "8")),
                hash_queue_per_address=int(env.get("WALLETD_HASH_QUEUE_PER_ADDRESS", "2")),
                header_timeout_seconds=float(env.get("WALLETD_HEADER_TIMEOUT_SECONDS", "15")),
                body_timeout_seconds=float(env.get("WALLETD_BODY_TIMEOUT_SECONDS", "15")),
                max_connections=int(env.get("WALLETD_MAX_CONNECTIONS", "512")),
            )
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"invalid walletd setting: {exc}") from exc
