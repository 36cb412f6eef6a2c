"""`walletd serve | migrate | audit | config | secrets-key | smoke | demo`: the console script."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import gc
import os
import signal
import socket
import subprocess
import sys

from walletd import __version__
from walletd.config import ConfigError, Settings, check_jwt_secret, check_operator_key
from walletd.persistence.migrate import MigrationError

DEFAULT_HOST = "127.0.0.1"  # loopback unless asked: the Dockerfile passes --host 0.0.0.0
DEFAULT_PORT = 8010


def resolve_database(settings: Settings) -> tuple[str, str, object | None]:
    """(database url, jwt secret, embedded server handle or None)."""
    from walletd.persistence import embedded

    if settings.database_url:
        if not settings.jwt_secret:
            raise ConfigError("DATABASE_URL is set but WALLETD_JWT_SECRET is not: refusing to start "
                              "(tokens signed with a throwaway secret would die with the process)")
        return settings.database_url, settings.jwt_secret, None
    server = embedded.start(settings.data_dir)
    secret = settings.jwt_secret or check_jwt_secret(embedded.persistent_secret(settings.data_dir),
                                                     str(settings.data_dir / embedded.JWT_SECRET_FILE))
    return embedded.database_url(server), secret, server


def with_secrets_key(settings: Settings, embedded_server: object | None) -> Settings:
    """WALLETD_SECRETS_KEY, else (embedded only) a key made once and kept beside the JWT secret.
    With DATABASE_URL it must be set: every process and host must decrypt what the others stored."""
    if settings.secrets_key:
        return settings
    if embedded_server is None:
        raise ConfigError("DATABASE_URL is set but WALLETD_SECRETS_KEY is not: refusing to start (it encrypts "
                          "webhook secrets and must be the same for every walletd process; generate one with "
                          "`walletd secrets-key`)")
    from walletd.persistence import embedded

    return dataclasses.replace(settings, secrets_key=embedded.persistent_secrets_key(settings.data_dir))


def with_operator_key(settings: Settings, *, embedded: bool) -> Settings:
    """An embedded installation gets an operator key made once (32 random bytes) and kept in the
    data directory (beside the JWT secret), unless WALLETD_OPERATOR_KEY is set: a plain `make run`
    can then register the payment service. With DATABASE_URL the key comes only from the environment.
    WALLETD_OPEN_SERVICE_REGISTRATION=1 opens registration whether or not a key was generated."""
    if settings.operator_key or not embedded:
        return settings
    from walletd.persistence import embedded as embedded_pg

    path = embedded_pg.operator_key_path(settings.data_dir)
    key = check_operator_key(embedded_pg.persistent_operator_key(settings.data_dir), f"the operator key in {path}")
    return dataclasses.replace(settings, operator_key=key)


async def _migrate(url: str, settings: Settings) -> list:
    import asyncpg

    from walletd.persistence.migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, settings.seed_file)
    finally:
        await conn.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where available: the same asyncio API with a faster event loop and transports."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(args, settings: Settings) -> int:
    from walletd import metrics_dir

    # Before walletd.app imports prometheus_client: the workers share one metrics directory.
    if not args.worker:
        metrics_dir.prepare(args.workers)
    from walletd import logs
    from walletd.app import create_app
    from walletd.server import run as run_server

    logs.configure(settings.log_level)
    if settings.database_url and not settings.secrets_key:
        with_secrets_key(settings, None)  # refuses now, before anything starts
    if not args.worker and (problem := _port_problem(args.host, args.port)):
        print(f"walletd: cannot listen on {args.host}:{args.port}: {problem}", file=sys.stderr)
        return 1
    operator_key_from_env = settings.operator_key is not None and not args.generated_operator_key
    # Before the embedded PostgreSQL starts: a key file too short to be a credential stops
    # walletd (exit 2) with nothing left running. A worker of an embedded installation reads
    # its parent's generated key from the data directory.
    settings = with_operator_key(settings, embedded=settings.database_url is None or args.generated_operator_key)
    url, secret, server = resolve_database(settings)
    settings = with_secrets_key(settings, server)
    if not args.worker:
        asyncio.run(_migrate(url, settings))
    log = logs.get_logger("walletd")
    log.info("walletd.starting", host=args.host, port=args.port, embedded=server is not None,
             workers=args.workers, pid=os.getpid())
    # Extra worker processes share the port (SO_REUSEPORT; the kernel spreads connections) and
    # the database; each has its own actors. Correctness across them comes from PostgreSQL.
    key_generated = settings.operator_key is not None and not operator_key_from_env
    children = [_spawn_worker(args, url, secret, key_generated, settings.secrets_key)
                for _ in range(args.workers - 1)]
    app = create_app(settings, url, secret)
    # Everything built so far lives as long as the process: keep it out of the cyclic collector's
    # sweeps, and collect the young generation less often (a full sweep stalls every request).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    banner = None if args.worker else lambda _: print_banner(args, settings, server, operator_key_from_env)
    try:
        run_server(app, settings, args.host, args.port, reuse_port=args.workers > 1 or args.worker,
                   loop_factory=_new_loop, on_listening=banner)
    except OSError as exc:  # the port was taken between the check and the bind
        if args.worker or exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise  # not a listening problem (a database refusing connections is an OSError too)
        print(f"walletd: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        for child in children:  # each finishes what it accepted, like this process did
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=35)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            metrics_dir.process_exited(child.pid)
    log.info("walletd.stopped")
    return 0


def _port_problem(host: str, port: int) -> str | None:
    """Why host:port cannot be bound (checked before PostgreSQL starts), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use (another walletd? pick another with --port or WALLETD_PORT)"
            return exc.strerror or str(exc)
    return None


