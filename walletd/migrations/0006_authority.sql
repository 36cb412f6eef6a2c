-- walletd migration 0006: authority over money. Plain DDL, runs once.
--
-- 1. A deposit's or withdrawal's commission is fixed when the customer asks: the pending record
--    keeps the rate and the amount (commission_rate, commission), and its settlement charges that.
-- 2. Time never moves money: a pending record past WALLETD_PENDING_TTL becomes stale (stale_at),
--    keeps its hold, and is still settled by the payment service, or ended by the operator.
-- 3. Who decided a settlement (settled_by): the payment service, the operator, or the previous
--    release's expiry. A payment-service settlement refused because the operator (or that expiry)
--    decided otherwise is a conflict for a person to reconcile.
ALTER TABLE transactions
    ADD COLUMN commission_rate numeric(12, 10) CHECK (commission_rate >= 0 AND commission_rate < 1),
    ADD COLUMN commission      numeric(38, 10) CHECK (commission >= 0),
    ADD COLUMN stale_at        timestamptz,
    ADD COLUMN settled_by      text CHECK (settled_by IN ('service', 'operator', 'expiry'));

-- Records the previous release expired. A deposit moved nothing when it expired: it is pending
-- again (the stale sweep finds it past the TTL at once and tells the payment service), so a late
-- `paid` credits it. A withdrawal's hold was returned to the balance by a `withdraw_expired`
-- entry: it stays `expired`, decided by that expiry; the operator reconciles it (docs/authority.md).
UPDATE transactions SET status = 'pending', stale_at = NULL WHERE status = 'expired' AND type = 'deposit';
UPDATE transactions SET settled_by = 'expiry' WHERE status = 'expired';

-- Pending records written before this release get their fee fixed now: the service's current
-- rate for the currency (the defaults 0.01 / 0.02 where it set none), at most the default ceiling
-- 0.10, and the commission rounded half to even to 10 places as walletd rounds it.
UPDATE transactions t
   SET commission_rate = f.rate,
       commission = CASE WHEN f.exact * 10000000000 - trunc(f.exact * 10000000000) = 0.5
                              AND mod(trunc(f.exact * 10000000000), 2) = 0
                         THEN trunc(f.exact, 10) ELSE round(f.exact, 10) END
  FROM (SELECT p.id, r.rate, p.amount * r.rate AS exact
          FROM transactions p
          CROSS JOIN LATERAL (
              SELECT least(coalesce(CASE WHEN p.type = 'deposit' THEN c.deposit_rate ELSE c.withdraw_rate END,
                                    CASE WHEN p.type = 'deposit' THEN 0.01 ELSE 0.02 END), 0.10) AS rate
                FROM (SELECT 1) one
                LEFT JOIN commission_rates c ON c.service_user_id = p.service_user_id
                                            AND c.currency_id = coalesce(p.from_currency_id, p.to_currency_id)) r
         WHERE p.status = 'pending' AND p.type IN ('deposit', 'withdraw')) f
 WHERE t.id = f.id;

-- The stale sweep walks pending records not yet stale, oldest first; the stale list and the
-- walletd_pending_stale gauge read the (few) stale ones and the expired ones left to reconcile.
DROP INDEX transactions_pending_since;
CREATE INDEX transactions_pending_fresh ON transactions (created_at) WHERE status = 'pending' AND stale_at IS NULL;
CREATE INDEX transactions_stale ON transactions (id)
    WHERE (status = 'pending' AND stale_at IS NOT NULL) OR status = 'expired';

-- Stored rates from the previous release were derived half to even, so a round trip could return
-- more than it started with (1.1000000000 × 0.9090909091 > 1). Where a pair's round trip exceeds
-- 1, the higher-numbered currency's side becomes the highest rate that keeps it at most 1
-- (1 / rate, cut to 10 places, computed with 40 places so the cut is exact). Its age is kept:
-- the next update from the provider replaces both sides with rates cut toward the desk.
UPDATE exchange_rates b
   SET rate = trunc(1::numeric(60, 40) / a.rate, 10)
  FROM exchange_rates a
 WHERE a.from_currency_id = b.to_currency_id AND a.to_currency_id = b.from_currency_id
   AND b.from_currency_id > b.to_currency_id AND a.rate * b.rate > 1
   AND trunc(1::numeric(60, 40) / a.rate, 10) > 0;

-- The batch write (0005's walletd_write_batch), now writing the fixed fee of new records and the
-- settler of settled ones. Its document gains:
--   transactions [{…, commission_rate, commission}]  absent on records that fix no fee
--   settled      [{id, status, entry_id, from_status, settled_by}]  the compare-and-set expects
--                from_status ('pending' when absent): a settlement applies only to the state it
--                was planned on, and nothing of the batch is written otherwise.
CREATE OR REPLACE FUNCTION walletd_write_batch(doc jsonb) RETURNS bigint LANGUAGE plpgsql AS $$
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
