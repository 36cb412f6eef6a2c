"""walletd's side of the benchmark: the population (users, wallets, tokens), funding through the
ledger, the bulk-loaded history, the request sets, and the walletd runs themselves."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field

import asyncpg

from bench import procstat, seed
from bench.config import HOST, JWT_SECRET, LEGS_PER_REQUEST, TRANSFER_AMOUNT, Config
from bench.harness import Bench, HarnessError, Target, say, summarize
from bench.loadgen import build_request

CUR = 1  # every run moves USD


@dataclass
class Population:
    service: seed.User
    users: list[seed.User]
    hot_credit: seed.User
    hot_debit: seed.User
    hist_big: seed.User
    hist_big_peer: seed.User
    hist_small: seed.User
    hist_small_peer: seed.User
    memory_users: list[seed.User] = field(default_factory=list)


async def populate(cfg: Config, url: str, admin: asyncpg.Connection) -> Population:
    """Users and wallets set-based (bench/seed.py), tokens minted with walletd's TokenIssuer."""
    from walletd.auth.passwords import PasswordPool
    from walletd.auth.tokens import TokenIssuer

    say("creating users and wallets")
    hasher = PasswordPool(threads=1, queue_limit=1, per_address=1)
    try:
        password_hash = await hasher.hash(seed.BENCH_PASSWORD, "bench")
    finally:
        hasher.close()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    service = await seed.create_service_user(pool, "bench_service", password_hash)
    await pool.close()
    users = await seed.create_users(admin, "bench", cfg.wallets, password_hash)
    specials = await seed.create_users(admin, "bench_special", 6, password_hash)
    hot_credit, hot_debit, hist_big, hist_big_peer, hist_small, hist_small_peer = specials
    population = Population(service, users, hot_credit, hot_debit, hist_big, hist_big_peer, hist_small,
                            hist_small_peer)
    issuer = TokenIssuer(JWT_SECRET, 24 * 3600)
    for user in users + specials:
        user.token = issuer.issue(user.id, "user")
    service.token = issuer.issue(service.id, "service")
    if cfg.wants("memory"):
        say(f"memory run: {cfg.memory_wallets:,} wallets, funded by a sign-up bonus entry each")
        population.memory_users = await seed.create_users(admin, "bench_mem", math.ceil(cfg.memory_wallets / 3),
                                                          password_hash)
        await seed.grant_signup_bonus(admin, population.memory_users, "1")
        for user in population.memory_users:
            user.token = issuer.issue(user.id, "user")
    return population