def print_banner(args, settings: Settings, server: object | None, operator_key_from_env: bool) -> None:
    """A few lines for the human at the terminal, on stderr: stdout carries only JSON log lines."""
    local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    base = f"http://{local}:{args.port}"
    data_dir = settings.data_dir.resolve()
    lines = [f"walletd {__version__} is ready at {base}   (API docs: {base}/docs)"]
    if local != args.host:
        lines.append(f"  listening on:         {args.host}:{args.port} (every interface)")
    if server is not None:
        lines.append(f"  data directory:       {data_dir}   (embedded PostgreSQL in pg/, JWT secret)")
    else:
        lines.append("  database:             DATABASE_URL (external PostgreSQL)")
    if settings.operator_key and not operator_key_from_env:
        from walletd.persistence import embedded

        lines.append(f"  operator key:         {embedded.operator_key_path(data_dir)}   (send as X-Operator-Key)")
    elif settings.operator_key:
        lines.append("  operator key:         from WALLETD_OPERATOR_KEY   (send as X-Operator-Key)")
    if settings.open_service_registration:
        registration = "OPEN to anyone (WALLETD_OPEN_SERVICE_REGISTRATION=1, development only)"
    elif settings.operator_key:
        registration = "needs the operator key"
    else:
        registration = "closed (set WALLETD_OPERATOR_KEY)"
    lines.append(f"  service registration: {registration}")
    lines.append("  logs:                 JSON lines on stdout; Ctrl-C stops walletd"
                 + (" and its PostgreSQL" if server is not None else ""))
    print("\n".join(lines), file=sys.stderr, flush=True)


def _spawn_worker(args, url: str, secret: str, key_generated: bool, secrets_key: str | None) -> subprocess.Popen:
    """A key set in WALLETD_OPERATOR_KEY reaches the worker in the inherited environment; a generated
    one is read from the data directory by the worker itself, so that the worker, like its parent,
    does not take it for an explicit key (which WALLETD_OPEN_SERVICE_REGISTRATION=1 refuses)."""
    env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": secret}
    if secrets_key:
        env["WALLETD_SECRETS_KEY"] = secrets_key
    argv = [sys.executable, "-m", "walletd", "serve", "--host", args.host, "--port", str(args.port),
            "--workers", "1", "--worker"]
    return subprocess.Popen(argv + (["--generated-operator-key"] if key_generated else []), env=env)


def migrate_cmd(args, settings: Settings) -> int:
    from walletd import logs

    logs.configure(settings.log_level, buffered=False)  # migrate.* events as JSON lines, like serve
    url, _, _ = resolve_database(settings) if not settings.database_url else (settings.database_url, "", None)
    applied = asyncio.run(_migrate(url, settings))
    for migration in applied:
        print(f"applied {migration.label}")
    print("schema up to date" + ("" if applied else " (nothing to apply)"))
    return 0


def audit_cmd(args, settings: Settings) -> int:
    from walletd.integrity.verify import run_full_audit

    url = settings.database_url or resolve_database(settings)[0]
    problems, chain_summary = asyncio.run(run_full_audit(url, args.expect_head))
    for problem in problems:
        print(problem)
    print(chain_summary)
    print("audit: clean" if not problems else f"audit: {len(problems)} problem(s)")
    return 1 if problems else 0


def _sha256_hex(value: str) -> bytes:
    try:
        digest = bytes.fromhex(value)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise argparse.ArgumentTypeError("expected 64 hexadecimal digits (the hash of a journal.head log line)")
    return digest


def smoke_cmd(args, settings: Settings) -> int:
    from walletd.smoke import run_smoke

    key, source = _operator_key_for_client(args, settings)
    return asyncio.run(run_smoke(args.base_url, key, key_source=source))


def demo_cmd(args, settings: Settings) -> int:
    from walletd.demo import run_demo

    key, source = _operator_key_for_client(args, settings)
    return asyncio.run(run_demo(args.base_url, key, key_source=source))


