"""Every setting walletd reads from its environment, with its group, default and meaning: the one
list behind `walletd serve --help`, `walletd config` and the tables of docs/configuration.md
(`python -m walletd.config_catalogue` rewrites them), so none of the three can leave one out.

Defaults shown for settings kept in `Settings` are read from the dataclass itself, never copied."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from walletd.config import Settings

PRODUCTION, ROTATION, TUNE, DEVELOPMENT = "production", "rotation", "tune", "development"
GROUP_TITLES = {
    PRODUCTION: "Must set in production",
    ROTATION: "Set only while rotating a credential",
    TUNE: "Tune (the defaults suit one process on a few cores)",
    DEVELOPMENT: "Development only",
}

TOPIC_TITLES = {
    "network": "HTTP and connections", "capacity": "Capacity and batching", "database": "The database",
    "credentials": "Tokens", "logins": "Logins and password hashing", "money": "Money rules",
    "events": "Webhooks", "integrity": "The journal's hash chain and self-audit", "process": "The process",
}


@dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    group: str
    topic: str
    help: str  # one line: `walletd serve --help` and `walletd config`
    doc: str = ""  # the docs' fuller text, when one line is not enough
    field: str | None = None  # the Settings attribute holding it; None: read by the command line
    default: str | None = None  # shown instead of the Settings default (or for a command-line setting)
    secret: bool = False  # never printed; a URL's password is masked
    url: bool = False
    # Printed as scheme://host only: a provider's key may sit in the user part or the path.
    origin_only: bool = False


S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("DATABASE_URL", PRODUCTION, "database", "the PostgreSQL walletd uses; unset: an embedded one in WALLETD_DATA_DIR",
      "PostgreSQL connection URL (libpq form; `sslmode`, several hosts and `target_session_attrs=read-write` "
      "work). Unset: walletd starts an embedded PostgreSQL in `WALLETD_DATA_DIR` and stops it on exit. Set, "
      "walletd starts nothing and needs `WALLETD_JWT_SECRET` and `WALLETD_SECRETS_KEY`.",
      field="database_url", url=True),
    S("WALLETD_JWT_SECRET", PRODUCTION, "credentials", "HS256 signing key of tokens, at least 32 bytes",
      "HS256 signing key of every token, at least 32 bytes (shorter: exit 2). The same in every process "
      "and host. Make one with `openssl rand -base64 48`. Required with `DATABASE_URL`.",
      field="jwt_secret", default="embedded: generated into WALLETD_DATA_DIR/jwt-secret", secret=True),
    S("WALLETD_SECRETS_KEY", PRODUCTION, "credentials", "seals webhook secrets, keys pseudonyms and cursors",
      "A Fernet key (32 random bytes, URL-safe base64; `walletd secrets-key` prints one) that seals webhook "
      "secrets at rest and keys username pseudonyms and history cursors. The same in every process and host. "
      "During its rotation `new,old`: the first seals, all open ([security.md](security.md)). Required with "
      "`DATABASE_URL`.",
      field="secrets_key", default="embedded: generated into WALLETD_DATA_DIR/secrets-key", secret=True),
    S("WALLETD_OPERATOR_KEY", PRODUCTION, "credentials", "the operator credential (header X-Operator-Key), 24+ chars",
      "The operator's credential, sent as header `X-Operator-Key`: registers payment services, sets rates "
      "and currencies, ends stale pending money, reverses ([authority.md](authority.md)). At least 24 "
      "characters (else exit 2); make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`. "
      "Unset with `DATABASE_URL`: every operator route answers 403.",
      field="operator_key", default="embedded: generated into WALLETD_DATA_DIR/operator-key; else unset",
      secret=True),
    S("WALLETD_HOST", PRODUCTION, "network", "address `walletd serve` binds (0.0.0.0: every interface)",
      "The address `walletd serve` binds (`--host`). The default serves loopback only; behind a load "
      "balancer bind the interface it reaches (`0.0.0.0`, as the Dockerfile does).", default="127.0.0.1"),
    S("WALLETD_TRUSTED_PROXIES", PRODUCTION, "network", "CIDRs of the proxies whose X-Forwarded-For names the client",
      "CIDRs of the load balancers or reverse proxies in front of walletd: only from such a peer is "
      "`X-Forwarded-For` read (its rightmost address that is not itself a trusted proxy is the client, for "
      "throttling, the hash-queue share and logs). Unset behind a proxy, every client has the proxy's address.",
      field="trusted_proxies"),
    S("WALLETD_JWT_SECRET_PREVIOUS", ROTATION, "credentials", "the secret being replaced: its tokens stay valid",
      "During a rotation, the secret being replaced: tokens it signed stay valid until they expire, new ones "
      "are signed with `WALLETD_JWT_SECRET`. At least 32 bytes.", field="jwt_secret_previous", secret=True),
    S("WALLETD_OPERATOR_KEY_PREVIOUS", ROTATION, "credentials", "the operator key being replaced, still accepted",
      "During a rotation, the previous operator key, still accepted beside `WALLETD_OPERATOR_KEY` (each use "
      "logs `auth.operator_key_previous`). Needs `WALLETD_OPERATOR_KEY`.", field="operator_key_previous",
      secret=True),
    S("WALLETD_PORT", TUNE, "network", "TCP port of `walletd serve`", default="8010"),
    S("WALLETD_WORKERS", TUNE, "capacity", "processes serving the port (SO_REUSEPORT)",
      "Processes serving the port (`walletd serve --workers N`, SO_REUSEPORT); each has its own actors and "
      "pool, the database keeps them correct. About one per core.", default="1"),
    S("WALLETD_POOL_SIZE", TUNE, "capacity", "database connections per process",
      "asyncpg pool size per process; must exceed `WALLETD_COMMITTERS`. Connections in use at most: "
      "pool × workers × hosts (see [operations.md](operations.md#a-managed-postgresql)).", field="pool_size"),
    S("WALLETD_COMMITTERS", TUNE, "capacity", "group-commit workers (transactions in flight) per process",
      field="committers"),
    S("WALLETD_MAX_BATCH", TUNE, "capacity", "most commands committed in one database transaction",
      field="max_batch"),
    S("WALLETD_MAX_BATCH_LEGS", TUNE, "capacity", "most legs of one POST /wallet/transfers (at most 10000)",
      "Most legs of one `POST /wallet/transfers` (at most 10000); that route reads bodies up to "
      "max(`WALLETD_MAX_BODY_BYTES`, 256 × this) bytes.", field="max_batch_legs"),
    S("WALLETD_MAILBOX_SIZE", TUNE, "capacity", "commands queued per wallet before 503 + Retry-After",
      "Commands queued per wallet before 503 + Retry-After (nothing moved). A payment service's deposit "
      "settlements queue on its gateway wallet: more than this many at once in one process are refused.",
      field="mailbox_size"),
    S("WALLETD_ACTOR_IDLE_SECONDS", TUNE, "capacity", "an idle wallet actor retires after this long",
      field="actor_idle_seconds"),
    S("WALLETD_READ_DATABASE_URL", TUNE, "database", "history pages only are read from here (a standby)",
      "History pages only (`/user/transactions`, `/wallet/transactions`) are read from here, e.g. the "
      "standbys with `target_session_attrs=prefer-standby`; a pool of half `WALLETD_POOL_SIZE` (at least 2). "
      "Pages may lag the primary ([ha.md](ha.md#reads-from-a-standby)).", field="read_database_url", url=True),
    S("WALLETD_IN_DOUBT_SECONDS", TUNE, "database", "how long a cut-off commit is looked up before 500",
      "How long walletd keeps finding out whether a cut-off commit happened before answering 500 "
      "`outcome_unknown`; keep it above the failover window (Patroni: about 20 s).", field="in_doubt_seconds"),
    S("WALLETD_DB_ACQUIRE_TIMEOUT", TUNE, "database", "seconds a request waits for a connection before 503",
      field="db_acquire_timeout"),
    S("WALLETD_DB_CONNECT_TIMEOUT", TUNE, "database", "seconds one connection attempt may take",
      field="db_connect_timeout"),
    S("WALLETD_MAX_CONNECTIONS", TUNE, "network", "open client connections per process; more get 503",
      "Open connections per process; more are answered 503 + `Retry-After` and closed (keep it under "
      "`ulimit -n`).", field="max_connections"),
    S("WALLETD_HEADER_TIMEOUT_SECONDS", TUNE, "network", "a request head must arrive within this (idle keep-alive too)",
      "A connection must deliver a complete request head this long after it opens or after the previous "
      "response, else it is closed (slow headers, idle keep-alive).", field="header_timeout_seconds"),
    S("WALLETD_BODY_TIMEOUT_SECONDS", TUNE, "network", "a request body must arrive whole within this, else 408",
      field="body_timeout_seconds"),
    S("WALLETD_MAX_BODY_BYTES", TUNE, "network", "larger request bodies get 413", field="max_body_bytes"),
    S("WALLETD_TOKEN_TTL", TUNE, "credentials", "token lifetime in seconds", field="token_ttl_seconds"),
    S("WALLETD_LOGIN_MAX_FAILURES", TUNE, "logins", "failed logins per username per window before 429",
      field="login_max_failures"),
    S("WALLETD_LOGIN_MAX_FAILURES_PER_ADDRESS", TUNE, "logins", "failed logins per client address per window",
      field="login_max_failures_per_address"),
    S("WALLETD_LOGIN_WINDOW_SECONDS", TUNE, "logins", "the throttling window, from its first failure",
      field="login_window_seconds"),
    S("WALLETD_HASH_THREADS", TUNE, "logins", "threads hashing passwords (argon2id) per process",
      field="hash_threads"),
    S("WALLETD_HASH_QUEUE", TUNE, "logins", "password hashes running or waiting per process; one more: 503",
      field="hash_queue"),
    S("WALLETD_HASH_QUEUE_PER_ADDRESS", TUNE, "logins", "of those places, the most one client address holds",
      field="hash_queue_per_address"),
    S("WALLETD_IDEMPOTENCY_RETENTION", TUNE, "money", "seconds an Idempotency-Key is remembered",
      "Seconds an `Idempotency-Key` is remembered; older keys are swept, and a retry after that moves "
      "money again.", field="idempotency_retention_seconds"),
    S("WALLETD_PENDING_TTL", TUNE, "money", "seconds until a pending deposit or withdrawal is stale",
      "Seconds after which a pending deposit or withdrawal is stale: the payment service is told, the hold "
      "stays, a late settlement still settles it, and the operator may end it.", field="pending_ttl_seconds"),
    S("WALLETD_SIGNUP_BONUS", TUNE, "money", "credited to each new user wallet from the operator account",
      field="signup_bonus"),
    S("WALLETD_MAX_COMMISSION_RATE", TUNE, "money", "highest commission rate a payment service may set",
      field="max_commission_rate"),
    S("WALLETD_RATES_URL", TUNE, "money", "rate provider; walletd GETs <url>/latest and <url>/symbols",
      "Rate provider base URL: walletd GETs `<url>/latest` and `<url>/symbols` (exchangeratesapi.io's shapes) "
      "when the operator asks for an update.", field="rates_url", url=True, origin_only=True),
    S("WALLETD_RATES_MAX_AGE", TUNE, "money", "seconds after which a stored rate refuses conversion (409)",
      field="rates_max_age_seconds"),
    S("WALLETD_RATE_MAX_CHANGE", TUNE, "money", "a rate write further than this fraction needs force=true",
      field="rate_max_change"),
    S("WALLETD_SEED_FILE", TUNE, "money", "currencies and rates a fresh database starts with",
      field="seed_file", default="walletd/data/seed.json"),
    S("WALLETD_WEBHOOK_ALLOW_HOSTS", TUNE, "events", "internal host names or CIDRs webhooks may reach",
      "Host names or CIDRs a webhook may point to although they are loopback, private, link-local, CGNAT, "
      "multicast, reserved or unspecified (e.g. `pay.internal,10.20.0.0/16`); anything else internal is "
      "refused at registration and at every delivery ([security.md](security.md#webhook-targets)).",
      field="webhook_allow_hosts"),
    S("WALLETD_WEBHOOK_TIMEOUT", TUNE, "events", "seconds one delivery attempt may take",
      field="webhook_timeout_seconds"),
    S("WALLETD_WEBHOOK_CONCURRENCY", TUNE, "events", "delivery attempts in flight per process",
      field="webhook_concurrency"),
    S("WALLETD_WEBHOOK_BACKOFF", TUNE, "events", "seconds before the first retry (doubling, capped at 1 h)",
      field="webhook_backoff_seconds"),
    S("WALLETD_WEBHOOK_HORIZON", TUNE, "events", "seconds after an event that its delivery is retried",
      field="webhook_horizon_seconds"),
    S("WALLETD_WEBHOOK_ROTATION_OVERLAP", TUNE, "events", "seconds a rotated webhook secret still signs",
      field="webhook_rotation_overlap_seconds"),
    S("WALLETD_SEAL_INTERVAL_SECONDS", TUNE, "integrity", "how often new journal entries are sealed",
      field="seal_interval_seconds"),
    S("WALLETD_HEAD_LOG_INTERVAL_SECONDS", TUNE, "integrity", "at most this often the chain's head is logged",
      field="head_log_interval_seconds"),
    S("WALLETD_AUDIT_INTERVAL_SECONDS", TUNE, "integrity", "the self-audit checks new entries this often",
      field="audit_interval_seconds"),
    S("WALLETD_AUDIT_FULL_INTERVAL_SECONDS", TUNE, "integrity", "and the whole journal this often",
      field="audit_full_interval_seconds"),
    S("WALLETD_AUDIT_MAX_WAIT_SECONDS", TUNE, "integrity",
      "a self-audit pass waits for moments with no request in flight, at most this long",
      field="audit_max_wait_seconds"),
    S("WALLETD_LOG_LEVEL", TUNE, "process", "debug, info, warning or error", field="log_level"),
    S("PROMETHEUS_MULTIPROC_DIR", TUNE, "process", "where the workers' metrics meet (emptied at start)",
      default="a fresh temporary directory when workers > 1"),
    S("PYTHONMALLOC", TUNE, "process", "malloc: memory freed after a burst returns to the OS",
      "With `malloc` (set by `make run` and the Dockerfile) memory freed after a burst of wallets returns "
      "to the OS; Python's own allocator keeps fragmented arenas.", default="Python's own (pymalloc)"),
    S("WALLETD_URL", TUNE, "process", "the walletd `walletd smoke` and `walletd demo` talk to",
      default="http://127.0.0.1:8010"),
    S("WALLETD_DATA_DIR", DEVELOPMENT, "database", "embedded PostgreSQL and generated credentials",
      "The embedded PostgreSQL (`pg/`) and the generated `jwt-secret`, `secrets-key` and `operator-key` "
      "(mode 600). Used only without `DATABASE_URL` (and by `walletd smoke`/`demo` to find the key).",
      field="data_dir", default="./.walletd"),
    S("WALLETD_OPEN_SERVICE_REGISTRATION", DEVELOPMENT, "credentials", "1: anyone may register payment services",
      "`1` lets anyone register service users, also beside a generated operator key (the banner says "
      "`OPEN … development only`); together with an explicit `WALLETD_OPERATOR_KEY` walletd refuses to "
      "start ([operations.md](operations.md#service-registration-in-development)).",
      field="open_service_registration"),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


def default_text(setting: Setting) -> str:
    if setting.default is not None:
        return setting.default
    assert setting.field is not None, setting.name
    return _text(getattr(Settings(), setting.field))


def _text(value: object) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def mask_url(url: str, origin_only: bool = False) -> str:
    """The URL with any password replaced (in the user part and in a `password=` or `sslpassword=`
    parameter); origin_only: scheme and host, anything else `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    location, slash, tail = rest.partition("/")
    userinfo, at, hosts = location.rpartition("@")
    if origin_only:
        return f"{scheme}://{'***@' if at else ''}{hosts}{'/***' if slash and tail else ''}"
    if at and ":" in userinfo:
        location = userinfo.split(":", 1)[0] + ":***@" + hosts
    path, question, query = tail.partition("?")
    if question:
        pairs = [(k, "***" if k in ("password", "sslpassword") else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*,:/")
    return f"{scheme}://{location}{slash}{path}{question}{query}"


def effective(settings: Settings, env: dict[str, str],
              data_dir_files: dict[str, Path]) -> list[tuple[Setting, str, str]]:
    """(setting, value as shown, where it came from) for every setting; secrets never shown.
    data_dir_files: the generated file of each credential an embedded installation would use."""
    rows = []
    for setting in SETTINGS:
        raw = env.get(setting.name, "").strip()
        source = "environment" if raw else "default"
        value = getattr(settings, setting.field) if setting.field else (raw or None)
        if setting.name in data_dir_files and not raw:
            path = data_dir_files[setting.name].resolve()
            rows.append((setting, str(path), "generated" if path.is_file() else "generated at first start"))
            continue
        if value in (None, ()) and not raw:
            shown = "unset" if setting.secret else default_text(setting)
        elif isinstance(value, Path):
            shown = str(value.resolve())
        elif setting.secret:
            shown = f"set ({len(str(value))} characters, masked)"
        elif setting.url:
            shown = mask_url(str(value), setting.origin_only)
        else:
            shown = _text(value)
        rows.append((setting, shown, source))
    return rows


def render_effective(rows: list[tuple[Setting, str, str]]) -> str:
    width = max(len(setting.name) for setting in SETTINGS)
    out = []
    for group, title in GROUP_TITLES.items():
        out.append(f"# {title}")
        out += [f"{setting.name:<{width}}  {shown}   ({source})" for setting, shown, source in rows
                if setting.group == group]
        out.append("")
    return "\n".join(out)


def help_epilog(width: int = 110) -> str:
    """Every setting, for `walletd serve --help`."""
    name_width = max(len(setting.name) for setting in SETTINGS) + 2
    lines = ["environment (read at start; `walletd config` prints the effective values, docs/configuration.md "
             "explains each):"]
    for group, title in GROUP_TITLES.items():
        lines.append(f"  {title}:")
        for setting in (s for s in SETTINGS if s.group == group):
            text = f"{setting.help} (default: {default_text(setting)})"
            wrapped = textwrap.wrap(text, width - name_width - 4) or [""]
            lines.append(f"    {setting.name:<{name_width}}{wrapped[0]}")
            lines += [" " * (name_width + 4) + more for more in wrapped[1:]]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_tables() -> str:
    """The generated part of docs/configuration.md: one table per group (the long one per topic)."""
    out = []
    for group, title in GROUP_TITLES.items():
        out += [f"### {title}", ""]
        settings = [s for s in SETTINGS if s.group == group]
        topics = dict.fromkeys(s.topic for s in settings) if group == TUNE else {"": None}
        for topic in topics:
            if topic:
                out += [f"#### {TOPIC_TITLES[topic]}", ""]
            out += ["| variable | default | meaning |", "|---|---|---|"]
            for setting in (s for s in settings if not topic or s.topic == topic):
                meaning = setting.doc or (setting.help[0].upper() + setting.help[1:] + ".")
                out.append(f"| `{setting.name}` | {_cell(default_text(setting))} | {_cell(meaning)} |")
            out.append("")
    return "\n".join(out)


START = "<!-- settings: generated by `python -m walletd.config_catalogue` -->\n"
END = "<!-- /settings -->"


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """text with what lies between the markers replaced by block."""
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        raise ValueError(f"markers {start.strip()!r} … {end!r} not found")
    return head + start + block + rest[rest.index(end):]


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/configuration.md")
    path.write_text(replace_block(path.read_text(), START, END, markdown_tables()))
    print(f"wrote the settings tables of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