class WalletdScenarios:
    def __init__(self, cfg: Config, bench: Bench, wd: Target, population: Population, url: str) -> None:
        self.cfg, self.bench, self.wd, self.pop, self.url = cfg, bench, wd, population, url
        service = population.service
        self.deposit_tpl = build_request("POST", "/wallet/deposit",
                                         f"service_user_id={service.id}&wallet_id={{1}}&amount={{2}}", HOST, "{0}")
        self.settle_tpl = build_request("PUT", "/service/transaction/deposit",
                                        "transaction_id={0}&new_status=paid", HOST, service.token)
        self.transfer_tpl = build_request("POST", "/wallet/transfer",
                                          f"source_wallet_id={{1}}&target_wallet_id={{2}}&amount={TRANSFER_AMOUNT}",
                                          HOST, "{0}")
        self.rng = random.Random(20240601)
        self.shapes: dict[str, list[list]] = {}

    async def fund(self) -> dict:
        """Every wallet of the runs funded through the ledger: deposit requests, settled paid."""
        pop = self.pop
        funding = [[u.token, u.wallets[CUR], "1000000"] for u in pop.users]
        funding += [[pop.hot_debit.token, pop.hot_debit.wallets[CUR], "100000000"],
                    [pop.hot_credit.token, pop.hot_credit.wallets[CUR], "1000"],
                    [pop.hist_big.token, pop.hist_big.wallets[CUR], "1000"],
                    [pop.hist_small.token, pop.hist_small.wallets[CUR], "1000"]]
        say(f"funding {len(funding)} wallets through the ledger (deposit + settle paid)")
        created = await self.bench.drive("fund-deposit", self.wd, self.deposit_tpl, funding, mode="once", warmup=0,
                                         duration=600, collect="id")
        if created["errors"] or len(created["collected"]) != len(funding):
            raise HarnessError(f"funding deposits failed: {summarize(created)}")
        settled = await self.bench.drive("fund-settle", self.wd, self.settle_tpl, [[i] for i in created["collected"]],
                                         mode="once", warmup=0, duration=600)
        if settled["errors"] or settled["requests"] != len(funding):
            raise HarnessError(f"funding settlements failed: {summarize(settled)}")
        return {"deposits_per_s": created["ops_per_s"], "settlements_per_s": settled["ops_per_s"]}

    async def load_history(self, url: str) -> dict:
        cfg, pop = self.cfg, self.pop
        say(f"bulk-loading {cfg.history_rows:,} history rows (and {cfg.history_small_rows})")
        t = time.monotonic()
        await seed.load_history(url, pop.hist_big, pop.hist_big_peer, CUR, cfg.history_rows)
        await seed.load_history(url, pop.hist_small, pop.hist_small_peer, CUR, cfg.history_small_rows)
        say("VACUUM ANALYZE")
        conn = await asyncpg.connect(url)
        try:
            for table in ("journal_entries", "postings", "transactions", "wallets"):
                await conn.execute(f"VACUUM ANALYZE {table}")
            loaded = {
                "big_wallet_rows": await seed.history_rows(conn, pop.hist_big.wallets[CUR]),
                "small_wallet_rows": await seed.history_rows(conn, pop.hist_small.wallets[CUR]),
                "load_seconds": round(time.monotonic() - t, 1),
            }
            # The bulk-loaded rows are a backlog no steady state has (a restored database): the runs
            # start once walletd has sealed them and its self-audit has checked them, so they measure
            # what sealing and checking cost per commit. How long the backlog took is a figure too.
            say("waiting for the journal's sealer and self-audit to catch up")
            return {**loaded, **await chain_catch_up(conn)}
        finally:
            await conn.close()

    def build_request_sets(self) -> dict[str, list[list]]:
        """The three transfer shapes, the same requests for walletd and the references."""
        rng, users, n = self.rng, self.pop.users, self.cfg.distinct_requests
        uniform = []
        for _ in range(n):
            src, dst = rng.sample(users, 2)
            uniform.append([src.token, src.wallets[CUR], dst.wallets[CUR]])
        hot_credit, hot_debit = self.pop.hot_credit, self.pop.hot_debit
        credit = [[u.token, u.wallets[CUR], hot_credit.wallets[CUR]]
                  for u in (rng.choice(users) for _ in range(n))]
        debit = [[hot_debit.token, hot_debit.wallets[CUR], u.wallets[CUR]]
                 for u in (rng.choice(users) for _ in range(n))]
        self.shapes = {"uniform": uniform, "hot_credit": credit, "hot_debit": debit}
        return self.shapes

    def transfer_legs_requests(self, distinct: int = 200) -> list[list[str]]:
        """Whole requests (a JSON body does not fit the query-string templates): each from one
        user's wallet to LEGS_PER_REQUEST wallets of others, TRANSFER_AMOUNT each."""
        requests = []
        for _ in range(distinct):
            source = self.rng.choice(self.pop.users)
            others = [u for u in self.pop.users if u is not source]
            targets = [self.rng.choice(others) for _ in range(LEGS_PER_REQUEST)]  # smoke has fewer users
            body = json.dumps({"transfers": [
                {"source_wallet_id": str(source.wallets[CUR]), "target_wallet_id": str(t.wallets[CUR]),
                 "amount": TRANSFER_AMOUNT} for t in targets]}, separators=(",", ":"))
            requests.append([build_request("POST", "/wallet/transfers", "", HOST, source.token, body)])
        return requests

    async def drive(self, label: str, template: str, args: list[list], **kwargs) -> dict:
        """One walletd run, then the wait for what it left behind (see quiesce), charged to it."""
        result = await self.bench.drive(label, self.wd, template, args, **kwargs)
        result["after_run"] = await self.quiesce()
        return result

    async def quiesce(self, timeout: float = 600) -> dict:
        """Waits until the run's leftovers are done: every journal entry sealed and checked by the
        self-audit, no autovacuum worker busy, then vacuums and analyzes the database, as pgbench does
        before each run: autovacuum would otherwise come for the run's rows within its next minute,
        in the middle of the next run (VACUUM ANALYZE of transactions and postings during the
        settlement burst: 1,054-1,252 settlements/s and 51-55 ms answers in those seconds against
        2,040 and 30-41 ms before, pg_stat_activity polled, 2026-12-05). The next run then measures
        its own work only (a settlement burst right behind the multi-leg run paid for sealing and
        checking 200,000 legs: p99 58.6 ms against 29 alone); what the wait took is reported, so the
        cost stays visible."""
        started = time.monotonic()
        pg_before = procstat.tree_cpu_seconds(self.wd.pg_pid)
        app_before = procstat.tree_cpu_seconds(self.wd.app_pid) if self.wd.app_pid is not None else 0.0
        conn = await asyncpg.connect(self.url)
        try:
            chain = await chain_catch_up(conn, timeout)
            while time.monotonic() - started < timeout and await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"):
                await asyncio.sleep(0.5)
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()
        app_cpu = procstat.tree_cpu_seconds(self.wd.app_pid) - app_before if self.wd.app_pid is not None else None
        return {"seconds": round(time.monotonic() - started, 1),
                "chain_checked_after_s": chain["chain_checked_after_s"],
                "pg_cpu_s": round(procstat.tree_cpu_seconds(self.wd.pg_pid) - pg_before, 2),
                "server_cpu_s": None if app_cpu is None else round(app_cpu, 2)}

    async def run(self, scenarios: dict) -> None:
        cfg, pop = self.cfg, self.pop
        await self.quiesce()  # the funding's entries
        if cfg.wants("transfers"):
            for name, args in self.shapes.items():
                say(f"walletd {name} transfers")
                scenarios[f"walletd.{name}"] = summarize(await self.drive(name, self.transfer_tpl, args))

        if cfg.wants("transfers"):
            say(f"walletd multi-leg transfers ({LEGS_PER_REQUEST} legs per request)")
            result = summarize(await self.drive("transfer-legs", "{0}", self.transfer_legs_requests()))
            result["legs_per_request"] = LEGS_PER_REQUEST
            result["legs_per_s"] = round(result["ops_per_s"] * LEGS_PER_REQUEST, 1)
            scenarios["walletd.transfer_legs"] = result

        if cfg.wants("settlement"):
            say("walletd settlement burst: creating pending deposits")
            dep_args = [[u.token, u.wallets[CUR], "10"]
                        for u in (self.rng.choice(pop.users) for _ in range(cfg.distinct_requests))]
            created = await self.drive("deposit-request", self.deposit_tpl, dep_args, collect="id",
                                       duration=max(1.0, cfg.duration / 2))
            pending_ids = created["collected"]
            scenarios["walletd.deposit_request"] = summarize(created)
            say(f"walletd settlement burst: settling up to {len(pending_ids):,} pending deposits paid")
            burst = await self.drive("settle-burst", self.settle_tpl, [[i] for i in pending_ids], mode="once",
                                     warmup_requests=max(1, len(pending_ids) // 5))
            burst["pending_available"] = len(pending_ids)
            scenarios["walletd.settlement_burst"] = summarize(burst)

        if cfg.wants("reads"):
            wallets_tpl = build_request("GET", "/user/wallets", "", HOST, "{0}")
            say("walletd GET /user/wallets")
            scenarios["walletd.read_wallets"] = summarize(
                await self.drive("read-wallets", wallets_tpl, [[u.token] for u in pop.users]))
            history_tpl = build_request("GET", "/wallet/transactions", "wallet_id={1}", HOST, "{0}")
            for name, owner in (("read_history_big", pop.hist_big), ("read_history_small", pop.hist_small)):
                say(f"walletd {name}")
                scenarios[f"walletd.{name}"] = summarize(
                    await self.drive(name, history_tpl, [[owner.token, owner.wallets[CUR]]]))


async def chain_catch_up(conn: asyncpg.Connection, timeout: float = 900) -> dict:
    """Seconds until every journal entry is sealed, and until the self-audit has checked every seal."""
    started = time.monotonic()
    sealed_s = None
    while time.monotonic() - started < timeout:
        entries, sealed, checked = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM journal_entries), (SELECT coalesce(max(seq), 0) FROM journal_seals), "
            "(SELECT verified_seq FROM audit_cursor)")
        if sealed_s is None and sealed >= entries:
            sealed_s = round(time.monotonic() - started, 1)
        if sealed >= entries and checked >= sealed:
            return {"chain_entries": entries, "chain_sealed_after_s": sealed_s,
                    "chain_checked_after_s": round(time.monotonic() - started, 1)}
        await asyncio.sleep(0.5)
    raise HarnessError(f"the journal's sealer or self-audit did not catch up within {timeout} s")
