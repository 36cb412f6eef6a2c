"""Finding out an in-doubt write on Citus: its coordinator may have decided to commit while a
worker has not committed its part yet.

Every walletd write on Citus commits with two-phase commit (citus/write_batch.sql): the
coordinator's commit decides, then each worker commits its prepared part. Once the coordinator's
backend of an in-doubt write is gone (persistence/in_doubt.py stops it), the decision is taken,
but a part left prepared (the backend died before it sent COMMIT PREPARED) is not visible on its
worker, and a lookup of the write's marker there would read "not committed". Citus's two-phase
recovery commits such parts (or rolls back those of a transaction that did not commit), and keeps
a row in pg_dist_transaction for each part until it is committed on its worker; a part's name
carries the coordinator backend's pid. So: run the recovery until no row of that backend is left,
then the marker tells the truth. A worker that cannot be reached keeps its rows: the lookup waits,
and past the deadline the outcome stays unknown, never "not committed".
"""

from __future__ import annotations

import asyncio
import time

# citus_<group>_<pid>_<transaction number>_<connection>: the parts prepared by one coordinator backend.
_PARTS_OF = r"SELECT count(*) FROM pg_dist_transaction WHERE gid LIKE 'citus\_%\_' || $1::int || '\_%'"


async def finish_two_phase(conn, pid: int, deadline: float) -> None:
    """Returns once no part prepared by the coordinator backend `pid` is left uncommitted or not
    rolled back; TimeoutError past the deadline."""
    while True:
        await conn.execute("SELECT recover_prepared_transactions()")
        if not await conn.fetchval(_PARTS_OF, pid):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError("a two-phase commit's parts are still prepared on a worker")
        await asyncio.sleep(0.1)
