-- walletd migration 0013: the chain's BRIN indexes are kept summarized by the sealer, and the one on
-- transactions is plain minmax. Plain DDL, runs once.
--
-- A BRIN scan reads every block range that has no summary yet, and only VACUUM summarizes them
-- (autovacuum comes once a fifth of a table is new: 200,000 postings on a million). Until then the
-- sealer's and the self-audit's reads by entry id (migration 0011) read the whole unsummarized
-- tail each time: after the bench's transfer runs, about 9,700 pages per read, and the sealing and
-- checking of a settlement burst cost PostgreSQL 3.3 s against 1.0 s with this function
-- (pg_stat_statements, `python -m bench.run --only transfers,settlement`). The sealer now calls
-- walletd_summarize_chain_ranges() before each seal.
--
-- It summarizes the full block ranges at each table's end, newest first, until it meets one that
-- already has a summary (VACUUM summarizes every full range, so the unsummarized ones are the
-- tail). Never the last, partial range: an insert into a summarized range must update its summary,
-- and that work would land on the commit path (migration 0011's reason for BRIN). 32 is the
-- indexes' pages_per_range (migration 0011). A range being summarized by VACUUM (which holds the
-- same lock) is left for it: after lock_timeout the function gives up and returns what it did.
-- On Citus the coordinator's tables are empty shells, so this summarizes nothing there; the
-- workers' shards are summarized by their own VACUUM.
--
-- transactions' index was minmax-multi (migration 0011). A minmax-multi range summarized while rows
-- are still being inserted into it can lose values: with 8 writers inserting and VACUUM summarizing
-- meanwhile, an equality search through the index missed 8 and 13 of 20,000 sampled rows
-- (PostgreSQL 18.6, `python -m bench.brin_race`; with this function's loop summarizing, 1 of 3,000
-- in one run and none in another), never once the writers had stopped. Plain minmax missed none in
-- the same runs, nor with rows' ids rewritten as a settlement does (a throwaway variant of that
-- script). So autovacuum could already hide a record from these reads; summarizing every round
-- made it likely. A record the sealer or the self-audit does not find makes its entry read as
-- altered (a full `make bench` run reported 14 entries of one batch). Plain minmax stretches a
-- range over the time a record in it stayed pending, so the reads by entry id also read the ranges
-- of the records settled in the interval they ask for (a settlement burst's records read: 6.7 ms
-- against 5.7 per call). Rebuilding the index holds writes to transactions for one pass over it.
DROP INDEX transactions_entry_brin;
CREATE INDEX transactions_entry_brin ON transactions USING brin (entry_id) WITH (pages_per_range = 32);

CREATE FUNCTION walletd_summarize_chain_ranges() RETURNS integer
LANGUAGE plpgsql SET lock_timeout = '100ms' AS $$
DECLARE
    target record;
    range_start bigint;
    got integer;
    done integer;
    summarized integer := 0;
BEGIN
    FOR target IN SELECT * FROM (VALUES ('postings_entry_brin'::regclass, 'postings'::regclass),
                                        ('transactions_entry_brin'::regclass, 'transactions'::regclass))
                                 AS t(brin, heap) LOOP
        range_start := (pg_relation_size(target.heap) / current_setting('block_size')::bigint / 32 - 1) * 32;
        done := 0;
        BEGIN
            WHILE range_start >= 0 LOOP
                got := brin_summarize_range(target.brin, range_start);
                EXIT WHEN got = 0;
                done := done + got;
                range_start := range_start - 32;
            END LOOP;
            summarized := summarized + done;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- VACUUM or another sealer is at it: this table's summaries of this call are undone
        END;
    END LOOP;
    RETURN summarized;
END $$;
