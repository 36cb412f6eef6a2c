"""Idempotency keys expire: the statement that deletes those older than the retention (run by
jobs/idempotency_sweep.py).

- Retention: `WALLETD_IDEMPOTENCY_RETENTION` seconds (default 86400, the 24 hours the API
  documents). A key is deleted once older than that, measured by the database clock (now(), the
  clock that stamped created_at), so the processes' clocks do not matter. A retry arriving after
  its key was deleted is a new request and moves money again: clients retry within minutes, a day
  is the promise.
- Interval: a sweep at start, then every retention/10, between 1 s and 5 minutes (default 5
  minutes), so a key lives at most retention + interval.
- Safe across processes: each batch is one statement deleting at most `batch` rows picked with
  FOR UPDATE SKIP LOCKED, in its own short transaction. Sweeps of several processes at once take
  disjoint rows instead of queueing behind each other; a row is deleted once; a sweep never holds
  locks across batches and never blocks a request (requests only insert keys and read them).
- Bounded: at most `batch` rows per statement (the index of migration 0002 finds them oldest
  first), batches repeated until one comes back short.
- On Citus (persistence/citus/) one statement deletes every expired key: Citus runs it on each
  shard at once, and it has neither row locks on several shards (FOR UPDATE) nor a DELETE with
  a limit; a sweep's statement is as large as one interval's keys on each shard.
"""

from __future__ import annotations

import asyncio

from walletd.persistence.db import FairPool

BATCH = 1000

_PRUNE = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys
     WHERE created_at < now() - make_interval(secs => $1::double precision)
     ORDER BY created_at LIMIT $2
       FOR UPDATE SKIP LOCKED))
"""


_PRUNE_DISTRIBUTED = ("DELETE FROM idempotency_keys "
                      "WHERE created_at < now() - make_interval(secs => $1::double precision)")


def sweep_interval(retention_seconds: float) -> float:
    return min(300.0, max(1.0, retention_seconds / 10))


async def prune_idempotency_keys(pool: FairPool, retention_seconds: float, batch: int = BATCH) -> int:
    """Deletes every key older than the retention, batch by batch; returns how many went."""
    if pool.distributed:
        return int((await pool.execute(_PRUNE_DISTRIBUTED, float(retention_seconds))).split()[-1])
    total = 0
    while True:
        status = await pool.execute(_PRUNE, float(retention_seconds), batch)
        deleted = int(status.split()[-1])  # "DELETE n"
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(0)  # let requests have the event loop between batches
