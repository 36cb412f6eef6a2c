-- walletd migration 0003: events to the payment service (issue 11). Plain DDL, runs once.
--
-- Pending deposits and withdrawals may expire (status 'expired'); the sweeper finds the oldest
-- pending ones through a partial index (transfers are never pending, so they never enter it).
ALTER TABLE transactions DROP CONSTRAINT transactions_status_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_status_check
    CHECK (status IN ('pending', 'paid', 'rejected', 'close', 'expired')) NOT VALID;
ALTER TABLE transactions VALIDATE CONSTRAINT transactions_status_check;
CREATE INDEX transactions_pending_since ON transactions (created_at) WHERE status = 'pending';

-- A service user's webhook endpoints. The secret signs deliveries, so it is stored as given
-- (shown once to the service user; never logged).
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    service_user_id uuid NOT NULL REFERENCES users,
    url             text NOT NULL,
    secret          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_service_user ON webhook_endpoints (service_user_id);

-- The transactional outbox: written by the same statement as the money change it reports.
-- body is the event exactly as delivered and listed (json keeps the text as written).
-- xid is the writing transaction: the feed lists only events whose transaction is older than
-- every transaction still running, so a page never skips an event that commits later.
CREATE TABLE events (
    id              uuid PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    service_user_id uuid NOT NULL,
    type            text NOT NULL,
    transaction_id  uuid NOT NULL,
    body            json NOT NULL,
    created_at      timestamptz NOT NULL
);
CREATE INDEX events_feed ON events (service_user_id, xid, seq);

-- One row per (event, endpoint): the delivery state machine. A claim moves next_attempt_at
-- past the attempt's timeout (a lease), so a process that dies mid-attempt is retried by another.
CREATE TABLE webhook_deliveries (
    event_id        uuid NOT NULL REFERENCES events,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id);
