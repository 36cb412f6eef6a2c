-- walletd migration 0009: the books (balances at an instant, statements). Plain DDL, runs once.
--
-- Every posting carries the time of its journal entry (created_at) and the transaction record it
-- realizes (transaction_id: the record a statement line names; the nil id when none is known),
-- and one index holds a wallet's postings in time order. Balance at T = the wallet's balance now
-- minus its postings after T; a statement is a range of that index. docs/books.md says why this
-- and not a running balance.
--
-- Existing postings are backfilled from the journal and the records. The append-only trigger
-- refuses UPDATE; this migration is the one writer allowed: its ALTER TABLE holds the table's
-- exclusive lock until it commits, so nothing else writes postings meanwhile.

ALTER TABLE postings ADD COLUMN created_at timestamptz, ADD COLUMN transaction_id uuid;

-- The record each (entry, wallet) realizes, by the rules walletd's planning now follows: the
-- deposit or withdrawal an entry settles or holds; else the wallet's own record in the entry (a
-- transfer, a bonus); else a withdrawal hold whose record has since moved on to its settlement
-- entry (same wallet, same time); else any record of the entry (an exchange desk's side).
CREATE TEMPORARY TABLE posting_owner ON COMMIT DROP AS
WITH pairs AS (
    SELECT DISTINCT p.entry_id, p.wallet_id, e.created_at, e.kind
      FROM postings p JOIN journal_entries e ON e.id = p.entry_id
), settled AS (
    SELECT DISTINCT ON (entry_id) entry_id, id FROM transactions
     WHERE entry_id IS NOT NULL AND type IN ('deposit', 'withdraw') ORDER BY entry_id, id
), own AS (
    SELECT DISTINCT ON (entry_id, wallet_id) entry_id, wallet_id, id FROM (
        SELECT entry_id, from_wallet_id AS wallet_id, id FROM transactions WHERE entry_id IS NOT NULL AND parent_id IS NULL
        UNION ALL
        SELECT entry_id, to_wallet_id, id FROM transactions WHERE entry_id IS NOT NULL AND parent_id IS NULL
    ) sides WHERE wallet_id IS NOT NULL ORDER BY entry_id, wallet_id, id
), held AS (
    SELECT DISTINCT ON (from_wallet_id, created_at) from_wallet_id AS wallet_id, created_at, id
      FROM transactions WHERE type = 'withdraw' ORDER BY from_wallet_id, created_at, id
), any_record AS (
    SELECT DISTINCT ON (entry_id) entry_id, id FROM transactions WHERE entry_id IS NOT NULL ORDER BY entry_id, id
)
SELECT pr.entry_id, pr.wallet_id, pr.created_at,
       coalesce(s.id, o.id, CASE WHEN pr.kind = 'withdraw_hold' THEN h.id END, a.id) AS transaction_id
  FROM pairs pr
  LEFT JOIN settled s ON s.entry_id = pr.entry_id
  LEFT JOIN own o ON o.entry_id = pr.entry_id AND o.wallet_id = pr.wallet_id
  LEFT JOIN held h ON h.wallet_id = pr.wallet_id AND h.created_at = pr.created_at
  LEFT JOIN any_record a ON a.entry_id = pr.entry_id;

ALTER TABLE postings DISABLE TRIGGER postings_append_only;
UPDATE postings p SET created_at = o.created_at,
                    transaction_id = coalesce(o.transaction_id, '00000000-0000-0000-0000-000000000000')
  FROM posting_owner o WHERE o.entry_id = p.entry_id AND o.wallet_id = p.wallet_id;
ALTER TABLE postings ENABLE TRIGGER postings_append_only;

-- A posting written by hand in the same transaction as its entry gets the entry's time (both
-- default to the transaction's start) and names no record; walletd writes both, and `walletd
-- audit` checks that every posting's time is its entry's.
ALTER TABLE postings ALTER COLUMN created_at SET NOT NULL, ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN transaction_id SET NOT NULL,
    ALTER COLUMN transaction_id SET DEFAULT '00000000-0000-0000-0000-000000000000';

-- The one new index of the hot insert: a wallet's postings in time order, the key being exactly
-- a statement line's (time, entry, record), so a page is a range of it read in order, grouped as
-- it comes and cut at its limit. bucket and amount are included, so a balance at an instant and
-- a statement's lines are index-only scans.
CREATE INDEX postings_wallet_time ON postings (wallet_id, created_at, entry_id, transaction_id)
    INCLUDE (bucket, amount);

-- walletd_write_batch as 0006 left it, but each posting is written with the batch's time and its
-- record: doc.postings items are {entry_id, wallet_id, currency_id, bucket, amount,
-- transaction_id} (transaction_id absent or null: the nil id).
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
