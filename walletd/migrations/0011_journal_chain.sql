-- walletd migration 0011: reversals, the journal's hash chain, and the self-audit's bookkeeping.
-- Plain DDL, runs once. docs/journal-integrity.md explains the chain; this file is its definition.
--
-- What every commit pays for it (everything else here runs off the request path):
--   journal_entries: one xid8 column filled by pg_current_xact_id() and one B-tree entry (xid, id)
--   postings, transactions: one BRIN entry each (entry_id), which only touches an already
--     summarized block range; the newest rows sit in unsummarized ranges until VACUUM summarizes them
--   transactions: the predicate of the partial unique index on reversals

-- Reversals: a compensating entry recorded as type 'reversal' with parent_id = the original. At most
-- one per original whichever process writes it: the unique index covers reversal rows only.
ALTER TABLE transactions DROP CONSTRAINT transactions_type_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_type_check
    CHECK (type IN ('deposit', 'withdraw', 'transfer', 'commission', 'bonus', 'reversal')) NOT VALID;
ALTER TABLE transactions VALIDATE CONSTRAINT transactions_type_check;
CREATE UNIQUE INDEX transactions_one_reversal ON transactions (parent_id) WHERE type = 'reversal';

-- The chain's order: the writing transaction, then the entry id. A transaction's xid is fixed before
-- it commits and every transaction still running has one at least pg_snapshot_xmin, so sealing only
-- entries below that horizon, in (xid, id) order, never passes over an entry that commits later.
-- Entries written before this migration read as xid 0 (a constant default adds the column without
-- rewriting the table) and are sealed first, in id order.
ALTER TABLE journal_entries ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE journal_entries ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX journal_entries_chain_order ON journal_entries (xid, id);

-- The sealer and the audit read an entry's postings and records by entry id, a few thousand ids at a
-- time. Ids are UUIDv7 and rows are appended in time order, so a BRIN index finds them in a few
-- block ranges. minmax-multi on transactions: a settlement rewrites its pending record with a new
-- entry_id, which would stretch a plain minmax range over the whole time it stayed pending.
CREATE INDEX postings_entry_brin ON postings USING brin (entry_id) WITH (pages_per_range = 32);
CREATE INDEX transactions_entry_brin ON transactions USING brin (entry_id uuid_minmax_multi_ops)
    WITH (pages_per_range = 32);

-- One seal per journal entry, append-only: seq 1, 2, 3 … in chain order; hash = SHA-256 of the
-- entry's canonical text, which starts with prev_hash (the previous seal's hash; 32 zero bytes for
-- seq 1). prev_hash is stored although it repeats the previous row's hash: when a seal's hash is
-- rewritten, the next seal still holds the original, so the audit can name the rewritten one.
CREATE TABLE journal_seals (
    seq       bigint PRIMARY KEY CHECK (seq > 0),
    entry_id  uuid NOT NULL UNIQUE,
    entry_xid xid8 NOT NULL,
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash      bytea NOT NULL CHECK (length(hash) = 32),
    sealed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER journal_seals_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_seals
    FOR EACH STATEMENT EXECUTE FUNCTION walletd_append_only();

-- The canonical text of one entry without its first two items (version and prev_hash), as
-- docs/journal-integrity.md defines it: a compact JSON array whose values are all strings or null
-- (ids as lower-case UUIDs, amounts as NUMERIC text with 10 decimals, timestamps in UTC with
-- microseconds), postings and records sorted by their own text (byte order). Only request_id can
-- hold characters JSON escapes, so only it goes through to_json: every other value is a UUID, a
-- number, a timestamp or a word of walletd's vocabulary, quoted as it is (format() builds each item
-- in one call: a fraction of the cost of concatenating it piece by piece). A record belongs to the
-- entry it names once it is no longer pending: a withdrawal's pending record names its hold entry,
-- then moves to the entry that settles it. Except on a withdraw_expired entry (the previous
-- release's expiry): the operator may still reconcile that record, and rejecting it changes the
-- record without writing an entry, so it stays outside the chain.
--
-- Postings and records are found by the id range [lowest, highest] (the BRIN scan) joined with the
-- ids: that range looks tiny to the planner, which would then probe the id list once per row it
-- finds; a hash join costs one pass (hence no nested loops here).
CREATE FUNCTION walletd_chain_bodies(ids uuid[]) RETURNS TABLE (entry_id uuid, body text)
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
                 WHERE t.entry_id BETWEEN bounds.lo AND bounds.hi AND t.status <> 'pending') t
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

-- Seals up to max_entries of the oldest unsealed entries below the horizon, in (xid, id) order, and
-- returns how many it sealed with the chain's head. One sealer at a time (a transaction-level
-- advisory lock: another caller returns at once with 0); the primary key on seq is the last guard.
CREATE FUNCTION walletd_seal_journal(max_entries integer)
RETURNS TABLE (sealed integer, head_seq bigint, head_hash bytea, head_entry_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint := 0;
    last_xid xid8 := '0';
    last_id uuid := '00000000-0000-0000-0000-000000000000';
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    horizon xid8;
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
    horizon := pg_snapshot_xmin(pg_current_snapshot());
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

-- The self-audit's place in the chain (one row) and, per wallet, the sum of the postings of every
-- entry it has verified: a wallet's balance must equal that plus the postings written since.
CREATE TABLE audit_cursor (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    verified_seq bigint NOT NULL DEFAULT 0,
    passed_at    timestamptz,
    full_pass_at timestamptz
);
CREATE TABLE audit_balances (
    wallet_id uuid PRIMARY KEY,
    balance   numeric(38, 10) NOT NULL,
    reserved  numeric(38, 10) NOT NULL
);
-- Problems the self-audit found, once each (key names the problem, e.g. the seal or the wallet);
-- an operator deletes a row once it is dealt with.
CREATE TABLE audit_problems (
    key      text PRIMARY KEY,
    problem  text NOT NULL,
    found_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_cursor DEFAULT VALUES;
