-- The hash chain's functions, the Citus edition: installed by walletd/persistence/citus/distribute.py
-- over migration 0011's single-node functions, after every migrate on a Citus coordinator. Same
-- chain, same text, same answers; docs/citus.md says what the chain means on a cluster.
--
-- The order is the same (xid, id), where an entry's xid is the coordinator's transaction id, which
-- the Citus batch write stores (write_batch.sql): every walletd write enters through the coordinator,
-- so its transaction ids order the whole cluster's entries as they order a single node's. The
-- horizon needs one more condition: below pg_snapshot_xmin every transaction has finished on the
-- coordinator, but one that committed there may not have committed its prepared part on a worker
-- yet (two-phase commit: the coordinator decides, then each worker commits), and its entries would
-- not be visible to the sealer. Citus keeps a row in pg_dist_transaction for each prepared part
-- until the part is committed on its worker, so the sealer takes those rows in the same snapshot as
-- the horizon, runs Citus's two-phase recovery (which commits what is left and deletes their rows),
-- and seals only if none of them is left; else it seals nothing this round (a worker being down
-- holds sealing back until its recovery).
--
-- walletd_chain_bodies: a transfer between two users is stored once per side; the chain covers the
-- record once, its first copy (owner_id = user_id). The audit rebuilds every copy's text, so a copy
-- that differs from the first reads as an altered entry.

CREATE OR REPLACE FUNCTION walletd_chain_bodies(ids uuid[]) RETURNS TABLE (entry_id uuid, body text)
LANGUAGE sql STABLE SET enable_nestloop = off AS $$
    WITH bounds AS (SELECT (SELECT i FROM unnest(ids) AS i ORDER BY i LIMIT 1) AS lo,
                           (SELECT i FROM unnest(ids) AS i ORDER BY i DESC LIMIT 1) AS hi),
    posted AS (
        SELECT p.entry_id, string_agg(p.item, ',' ORDER BY p.item COLLATE "C") AS items
          FROM (SELECT p.entry_id, format('["%s","%s","%s","%s"]', p.wallet_id, p.currency_id, p.bucket, p.amount)
                       AS item
                  FROM bounds, postings p JOIN unnest(ids) AS wanted(id) ON wanted.id = p.entry_id
                 WHERE p.entry_id BETWEEN bounds.lo AND bounds.hi) p
         GROUP BY p.entry_id
    ),
    recorded AS (
        SELECT t.entry_id, string_agg(t.item, ',' ORDER BY t.item COLLATE "C") AS items
          FROM (SELECT t.entry_id,
                       format('["%s","%s","%s",%s,%s,%s,"%s",%s,%s,%s,"%s","%s","%s",%s,%s,%s,"%s",%s,%s,%s]',
                              t.id, t.type, t.status, coalesce('"' || t.from_wallet_id || '"', 'null'),
                              coalesce('"' || t.from_currency_id || '"', 'null'),
                              coalesce('"' || t.from_user_id || '"', 'null'), t.amount,
                              coalesce('"' || t.to_wallet_id || '"', 'null'),
                              coalesce('"' || t.to_currency_id || '"', 'null'),
                              coalesce('"' || t.to_user_id || '"', 'null'), t.rate, t.converted_amount, t.user_id,
                              coalesce('"' || t.service_user_id || '"', 'null'),
                              coalesce('"' || t.external_wallet_id || '"', 'null'),
                              coalesce('"' || t.parent_id || '"', 'null'),
                              to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                              coalesce('"' || t.commission_rate || '"', 'null'),
                              coalesce('"' || t.commission || '"', 'null'),
                              coalesce('"' || t.settled_by || '"', 'null')) AS item
                  FROM bounds, transactions t JOIN unnest(ids) AS wanted(id) ON wanted.id = t.entry_id
                 WHERE t.entry_id BETWEEN bounds.lo AND bounds.hi AND t.status <> 'pending'
                   AND t.owner_id = t.user_id) t
         GROUP BY t.entry_id
    )
    SELECT e.id, format('"%s","%s",%s,"%s",[%s],[%s]', e.id, e.kind, coalesce(to_json(e.request_id)::text, 'null'),
                        to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                        posted.items, recorded.items)
      FROM journal_entries e
      LEFT JOIN posted ON posted.entry_id = e.id
      LEFT JOIN recorded ON recorded.entry_id = e.id AND e.kind <> 'withdraw_expired'
     WHERE e.id = ANY(ids)
