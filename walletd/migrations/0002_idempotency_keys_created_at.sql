-- walletd migration 0002: the retention sweep (walletd/persistence/retention.py) deletes
-- idempotency keys oldest first by created_at; without this index each sweep would read the
-- whole table. Plain DDL: migrations after 0001 run exactly once.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
