"""Webhook delivery: signed POSTs of outbox events, at least once, with backoff.

- One dispatcher task per process (supervised). It keeps at most `concurrency` attempts in
  flight; whenever half the slots are free it claims that many due deliveries (persistence/
  outbox.py: SKIP LOCKED and a lease, so several processes never send one delivery at once),
  records the outcomes gathered meanwhile in one statement, and sleeps up to POLL seconds when
  nothing is due. Memory is bounded by the slots whatever the endpoints do:
  nothing is queued in memory, the queue is the table.
- An attempt is one POST with a total timeout (WALLETD_WEBHOOK_TIMEOUT, default 10 s). Any 2xx
  is delivered; any other status, a timeout or a connection error is retried after
  base × 2^(attempt−1) seconds (WALLETD_WEBHOOK_BACKOFF, default 2 s, capped at one hour), with
  equal jitter (half fixed, half random), so the first retry comes within 1–2 s. Once the next
  attempt would fall past the event's age WALLETD_WEBHOOK_HORIZON (default 3 days), the delivery
  is marked failed and the audit line `webhook.given_up` is logged; the feed still lists it.
- A process killed mid-attempt loses nothing: the row becomes due again when its lease (timeout
  × 2 + 5 s) ends. Duplicates are possible (the receiver got it, walletd died before recording
  it) and carry the same `Walletd-Event-Id`: receivers deduplicate on it.
- Headers: `Walletd-Event-Id`, `Walletd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
  "<t>.<raw body>")>` (signed afresh per attempt; during a secret rotation's overlap one more
  `v1=` under the previous secret), `Content-Type: application/json`. The body is the stored
  event text, byte for byte the same on every attempt and in the feed.
- Where: every attempt checks its target again (walletd/webhooks/targets.py). The client resolves
  names only through the VettingResolver, so it connects to exactly the addresses just checked,
  never follows a redirect, and ignores proxy settings in the environment. A refused target is a
  failed attempt (`webhook.refused`), retried like any other: DNS may change back.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
from yarl import URL

from walletd import metrics
from walletd.keys import SecretUnreadable, ServerKeys
from walletd.logs import get_logger
from walletd.persistence import outbox
from walletd.persistence.db import FairPool
from walletd.persistence.outbox import Delivery
from walletd.webhooks.secrets import seal_stored_secrets, signing_secrets
from walletd.webhooks.signatures import sign
from walletd.webhooks.targets import TargetPolicy, TargetRefused, UnsafeUrl, VettingResolver

log = get_logger("walletd.webhooks")
POLL = 0.1  # seconds between claims while nothing is due (an index probe on an empty partial index)
MAX_DELAY = 3600.0


def backoff(attempt: int, base: float) -> float:
    """Seconds before the attempt after `attempt` (1-based): equal jitter over base × 2^(attempt−1)."""
    delay = min(MAX_DELAY, base * 2 ** min(attempt - 1, 30))
    return delay / 2 + random.uniform(0, delay / 2)


@dataclass(frozen=True)
class Outcome:
    delivery: Delivery
    status: str  # delivered, pending (retry after delay), failed (given up)
    delay: float
    error: str | None
    seconds: float  # delivered: latency since the event; otherwise the event's age


class WebhookDispatcher:
    def __init__(self, pool: FairPool, keys: ServerKeys, policy: TargetPolicy, *, concurrency: int = 16,
                 timeout: float = 10.0, backoff_base: float = 2.0, horizon: float = 259200.0) -> None:
        self.pool = pool
        self.keys = keys
        self.policy = policy
        self.concurrency = concurrency
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.horizon = horizon
        self.lease = timeout * 2 + 5
        self._in_flight: set[asyncio.Task] = set()
        self._slot_freed = asyncio.Event()
        self._outcomes: list[Outcome] = []  # at most `concurrency` between two _record() calls

    async def run(self) -> None:
        """Claims, sends and records forever (run it under walletd.jobs.supervision); first seals the
        secrets still stored in plaintext or under an older key (walletd/webhooks/secrets.py)."""
        await seal_stored_secrets(self.pool, self.keys)
        # No DNS cache: each new connection resolves, and so is checked, again.
        connector = aiohttp.TCPConnector(limit=self.concurrency, resolver=VettingResolver(self.policy),
                                         use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
            try:
                while True:
                    await self._record()
                    free = self.concurrency - len(self._in_flight)
                    # Claim in batches (half the slots at least), not one row per freed slot.
                    if self._in_flight and free < max(1, self.concurrency // 2):
                        await self._wait_for_slot(POLL)
                        continue
                    claimed = await outbox.claim_due(self.pool, free, self.lease)
                    for delivery in claimed:
                        task = asyncio.create_task(self._attempt(session, delivery))
                        self._in_flight.add(task)
                        metrics.WEBHOOKS_IN_FLIGHT.set(len(self._in_flight))
                        task.add_done_callback(self._done)
                    if not claimed:
                        await self._wait_for_slot(POLL)
            finally:
                # Cancelled (shutdown): attempts in flight are abandoned (their leases expire and
                # they are sent again: at least once); outcomes already known are recorded.
                for task in list(self._in_flight):
                    task.cancel()
                if self._in_flight:
                    await asyncio.wait(self._in_flight, timeout=2)
                try:
                    await asyncio.wait_for(self._record(), 2)
                except (TimeoutError, asyncio.CancelledError):
                    pass

    async def _wait_for_slot(self, timeout: float) -> None:
        """Until an attempt ends, wake() is called, or timeout. Cleared after the wait, not
        before: a wake-up that came while claiming is not lost (at worst one claim too many)."""
        try:
            await asyncio.wait_for(self._slot_freed.wait(), timeout)
        except TimeoutError:
            pass
        self._slot_freed.clear()

    def wake(self) -> None:
        """An event was just committed in this process: claim now instead of at the next poll."""
        self._slot_freed.set()

    def _done(self, task: asyncio.Task) -> None:
        self._in_flight.discard(task)
        metrics.WEBHOOKS_IN_FLIGHT.set(len(self._in_flight))
        self._slot_freed.set()

    async def _attempt(self, session: aiohttp.ClientSession, d: Delivery) -> None:
        error = await self._send(session, d)
        now = datetime.now(timezone.utc)
        if error is None:
            self._outcomes.append(Outcome(d, "delivered", 0.0, None, (now - d.created_at).total_seconds()))
            return
        delay = backoff(d.attempt, self.backoff_base)
        age = (now - d.created_at).total_seconds()
        self._outcomes.append(Outcome(d, "failed" if age + delay > self.horizon else "pending", delay, error, age))

    async def _send(self, session: aiohttp.ClientSession, d: Delivery) -> str | None:
        """One POST; None if delivered, else why not."""
        body = d.body.encode()
        try:
            current, *previous = signing_secrets(d, self.keys)
        except (SecretUnreadable, ValueError):  # ValueError: no secret at all, which the schema forbids
            log.error("webhook.secret_unreadable", webhook_id=str(d.endpoint_id))
            return "secret unreadable: no key of WALLETD_SECRETS_KEY opens it"
        url = URL(d.url)
        try:
            self.policy.check_literal(url.raw_host or "")  # an address in the URL never meets the resolver
        except UnsafeUrl as exc:
            return self._refused(d, str(exc))
        headers = {"Content-Type": "application/json", "Walletd-Event-Id": str(d.event_id),
                   "Walletd-Signature": sign(current, body, int(time.time()), *previous),
                   "User-Agent": "walletd-webhooks"}
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    return f"HTTP {response.status}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TargetRefused):
                return self._refused(d, str(exc.os_error))
            return f"{type(exc).__name__}: {exc}"[:300]
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def _refused(self, d: Delivery, reason: str) -> str:
        log.warning("webhook.refused", event_id=str(d.event_id), endpoint_id=str(d.endpoint_id), reason=reason)
        return f"refused: {reason}"[:300]

    async def _record(self) -> None:
        """Every outcome gathered since the last call, in one statement (fenced by the attempt
        number, so a delivery claimed again meanwhile keeps its newer state)."""
        if not self._outcomes:
            return
        outcomes, self._outcomes = self._outcomes, []
        try:
            recorded = await outbox.record_outcomes(self.pool, [
                (o.delivery.event_id, o.delivery.endpoint_id, o.delivery.attempt, o.status, o.delay, o.error)
                for o in outcomes])
        except Exception as exc:  # noqa: BLE001 - the leases make them due again: at least once
            log.warning("webhook.record_failed", outcomes=len(outcomes), error=repr(exc)[:300])
            return
        for o in outcomes:
            if (o.delivery.event_id, o.delivery.endpoint_id) not in recorded:
                continue
            d = o.delivery
            if o.status == "delivered":
                metrics.WEBHOOKS_DELIVERED.inc()
                metrics.WEBHOOK_LATENCY.observe(o.seconds)
            elif o.status == "failed":
                metrics.WEBHOOKS_FAILED.inc()
                log.warning("webhook.given_up", event_id=str(d.event_id), endpoint_id=str(d.endpoint_id),
                            attempts=d.attempt, age_s=round(o.seconds, 1), error=o.error)
            else:
                metrics.WEBHOOKS_RETRIED.inc()
                log.info("webhook.retry", event_id=str(d.event_id), endpoint_id=str(d.endpoint_id),
                         attempt=d.attempt, retry_in_s=round(o.delay, 2), error=o.error)
