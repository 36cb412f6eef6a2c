-- walletd migration 0012: a settlement's records are looked up by primary key. Plain DDL, runs once.
--
-- PL/pgSQL keeps a statement's generic plan for the session. walletd_write_batch's UPDATE of the
-- settled records, planned while transactions was small (a new database, the first batches of a
-- connection), kept a sequential scan of the whole table joined by hash with the batch's ids: at
-- 20,000 records, 2-4 ms of a settlement batch's 4-5 ms (auto_explain in the settlement bench),
-- until an ANALYZE happened to invalidate the plan. Now the records are looked up by primary key
-- whatever the statistics said when the plan was made: sequential scans are off inside the
-- function (every table it or its triggers read has the index it needs), and the ids are also
-- given as an array the index scan can use. Otherwise the function is the one of migration 0009; a
-- later CREATE OR REPLACE must keep the SET clause. On Citus, `walletd migrate` installs the Citus
-- edition again after this (persistence/citus/distribute.py).

CREATE OR REPLACE FUNCTION walletd_write_batch(doc jsonb) RETURNS bigint LANGUAGE plpgsql
    SET enable_seqscan = off AS $$
DECLARE
    at constant timestamptz := (doc->>'now')::timestamptz;
    settled_count bigint;
BEGIN
    WITH entries AS (
        INSERT INTO journal_entries (id, kind, request_id, created_at)
        SELECT e.id, e.kind, e.request_id, at
          FROM jsonb_to_recordset(doc->'entries') AS e(id uuid, kind text, request_id text)
    ), posted AS (
        INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount, created_at, transaction_id)
        SELECT p.entry_id, p.wallet_id, p.currency_id, p.bucket, p.amount, at,
               coalesce(p.transaction_id, '00000000-0000-0000-0000-000000000000')
          FROM jsonb_to_recordset(doc->'postings')
            AS p(entry_id uuid, wallet_id uuid, currency_id int2, bucket text, amount numeric, transaction_id uuid)
    ), recorded AS (
        INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount,
                                  to_wallet_id, to_currency_id, to_user_id, rate, converted_amount, user_id,
                                  service_user_id, external_wallet_id, parent_id, entry_id, created_at,
                                  commission_rate, commission)
        SELECT t.* FROM jsonb_to_recordset(doc->'transactions')
            AS t(id uuid, type text, status text, from_wallet_id uuid, from_currency_id int2, from_user_id uuid,
                 amount numeric, to_wallet_id uuid, to_currency_id int2, to_user_id uuid, rate numeric,
                 converted_amount numeric, user_id uuid, service_user_id uuid, external_wallet_id uuid,
                 parent_id uuid, entry_id uuid, created_at timestamptz, commission_rate numeric, commission numeric)
    ), settled AS (
        UPDATE transactions t SET status = u.status, entry_id = coalesce(u.entry_id, t.entry_id), updated_at = at,
                                  settled_by = coalesce(u.settled_by, 'service')
          FROM jsonb_to_recordset(doc->'settled')
            AS u(id uuid, status text, entry_id uuid, from_status text, settled_by text)
         WHERE t.id = u.id AND t.status = coalesce(u.from_status, 'pending')
           -- The same ids as an array, which the planner takes for a few elements (not the 100 rows
           -- it assumes of jsonb_to_recordset): it looks them up by primary key.
           AND t.id = ANY (ARRAY(SELECT (s->>'id')::uuid FROM jsonb_array_elements(doc->'settled') AS s))
        RETURNING 1
    ), paid_out AS (
        UPDATE external_wallets e SET amount_withdraw = e.amount_withdraw + c.amount
          FROM (SELECT id, sum(amount) AS amount
                  FROM jsonb_to_recordset(doc->'paid_out') AS c(id uuid, amount numeric) GROUP BY id) c
         WHERE e.id = c.id
    ), remembered AS (
        INSERT INTO idempotency_keys (principal_id, key, request_hash, status_code, response)
        SELECT i.* FROM jsonb_to_recordset(doc->'idempotency')
            AS i(principal_id uuid, key text, request_hash text, status_code int2, response jsonb)
    )
    SELECT walletd_expect(count(*), coalesce(jsonb_array_length(doc->'settled'), 0)) INTO settled_count FROM settled;

    -- The outbox: only deposits and withdrawals publish events; a batch of transfers skips this
    -- statement altogether.
    IF jsonb_array_length(doc->'events') > 0 THEN
        WITH outbox AS (
            INSERT INTO events (id, service_user_id, type, transaction_id, body, created_at)
            SELECT o.id, o.service_user_id, o.type, o.transaction_id, o.body::json, at
              FROM jsonb_to_recordset(doc->'events')
                AS o(id uuid, service_user_id uuid, type text, transaction_id uuid, body text)
            RETURNING id, service_user_id
        )
        INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at)
        SELECT o.id, w.id, at, at FROM outbox o JOIN webhook_endpoints w ON w.service_user_id = o.service_user_id;
    END IF;
    RETURN settled_count;
END $$;
