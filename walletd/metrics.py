"""Prometheus metrics (prometheus_client), served at /metrics.

Cheap on the hot path: per request one histogram observation and one counter increment on
children cached by (method, route template, status), never by path, so the label sets stay
bounded whatever clients send. Gauges that are cheap to read (actors, pool waiters) are sampled
once a second and on every scrape instead of being updated per command.

Several processes (`walletd serve --workers N`): the serve command points PROMETHEUS_MULTIPROC_DIR
at a fresh directory before any metric exists, every process writes its values to memory-mapped
files there (prometheus_client's multiprocess mode), and a scrape of whichever process the
kernel picks aggregates all of them: counters and histograms summed (a retired worker's counts
kept), gauges summed over live processes. One process keeps its values in memory.
"""

from __future__ import annotations

import asyncio
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from walletd.metrics_dir import MULTIPROC_ENV

MULTIPROCESS = MULTIPROC_ENV in os.environ
disable_created_metrics()  # no `_created` series beside every counter: nothing here reads them
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

HTTP_REQUESTS = Counter("walletd_http_requests", "HTTP requests answered, by method, route template and status",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("walletd_http_request_duration_seconds",
                         "Seconds from receiving a request to its response, by method, route template and status",
                         ["method", "route", "status"], buckets=_LATENCY)
COMMIT_SECONDS = Histogram("walletd_commit_duration_seconds",
                           "Seconds the ledger took to apply one group-commit batch (planning and COMMIT)",
                           buckets=_LATENCY)
BATCH_SIZE = Histogram("walletd_commit_batch_size", "Commands carried by one committed batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
COMMIT_BATCHES = Counter("walletd_commit_batches", "Batches committed by the group committer")
COMMIT_COMMANDS = Counter("walletd_commit_commands", "Commands carried by committed batches")
LEDGER_BATCHES = Counter("walletd_ledger_batches", "Batches by the ledger path that wrote them: fast (one "
                         "statement on predicted balances) or locked (SELECT … FOR UPDATE fallback)", ["path"])
FAST_PATH = LEDGER_BATCHES.labels("fast")
LOCKED_PATH = LEDGER_BATCHES.labels("locked")
ACTORS = Gauge("walletd_actors", "Live wallet actors (sampled each second and at scrape)",
               multiprocess_mode="livesum")
MAILBOX_DEPTH = Gauge("walletd_mailbox_depth", "Commands queued in wallet actors' mailboxes, not yet handed to "
                      "the committer", multiprocess_mode="livesum")
POOL_WAITERS = Gauge("walletd_pool_waiters", "Coroutines waiting for a database connection (sampled each second "
                     "and at scrape)", multiprocess_mode="livesum")
WEBHOOKS_DELIVERED = Counter("walletd_webhook_delivered", "Webhook deliveries the receiver acknowledged (2xx)")
WEBHOOKS_RETRIED = Counter("walletd_webhook_retried", "Webhook delivery attempts that failed and will be retried")
WEBHOOKS_FAILED = Counter("walletd_webhook_failed", "Webhook deliveries given up past the retry horizon")
WEBHOOK_LATENCY = Histogram("walletd_webhook_delivery_latency_seconds",
                            "Seconds from an event's commit to its acknowledged delivery",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
WEBHOOKS_IN_FLIGHT = Gauge("walletd_webhook_in_flight", "Webhook deliveries being sent now",
                           multiprocess_mode="livesum")
# The same database count whichever process reads it: the latest reading, never a sum.
WEBHOOKS_PENDING = Gauge("walletd_webhook_deliveries_pending", "Webhook deliveries waiting in the database "
                         "(all processes; read at scrape)", multiprocess_mode="mostrecent")
# Read from the database at scrape, like the webhook backlog: the latest reading, never a sum.
PENDING_STALE = Gauge("walletd_pending_stale", "Pending deposits and withdrawals past WALLETD_PENDING_TTL, by type "
                      "(all processes; read at scrape)", ["type"], multiprocess_mode="mostrecent")
SETTLEMENT_CONFLICTS = Counter("walletd_settlement_conflicts", "Payment-service settlements refused because the "
                               "operator (or the previous release's expiry) had decided otherwise")
WORKERS = Gauge("walletd_workers", "walletd processes serving the port", multiprocess_mode="livesum")
HTTP_ERRORS = Counter("walletd_http_errors", "Error answers by their `code` (the code field of the JSON error body)",
                      ["code"])
# Probed at every scrape and /ready: what the probe found last, never a sum over processes.
DATABASE_UP = Gauge("walletd_database_up", "1 when walletd's last probe (at scrape or /ready) reached a writable "
                    "PostgreSQL with walletd's schema, else 0", multiprocess_mode="mostrecent")
# The journal's chain and its self-audit (walletd/integrity/). The gauges read the database's record,
# the same whichever process reads it: the latest reading, never a sum.
JOURNAL_SEALED = Counter("walletd_journal_sealed_entries", "Journal entries this process sealed into the hash chain")
AUDIT_VERIFIED = Counter("walletd_audit_verified_entries", "New journal entries the self-audit checked (chain, "
                         "balances, holds)")
AUDIT_PROBLEMS = Gauge("walletd_audit_problems", "Problems the self-audit has found and nobody has cleared yet "
                       "(rows of audit_problems)", multiprocess_mode="mostrecent")
AUDIT_WAITED = Counter("walletd_audit_waited_seconds", "Seconds the self-audit's passes waited for a moment with "
                       "no request in flight in this process (WALLETD_AUDIT_MAX_WAIT_SECONDS bounds each pass)")
AUDIT_LAST_SUCCESS = Gauge("walletd_audit_last_success_timestamp_seconds", "When the self-audit last completed "
                           "a pass (Unix time)", multiprocess_mode="mostrecent")

_children: dict[tuple[str, str, int], tuple] = {}


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    key = (method if method in _METHODS else "OTHER", route or "unmatched", status)
    child = _children.get(key)
    if child is None:
        labels = (key[0], key[1], str(status))
        child = _children[key] = (HTTP_REQUESTS.labels(*labels), HTTP_SECONDS.labels(*labels))
    child[0].inc()
    child[1].observe(seconds)


_error_children: dict[str, Counter] = {}


def answered_error(code: str) -> None:
    """Codes come from the error classes, never from a request: the label set stays bounded."""
    child = _error_children.get(code)
    if child is None:
        child = _error_children[code] = HTTP_ERRORS.labels(code)
    child.inc()


def know_error_codes(codes) -> None:
    """Every code's series exists from the start, at 0: a rate over a code never seen is 0, not no data."""
    for code in codes:
        if code not in _error_children:
            _error_children[code] = HTTP_ERRORS.labels(code)


def committed(size: int, seconds: float) -> None:
    COMMIT_SECONDS.observe(seconds)
    BATCH_SIZE.observe(size)
    COMMIT_BATCHES.inc()
    COMMIT_COMMANDS.inc(size)


def sample(registry, pool) -> None:
    """The gauges read from live state (cheap: no walk over the actors)."""
    ACTORS.set(len(registry.actors))
    POOL_WAITERS.set(pool.waiters)


async def sampler(registry, pool, interval: float = 1.0) -> None:
    WORKERS.set(1)
    while True:
        sample(registry, pool)
        await asyncio.sleep(interval)


def exposition() -> bytes:
    if MULTIPROCESS:
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return generate_latest(collected)
    return generate_latest(REGISTRY)
