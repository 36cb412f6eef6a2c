"""`walletd serve | migrate | audit | smoke`: the console script."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import sys

from walletd.config import ConfigError, Settings
from walletd.persistence.migrate import MigrationError


def resolve_database(settings: Settings) -> tuple[str, str, object | None]:
    """(database url, jwt secret, embedded server handle or None)."""
    from walletd.persistence import embedded

    if settings.database_url:
        if not settings.jwt_secret:
            raise ConfigError("DATABASE_URL is set but WALLETD_JWT_SECRET is not: refusing to start "
                              "(tokens signed with a throwaway secret would die with the process)")
        return settings.database_url, settings.jwt_secret, None
    server = embedded.start(settings.data_dir)
    secret = settings.jwt_secret or embedded.persistent_secret(settings.data_dir)
    return embedded.database_url(server), secret, server


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
    from aiohttp import web

    from walletd import logs
    from walletd.app import create_app

    logs.configure(settings.log_level)
    url, secret, server = resolve_database(settings)
    if not args.worker:
        asyncio.run(_migrate(url, settings))
    log = logs.get_logger("walletd")
    log.info("walletd.starting", host=args.host, port=args.port, embedded=server is not None,
             workers=args.workers, pid=os.getpid())
    # Extra worker processes share the port (SO_REUSEPORT; the kernel spreads connections) and
    # the database; each has its own actors. Correctness across them comes from PostgreSQL.
    children = [_spawn_worker(args, url, secret) for _ in range(args.workers - 1)]
    app = create_app(settings, url, secret)
    # Everything built so far lives as long as the process: keep it out of the cyclic collector's
    # sweeps, and collect the young generation less often (a full sweep stalls every request).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=30,
                    handle_signals=True, loop=_new_loop(), reuse_port=args.workers > 1 or args.worker)
    finally:
        for child in children:  # each finishes what it accepted, like this process did
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=35)
            except subprocess.TimeoutExpired:
                child.kill()
    log.info("walletd.stopped")
    return 0


def _spawn_worker(args, url: str, secret: str) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": secret}
    return subprocess.Popen([sys.executable, "-m", "walletd", "serve", "--host", args.host, "--port", str(args.port),
                             "--workers", "1", "--worker"], env=env)


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
    from walletd.persistence.audit import run_audit

    url = settings.database_url or resolve_database(settings)[0]
    problems = asyncio.run(run_audit(url))
    for problem in problems:
        print(problem)
    print("audit: clean" if not problems else f"audit: {len(problems)} problem(s)")
    return 1 if problems else 0


def smoke_cmd(args, settings: Settings) -> int:
    from walletd.smoke import run_smoke

    return asyncio.run(run_smoke(args.base_url, args.operator_key))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="walletd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the HTTP server")
    p_serve.add_argument("--host", default="0.0.0.0")
    p_serve.add_argument("--port", type=int, default=8010)
    p_serve.add_argument("--workers", type=int, default=int(os.environ.get("WALLETD_WORKERS", "1")),
                         help="processes serving the port (default 1, env WALLETD_WORKERS)")
    p_serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers
    p_serve.set_defaults(run=serve)
    sub.add_parser("migrate", help="apply pending migrations and the seed data, then exit").set_defaults(run=migrate_cmd)
    sub.add_parser("audit", help="recompute balances from the journal; exit 1 on any difference").set_defaults(
        run=audit_cmd)
    p_smoke = sub.add_parser("smoke", help="end-to-end check against a live deployment")
    p_smoke.add_argument("--base-url", required=True)
    p_smoke.add_argument("--operator-key", default=None, help="also check deposit, settlement and transfer")
    p_smoke.set_defaults(run=smoke_cmd)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        sys.exit(args.run(args, settings))
    except ConfigError as exc:
        print(f"walletd: {exc}", file=sys.stderr)
        sys.exit(2)
    except MigrationError as exc:  # a changed released migration: refuse loudly, start nothing
        print(f"walletd: migration refused: {exc}", file=sys.stderr)
        sys.exit(3)
