"""Whether a BRIN index still finds every row when its ranges are summarized while rows go in.

    python -m bench.brin_race [--seconds 40] [--writers 8] [--sample 20000] [--summarizer vacuum|walletd]

The sealer and the self-audit find an entry's postings and records through BRIN indexes on
entry_id (migration 0011); the sealer summarizes their full ranges as the tables grow (migration
0013), and VACUUM summarizes them too, both while walletd keeps inserting. This starts a throwaway
embedded PostgreSQL with two tables shaped like postings (UUIDv7 ids appended in time order, 32
pages per range), one indexed with the plain minmax operator class and one with minmax-multi;
`--writers` connections insert batches of ids into both while one more summarizes (VACUUM, or the
same newest-first loop as walletd_summarize_chain_ranges). Then, with the writers stopped, it
looks up `--sample` random rows of each table by equality through the index alone and prints how
many it did not find. A missed row is a wrong summary: the reads by entry id would skip that row.
Figures, not a test: a run that misses nothing does not prove nothing can be missed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

import asyncpg

from walletd.domain.ids import new_id
from walletd.persistence import embedded

TABLES = {"minmax": "uuid_minmax_ops", "minmax_multi": "uuid_minmax_multi_ops"}
SUMMARIZE = """
DO $$
DECLARE
    heap regclass;
    range_start bigint;
BEGIN
    FOREACH heap IN ARRAY ARRAY['minmax'::regclass, 'minmax_multi'::regclass] LOOP
        range_start := (pg_relation_size(heap) / current_setting('block_size')::bigint / 32 - 1) * 32;
        WHILE range_start >= 0 AND brin_summarize_range((heap::text || '_brin')::regclass, range_start) > 0 LOOP
            range_start := range_start - 32;
        END LOOP;
    END LOOP;
END $$"""


async def run(seconds: float, writers: int, sample: int, summarizer: str) -> None:
    with tempfile.TemporaryDirectory(prefix="walletd-brin-race-") as workdir:
        server = embedded.start(Path(workdir), throwaway=True)
        try:
            url = embedded.database_url(server)
            admin = await asyncpg.connect(url)
            for table, opclass in TABLES.items():
                await admin.execute(f"CREATE TABLE {table} (entry_id uuid NOT NULL, pad text NOT NULL)")
                await admin.execute(f"CREATE INDEX {table}_brin ON {table} USING brin (entry_id {opclass}) "
                                    "WITH (pages_per_range = 32)")
            stop = asyncio.Event()

            async def write() -> None:
                conn = await asyncpg.connect(url)
                while not stop.is_set():
                    ids = [new_id() for _ in range(random.randint(1, 40))]
                    async with conn.transaction():
                        for table in TABLES:
                            await conn.execute(f"INSERT INTO {table} SELECT i, repeat('x', 60) "
                                               "FROM unnest($1::uuid[]) AS i", ids)
                await conn.close()

            async def summarize() -> int:
                conn, rounds = await asyncpg.connect(url), 0
                while not stop.is_set():
                    if summarizer == "vacuum":
                        for table in TABLES:
                            await conn.execute(f"VACUUM {table}")
                    else:
                        await conn.execute(SUMMARIZE)
                    rounds += 1
                    await asyncio.sleep(0.05)
                await conn.close()
                return rounds

            tasks = [asyncio.create_task(write()) for _ in range(writers)]
            summarizing = asyncio.create_task(summarize())
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks)
            rounds = await summarizing
            print(f"{writers} writers for {seconds:g} s, {rounds} summarizing rounds ({summarizer})")
            await admin.execute("SET enable_seqscan = off")
            for table in TABLES:
                rows = await admin.fetchval(f"SELECT count(*) FROM {table}")
                ids = [r[0] for r in await admin.fetch(f"SELECT entry_id FROM {table} TABLESAMPLE SYSTEM (10) "
                                                       f"ORDER BY random() LIMIT {sample}")]
                missed = 0
                for entry_id in ids:
                    missed += not await admin.fetchval(f"SELECT count(*) FROM {table} WHERE entry_id = $1", entry_id)
                print(f"{table:13} {rows:>10,} rows: {missed} of {len(ids):,} sampled rows not found through the index")
            await admin.close()
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--sample", type=int, default=20_000)
    parser.add_argument("--summarizer", choices=("vacuum", "walletd"), default="vacuum")
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.writers, args.sample, args.summarizer))


if __name__ == "__main__":
    main()
