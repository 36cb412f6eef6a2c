-- walletd migration 0001: the schema of the first release (commit 1a4ec8a). Every statement is
-- IF NOT EXISTS / OR REPLACE / guarded, so applying it to a database that release created (which
-- has no schema_migrations table) is harmless: that is how such a database is adopted. Released:
-- never edit this file (walletd refuses a checksum change); add 0002_… instead.
--
-- Money invariant: a wallet's balance and reserved_balance change only through postings. An
-- AFTER INSERT statement trigger on postings checks every journal entry sums to zero per currency
-- and applies the postings to the wallets, so balances always equal the sum of their postings.

CREATE TABLE IF NOT EXISTS currencies (
    id      smallint PRIMARY KEY CHECK (id > 0),
    code    text NOT NULL UNIQUE CHECK (code ~ '^[A-Z0-9]{2,10}$'),
    name    text NOT NULL
);

CREATE TABLE IF NOT EXISTS exchange_rates (
    from_currency_id smallint NOT NULL REFERENCES currencies,
    to_currency_id   smallint NOT NULL REFERENCES currencies,
    rate             numeric(30, 10) NOT NULL CHECK (rate > 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_currency_id, to_currency_id),
    CHECK (from_currency_id <> to_currency_id)
);

CREATE TABLE IF NOT EXISTS users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('user', 'service', 'operator')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- kind: 'user' (a person's wallet), 'service' (collects commissions), 'gateway' (mirrors money
-- outside the system, may go negative), 'operator' (funds sign-up credits, may go negative).
CREATE TABLE IF NOT EXISTS wallets (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users,
    currency_id      smallint NOT NULL REFERENCES currencies,
    kind             text NOT NULL CHECK (kind IN ('user', 'service', 'gateway', 'operator')),
    balance          numeric(38, 10) NOT NULL DEFAULT 0,
    reserved_balance numeric(38, 10) NOT NULL DEFAULT 0 CHECK (reserved_balance >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, currency_id, kind),
    UNIQUE (id, currency_id),
    CONSTRAINT balance_not_negative CHECK (balance >= 0 OR kind IN ('gateway', 'operator'))
);

CREATE TABLE IF NOT EXISTS external_wallets (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users,
    currency_id     smallint NOT NULL REFERENCES currencies,
    wallet_name     text NOT NULL,
    card_id         uuid,
    amount_withdraw numeric(38, 10) NOT NULL DEFAULT 0 CHECK (amount_withdraw >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, currency_id)
);

CREATE TABLE IF NOT EXISTS commission_rates (
    service_user_id uuid NOT NULL REFERENCES users,
    currency_id     smallint NOT NULL REFERENCES currencies,
    deposit_rate    numeric(12, 10) NOT NULL DEFAULT 0.01 CHECK (deposit_rate >= 0 AND deposit_rate < 1),
    withdraw_rate   numeric(12, 10) NOT NULL DEFAULT 0.02 CHECK (withdraw_rate >= 0 AND withdraw_rate < 1),
    PRIMARY KEY (service_user_id, currency_id)
);

