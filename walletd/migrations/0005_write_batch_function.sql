-- walletd migration 0005: the batch write as a function of the schema. Plain DDL, runs once.
--
-- walletd_write_batch(doc) writes everything one ledger batch decided, in the caller's transaction
-- (in autocommit: its own). The document, as walletd/persistence/batch_write.py builds it:
--   now          timestamptz text: created_at / updated_at of everything written
--   entries      [{id, kind, request_id}]                            journal_entries
--   postings     [{entry_id, wallet_id, currency_id, bucket, amount}] postings (the trigger moves balances)
--   transactions [{id, type, status, from_wallet_id, ... created_at}] transactions
--   settled      [{id, status, entry_id}]  compare-and-set of pending transactions: if any is no longer
--                pending, serialization_failure and nothing of the batch is written
--   paid_out     [{id, amount}]            external_wallets.amount_withdraw += amount
--   idempotency  [{principal_id, key, request_hash, status_code, response}]
--   events       [{id, service_user_id, type, transaction_id, body}]  the outbox, one delivery row per
--                endpoint of the service user; absent or empty for batches of transfers (skipped)
-- A missing array writes nothing of that kind, so from psql:
--   SELECT walletd_write_batch('{"now": "2026-01-01T00:00:00Z", "entries": [...], "postings": [...]}');
-- Returns the number of transactions settled.
--
-- Postings go in one statement, so the statement-level postings trigger sees whole entries; the
-- foreign keys between its parts (postings -> entries, transactions -> entries) are checked at
-- the end of that statement, so sibling CTEs may reference each other's rows.
CREATE FUNCTION walletd_write_batch(doc jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    at constant timestamptz := (doc->>'now')::timestamptz;
    settled_count bigint;
BEGIN
    WITH entries AS (
        INSERT INTO journal_entries (id, kind, request_id, created_at)
        SELECT e.id, e.kind, e.request_id, at
          FROM jsonb_to_recordset(doc->'entries') AS e(id uuid, kind text, request_id text)
    ), posted AS (
        INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount)
        SELECT p.* FROM jsonb_to_recordset(doc->'postings')
            AS p(entry_id uuid, wallet_id uuid, currency_id int2, bucket text, amount numeric)
    ), recorded AS (
        INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount,
                                  to_wallet_id, to_currency_id, to_user_id, rate, converted_amount, user_id,
                                  service_user_id, external_wallet_id, parent_id, entry_id, created_at)
        SELECT t.* FROM jsonb_to_recordset(doc->'transactions')
            AS t(id uuid, type text, status text, from_wallet_id uuid, from_currency_id int2, from_user_id uuid,
                 amount numeric, to_wallet_id uuid, to_currency_id int2, to_user_id uuid, rate numeric,
                 converted_amount numeric, user_id uuid, service_user_id uuid, external_wallet_id uuid,
                 parent_id uuid, entry_id uuid, created_at timestamptz)
    ), settled AS (
        UPDATE transactions t SET status = u.status, entry_id = coalesce(u.entry_id, t.entry_id), updated_at = at
          FROM jsonb_to_recordset(doc->'settled') AS u(id uuid, status text, entry_id uuid)
         WHERE t.id = u.id AND t.status = 'pending'
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

    -- The outbox (issue 11): only deposits and withdrawals publish events; a batch of transfers
    -- skips this statement altogether.
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
