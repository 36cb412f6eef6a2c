"""The memory run: N wallets touched once, then idle past walletd's actor idle timeout."""

from __future__ import annotations

import asyncio
import random
import time

from bench import procstat, seed
from bench.config import Config
from bench.harness import Bench, Target, say


class MemoryRun:
    """N wallets touched once, then idle past the actor idle timeout; walletd's RSS: baseline,
    peak while touching, after the timeout. Each wallet is touched by one transfer of 0.01 out
    of it (a debit, so it gets an actor) into a random benchmark wallet of its currency; the
    wallets were funded by a sign-up bonus entry each (bench/seed.py), so every touch succeeds.
    """

    def __init__(self, cfg: Config, bench: Bench, wd: Target) -> None:
        self.cfg, self.bench, self.wd = cfg, bench, wd
        self.grace = max(2.0, cfg.idle_seconds * 0.2)
        self.figures: dict = {}
        self.touch_ended = 0.0

    async def touch(self, memory_users: list[seed.User], targets: list[seed.User], transfer_tpl: str,
                    idle_since: float) -> None:
        cfg, pid = self.cfg, self.wd.app_pid
        assert pid is not None, "the memory run measures walletd's process"
        rng = random.Random(7)
        args: list[list] = []
        for user in memory_users:
            for cur, wallet_id in user.wallets.items():
                if len(args) < cfg.memory_wallets:
                    args.append([user.token, wallet_id, rng.choice(targets).wallets[cur]])
        rng.shuffle(args)
        # Baseline once every actor of the earlier runs has retired (the reference runs
        # usually took longer than the idle timeout already).
        remaining = idle_since + cfg.idle_seconds + self.grace - time.monotonic()
        if remaining > 0:
            say(f"memory: waiting {remaining:.0f}s for earlier actors to retire (baseline)")
            await asyncio.sleep(remaining)
        baseline = procstat.tree_rss_bytes(pid)
        say(f"memory: touching {len(args):,} wallets once (a transfer out of each)")
        touched = await self.bench.drive("memory-touch", self.wd, transfer_tpl, args, mode="once", warmup=0,
                                         duration=900)
        self.touch_ended = time.monotonic()
        after_touch = procstat.tree_rss_bytes(pid)
        self.figures = {
            "wallets_touched": touched["requests"],
            "touch": {k: touched.get(k) for k in ("ops_per_s", "latency_ms", "errors", "http_4xx", "http_5xx",
                                                  "transport_errors", "error_samples", "server_cpu_ms_per_op",
                                                  "pg_cpu_ms_per_op")},
            "idle_seconds": cfg.idle_seconds,
            "rss_baseline_mb": _mb(baseline),
            "rss_peak_mb": touched.get("peak_rss_mb"),
            "rss_after_touch_mb": _mb(after_touch),
            "_baseline": baseline,
        }

    async def finish(self) -> dict:
        """RSS after the idle timeout (waiting for what remains of it, pgbench ran meanwhile)."""
        remaining = self.touch_ended + self.cfg.idle_seconds + self.grace - time.monotonic()
        if remaining > 0:
            say(f"memory: idle {remaining:.0f}s more (WALLETD_ACTOR_IDLE_SECONDS={self.cfg.idle_seconds:g} + grace)")
            await asyncio.sleep(remaining)
        assert self.wd.app_pid is not None
        after_idle = procstat.tree_rss_bytes(self.wd.app_pid)
        baseline = self.figures.pop("_baseline")
        self.figures.update({
            "waited_seconds": round(time.monotonic() - self.touch_ended, 1),
            "rss_after_idle_mb": _mb(after_idle),
            "after_idle_vs_baseline": round(after_idle / baseline, 3) if baseline and after_idle else None,
        })
        return self.figures


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)