-- The journal: append-only. One entry per money movement; postings sum to zero per currency.
CREATE TABLE IF NOT EXISTS journal_entries (
    id         uuid PRIMARY KEY,
    kind       text NOT NULL,
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- bucket 'B' moves balance, 'R' moves reserved_balance (a withdrawal hold).
-- The references of a posting (its entry; its wallet, in the wallet's currency) are checked by
-- the statement trigger below for the whole statement at once, which costs far less than
-- per-row foreign-key triggers on the hottest insert.
CREATE TABLE IF NOT EXISTS postings (
    entry_id    uuid NOT NULL,
    wallet_id   uuid NOT NULL,
    currency_id smallint NOT NULL,
    bucket      char(1) NOT NULL CHECK (bucket IN ('B', 'R')),
    amount      numeric(38, 10) NOT NULL CHECK (amount <> 0)
);

-- What the API shows as transactions (Tx / Pending). seq orders history for keyset pagination.
-- These rows are the API's view of the journal, written by the same statement as the entry. They
-- carry no foreign keys: each would cost an index probe per row on the hot path, and `walletd
-- audit` checks that every reference resolves. The journal below carries the hard constraints.
CREATE TABLE IF NOT EXISTS transactions (
    id                 uuid PRIMARY KEY,
    seq                bigint GENERATED ALWAYS AS IDENTITY,  -- unique by construction; no index of its own,
                                                               -- so history pages use the per-wallet indexes
    type               text NOT NULL CHECK (type IN ('deposit', 'withdraw', 'transfer', 'commission', 'bonus')),
    status             text NOT NULL CHECK (status IN ('pending', 'paid', 'rejected', 'close')),
    from_wallet_id     uuid,
    from_currency_id   smallint,
    from_user_id       uuid,
    amount             numeric(38, 10) NOT NULL CHECK (amount > 0),
    to_wallet_id       uuid,
    to_currency_id     smallint,
    to_user_id         uuid,
    rate               numeric(30, 10) NOT NULL DEFAULT 1,
    converted_amount   numeric(38, 10) NOT NULL,
    user_id            uuid NOT NULL,
    service_user_id    uuid,
    external_wallet_id uuid,
    parent_id          uuid,
    entry_id           uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS transactions_from_wallet ON transactions (from_wallet_id, seq DESC);
CREATE INDEX IF NOT EXISTS transactions_to_wallet ON transactions (to_wallet_id, seq DESC);
CREATE INDEX IF NOT EXISTS transactions_pending ON transactions (user_id) WHERE status = 'pending';

-- A retried request with the same key returns the stored first response; kept >= 24 hours.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal_id  uuid NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status_code   smallint NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_id, key)
);

CREATE OR REPLACE FUNCTION walletd_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'walletd journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION walletd_apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad uuid;
    wallets_expected int;
    wallets_updated int;
BEGIN
    SELECT entry_id INTO bad FROM new_postings
        GROUP BY entry_id, currency_id HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance', bad USING ERRCODE = 'check_violation';
    END IF;
    SELECT p.entry_id INTO bad FROM new_postings p
        WHERE NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.id = p.entry_id) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'posting names unknown journal entry %', bad USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- Lock in id order, so concurrent statements touching the same wallets queue instead of
    -- deadlocking.
    PERFORM 1 FROM wallets WHERE id IN (SELECT wallet_id FROM new_postings) ORDER BY id FOR UPDATE;
    SELECT count(*) INTO wallets_expected FROM (SELECT DISTINCT wallet_id, currency_id FROM new_postings) w;
    UPDATE wallets w
       SET balance = w.balance + d.balance_delta,
           reserved_balance = w.reserved_balance + d.reserved_delta
      FROM (SELECT wallet_id, currency_id,
                   coalesce(sum(amount) FILTER (WHERE bucket = 'B'), 0) AS balance_delta,
                   coalesce(sum(amount) FILTER (WHERE bucket = 'R'), 0) AS reserved_delta
              FROM new_postings GROUP BY wallet_id, currency_id) d
     WHERE w.id = d.wallet_id AND w.currency_id = d.currency_id;
    GET DIAGNOSTICS wallets_updated = ROW_COUNT;
    IF wallets_updated <> wallets_expected THEN
        RAISE EXCEPTION 'posting names an unknown wallet or the wrong currency'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- The batch write's compare-and-set check: fewer rows settled than asked means another writer
-- settled one first, and the whole statement is rolled back.
CREATE OR REPLACE FUNCTION walletd_expect(actual bigint, expected bigint) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    IF actual <> expected THEN
        RAISE EXCEPTION 'expected % row(s), got %', expected, actual USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN actual;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'postings_apply') THEN
        CREATE TRIGGER postings_apply AFTER INSERT ON postings
            REFERENCING NEW TABLE AS new_postings
            FOR EACH STATEMENT EXECUTE FUNCTION walletd_apply_postings();
        CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON postings
            FOR EACH STATEMENT EXECUTE FUNCTION walletd_append_only();
        CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_entries
            FOR EACH STATEMENT EXECUTE FUNCTION walletd_append_only();
    END IF;
END $$;