$$;

CREATE OR REPLACE FUNCTION walletd_seal_journal(max_entries integer)
RETURNS TABLE (sealed integer, head_seq bigint, head_hash bytea, head_entry_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint := 0;
    last_xid xid8 := '0';
    last_id uuid := '00000000-0000-0000-0000-000000000000';
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    horizon xid8;
    committing text[];
    batch_ids uuid[];
    batch_xids xid8[];
    item record;
    seqs bigint[] := '{}';
    ids uuid[] := '{}';
    xids xid8[] := '{}';
    prevs bytea[] := '{}';
    hashes bytea[] := '{}';
BEGIN
    IF NOT pg_try_advisory_xact_lock(2002873453) THEN  -- 0x77616C6D: the sealer's own lock
        RETURN QUERY SELECT 0, NULL::bigint, NULL::bytea, NULL::uuid;
        RETURN;
    END IF;
    SELECT s.seq, s.entry_xid, s.entry_id, s.hash INTO last_seq, last_xid, last_id, prev
      FROM journal_seals s ORDER BY s.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        last_seq := 0;
        last_xid := '0';
        last_id := '00000000-0000-0000-0000-000000000000';
        prev := '\x0000000000000000000000000000000000000000000000000000000000000000';
    END IF;
    SELECT pg_snapshot_xmin(pg_current_snapshot()), ARRAY(SELECT d.gid FROM pg_dist_transaction d)
      INTO horizon, committing;
    IF cardinality(committing) > 0 THEN
        BEGIN
            PERFORM recover_prepared_transactions();
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;  -- Citus's maintenance daemon recovers them within citus.recover_2pc_interval
        END;
        IF EXISTS (SELECT 1 FROM pg_dist_transaction d WHERE d.gid = ANY(committing)) THEN
            horizon := '0';  -- a worker has not committed its part yet: seal nothing this time
        END IF;
    END IF;
    SELECT array_agg(e.id ORDER BY e.xid, e.id), array_agg(e.xid ORDER BY e.xid, e.id)
      INTO batch_ids, batch_xids
      FROM (SELECT j.id, j.xid FROM journal_entries j
             WHERE (j.xid, j.id) > (last_xid, last_id) AND j.xid < horizon
             ORDER BY j.xid, j.id LIMIT max_entries) e;
    IF batch_ids IS NOT NULL THEN
        FOR item IN
            SELECT o.ord, b.body FROM unnest(batch_ids) WITH ORDINALITY AS o(id, ord)
              JOIN walletd_chain_bodies(batch_ids) b ON b.entry_id = o.id
             ORDER BY o.ord
        LOOP
            last_seq := last_seq + 1;
            seqs := seqs || last_seq;
            ids := ids || batch_ids[item.ord];
            xids := xids || batch_xids[item.ord];
            prevs := prevs || prev;
            prev := sha256(convert_to('["walletd-journal-1","' || encode(prev, 'hex') || '",' || item.body || ']',
                                      'UTF8'));
            hashes := hashes || prev;
        END LOOP;
        INSERT INTO journal_seals (seq, entry_id, entry_xid, prev_hash, hash)
        SELECT * FROM unnest(seqs, ids, xids, prevs, hashes);
    END IF;
    RETURN QUERY SELECT cardinality(seqs), last_seq, CASE WHEN last_seq > 0 THEN prev END,
                        CASE WHEN last_seq > 0 THEN coalesce(ids[cardinality(ids)], last_id) END;
END $$;