def _operator_key_for_client(args, settings: Settings) -> tuple[str | None, str]:
    """--operator-key, else WALLETD_OPERATOR_KEY, else the embedded installation's key file."""
    from walletd.persistence import embedded

    if args.operator_key:
        return args.operator_key, "--operator-key"
    if settings.operator_key:
        return settings.operator_key, "WALLETD_OPERATOR_KEY"
    path = embedded.operator_key_path(settings.data_dir)
    if path.is_file():
        return path.read_text().strip(), str(path)
    return None, f"none found (no --operator-key, no WALLETD_OPERATOR_KEY, no {path})"


def config_cmd(args, settings: Settings) -> int:
    """The effective settings (environment, defaults, generated files), secrets masked; reaching
    here means Settings.from_env accepted them, as `walletd serve` would."""
    from walletd.config_catalogue import effective, render_effective
    from walletd.persistence import embedded

    generated = {}
    if settings.database_url:  # refused here exactly as `walletd serve` would refuse them
        resolve_database(settings)
        with_secrets_key(settings, None)
    else:  # what an embedded installation reads or makes at its first start
        generated = {"WALLETD_JWT_SECRET": settings.data_dir / embedded.JWT_SECRET_FILE,
                     "WALLETD_SECRETS_KEY": settings.data_dir / embedded.SECRETS_KEY_FILE,
                     "WALLETD_OPERATOR_KEY": embedded.operator_key_path(settings.data_dir)}
    print(f"walletd {__version__}: effective settings (secrets masked; meanings: `walletd serve --help`)\n")
    print(render_effective(effective(settings, dict(os.environ), generated)), end="")
    return 0


def secrets_key_cmd(args, settings: Settings) -> int:
    from walletd.keys import new_secrets_key

    print(new_secrets_key())
    return 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        raise SystemExit(f"walletd: {name} must be an integer, got {value!r}") from None


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default=os.environ.get("WALLETD_URL", f"http://127.0.0.1:{DEFAULT_PORT}"),
                        help=f"the walletd to talk to (env WALLETD_URL; default http://127.0.0.1:{DEFAULT_PORT})")
    parser.add_argument("--operator-key", default=None,
                        help="operator credential; default: env WALLETD_OPERATOR_KEY, else the file "
                             "WALLETD_DATA_DIR/operator-key of an embedded installation")


def build_parser() -> argparse.ArgumentParser:
    from walletd.config_catalogue import help_epilog

    parser = argparse.ArgumentParser(prog="walletd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"walletd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP server", epilog=help_epilog(),
                             formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=110))
    p_serve.add_argument("--host", default=os.environ.get("WALLETD_HOST", DEFAULT_HOST),
                         help=f"address to bind (env WALLETD_HOST; default {DEFAULT_HOST}, loopback only; "
                              "0.0.0.0 for every interface)")
    p_serve.add_argument("--port", type=int, default=_env_int("WALLETD_PORT", DEFAULT_PORT),
                         help=f"TCP port (env WALLETD_PORT; default {DEFAULT_PORT})")
    p_serve.add_argument("--workers", type=int, default=_env_int("WALLETD_WORKERS", 1),
                         help="processes serving the port (env WALLETD_WORKERS; default 1)")
    p_serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers
    p_serve.add_argument("--generated-operator-key", action="store_true", help=argparse.SUPPRESS)
    p_serve.set_defaults(run=serve)
    p_migrate = sub.add_parser("migrate", help="apply pending migrations and the seed data, then exit")
    p_migrate.set_defaults(run=migrate_cmd)
    p_audit = sub.add_parser("audit", help="recompute balances from the journal and check its hash chain; exit 1 "
                                           "naming each difference")
    p_audit.add_argument("--expect-head", type=_sha256_hex, default=None, metavar="HASH",
                         help="a chain head kept elsewhere (journal.head log lines): also report a chain that no "
                              "longer holds it (a truncated tail)")
    p_audit.set_defaults(run=audit_cmd)
    sub.add_parser("config", help="print the effective settings, secrets masked (exit 2 naming a bad one)"
                   ).set_defaults(run=config_cmd)
    sub.add_parser("secrets-key", help="print a new random WALLETD_SECRETS_KEY").set_defaults(run=secrets_key_cmd)
    p_smoke = sub.add_parser("smoke", help="end-to-end check against a live deployment (users named smoke_*)")
    _add_client_options(p_smoke)
    p_smoke.set_defaults(run=smoke_cmd)
    p_demo = sub.add_parser("demo", help="seed a service user and two funded users on a running walletd; "
                                         "print their tokens, wallets and curl lines")
    _add_client_options(p_demo)
    p_demo.set_defaults(run=demo_cmd)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        sys.exit(args.run(args, settings))
    except ConfigError as exc:
        print(f"walletd: {exc}", file=sys.stderr)
        sys.exit(2)
    except MigrationError as exc:  # a changed released migration: refuse loudly, start nothing
        print(f"walletd: migration refused: {exc}", file=sys.stderr)
        sys.exit(3)
