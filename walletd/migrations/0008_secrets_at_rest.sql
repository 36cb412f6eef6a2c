-- walletd migration 0008: nothing walletd stores can be turned against it (docs/security.md).
--
-- Webhook secrets are kept sealed: a Fernet token (walletd/keys.py) under WALLETD_SECRETS_KEY,
-- a key the database never sees, so a dump, a backup or a replica holds nothing that signs a
-- delivery. SQL cannot encrypt without the key: rows written before this migration keep their
-- plaintext `secret` until walletd, starting with its key, seals each one and clears the plaintext
-- (walletd/persistence/outbox.py, seal_plaintext_secrets). Exactly one of the two is set.
ALTER TABLE webhook_endpoints ALTER COLUMN secret DROP NOT NULL;
ALTER TABLE webhook_endpoints
    ADD COLUMN secret_sealed text,
    -- A rotation keeps the replaced secret until previous_secret_until: deliveries carry a
    -- signature under each, so the receiver can switch without losing a delivery.
    ADD COLUMN previous_secret_sealed text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT webhook_endpoints_one_secret CHECK ((secret IS NULL) <> (secret_sealed IS NULL));

-- Failed-login rows were keyed by an unsalted SHA-256 of the typed name cut to 64 bits, which a
-- dictionary reverses (and people type passwords into the name field). The key is now an HMAC
-- under a server key (walletd/keys.py); the old rows would never match again, so they go now.
DELETE FROM login_failures WHERE scope = 'username';
