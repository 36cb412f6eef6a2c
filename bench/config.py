"""The harness's command line and the constants every part of it shares."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
JWT_SECRET = "bench-secret-" + "b" * 48
OPERATOR_KEY = "bench-operator-key-0123456789abcdef"  # walletd refuses keys under 24 characters
SECRETS_KEY = "YmVuY2gtc2VjcmV0cy1rZXktb2YtMzItYnl0ZXMtLS0="  # a Fernet key (32 bytes, URL-safe base64)
HOST = "127.0.0.1"
TRANSFER_AMOUNT = "0.01"
LEGS_PER_REQUEST = 100  # legs of each POST /wallet/transfers of the transfer_legs run
DATABASE = "walletd_bench"


@dataclass
class Config:
    smoke: bool
    concurrency: int
    warmup: float
    duration: float
    wallets: int
    history_rows: int
    history_small_rows: int
    memory_wallets: int
    idle_seconds: float
    distinct_requests: int
    out: Path
    workers: int = 1
    log_level: str = "info"
    citus: Path | None = None  # a Citus install (tests/citus/build.sh): run on a cluster of it
    only: set[str] = field(default_factory=set)

    def wants(self, group: str) -> bool:
        return not self.only or group in self.only


GROUPS = ("transfers", "settlement", "reads", "floor", "lock", "pgbench", "memory")


def parse_args(argv: list[str] | None, description: str) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="bounded CI version: ~1 s per run, small data")
    p.add_argument("--concurrency", type=int, default=32, help="connections of the load generator (32)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per run (2; smoke 1)")
    p.add_argument("--duration", type=float, help="measured seconds per run (6; smoke 1)")
    p.add_argument("--wallets", type=int, help="wallets of the transfer runs (1000; smoke 50)")
    p.add_argument("--history-rows", type=int, help="rows of the big history wallet (1,000,000; smoke 10,000)")
    p.add_argument("--memory-wallets", type=int, help="wallets touched by the memory run (100,000; smoke 2,000)")
    p.add_argument("--idle-seconds", type=float,
                   help="WALLETD_ACTOR_IDLE_SECONDS given to walletd (10; smoke 2): the memory run waits it out")
    p.add_argument("--log-level", default="info",
                   help="WALLETD_LOG_LEVEL of walletd (warning: no per-request lines; info: production's audit trail)")
    p.add_argument("--workers", type=int, default=1,
                   help="walletd serve --workers N (1: one process, like the single-process references)")
    p.add_argument("--citus", type=Path, metavar="DIR",
                   help="run on a Citus cluster (a coordinator and two workers on loopback) of the Citus that "
                        "tests/citus/build.sh built into DIR, instead of the embedded PostgreSQL (make bench-citus)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(GROUPS)} (development aid)")
    p.add_argument("--out", type=Path,
                   help="where to write the JSON (bench/results/latest.json, ignored by git; smoke: "
                        "bench/results/smoke.json, so a CI smoke run never overwrites the figures of a full run)")
    a = p.parse_args(argv)
    smoke = a.smoke
    only = {g.strip() for g in a.only.split(",") if g.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        p.error(f"unknown groups: {', '.join(sorted(unknown))}")
    return Config(
        smoke=smoke,
        concurrency=a.concurrency,
        warmup=a.warmup if a.warmup is not None else (1.0 if smoke else 2.0),
        duration=a.duration if a.duration is not None else (1.0 if smoke else 6.0),
        wallets=a.wallets or (50 if smoke else 1000),
        history_rows=a.history_rows or (10_000 if smoke else 1_000_000),
        history_small_rows=100,
        memory_wallets=a.memory_wallets or (2_000 if smoke else 100_000),
        idle_seconds=a.idle_seconds if a.idle_seconds is not None else (2.0 if smoke else 10.0),
        distinct_requests=5_000 if smoke else 20_000,
        out=a.out or RESULTS / ("smoke.json" if smoke else "latest.json"),
        only=only,
        workers=a.workers,
        log_level=a.log_level,
        citus=a.citus,
    )
