"""Webhook secrets at rest: sealed under WALLETD_SECRETS_KEY (walletd/keys.py), opened only to sign.

Before its first delivery every process seals what is not sealed yet (rows written before migration 0008, or by a
previous release during a rolling upgrade) and re-seals what an older key sealed (after a
rotation of WALLETD_SECRETS_KEY), each row by a compare-and-set so processes starting together,
or a rotation meanwhile, never lose a secret.
"""

from __future__ import annotations

import uuid

from walletd.keys import SecretUnreadable, ServerKeys
from walletd.logs import get_logger
from walletd.persistence import outbox
from walletd.persistence.db import FairPool
from walletd.persistence.outbox import Delivery

log = get_logger("walletd.webhooks")


async def seal_stored_secrets(pool: FairPool, keys: ServerKeys) -> int:
    """Seal plaintext secrets and re-seal those under an older key; returns the rows changed."""
    updates: list[tuple[uuid.UUID, str | None, str | None, str | None]] = []
    for endpoint_id, plaintext, sealed, previous in await outbox.unsealed_or_stale(pool):
        try:
            if plaintext is not None:
                updates.append((endpoint_id, plaintext, keys.encrypt(plaintext), None))
            elif not keys.under_primary(sealed) or (previous is not None and not keys.under_primary(previous)):
                new_previous = None if previous is None else keys.rewrap(previous)
                updates.append((endpoint_id, sealed, keys.rewrap(sealed), new_previous))
        except SecretUnreadable:
            # A key left WALLETD_SECRETS_KEY before its secrets were re-sealed: deliveries to this
            # endpoint fail until the service user rotates its secret (or the key comes back).
            log.error("webhook.secret_unreadable", webhook_id=str(endpoint_id))
    changed = await outbox.store_sealed(pool, updates) if updates else 0
    if changed:
        log.info("webhook.secrets_sealed", endpoints=changed)
    return changed


def signing_secrets(delivery: Delivery, keys: ServerKeys) -> list[str]:
    """The secrets a delivery is signed with, current first. A previous one no key opens is
    skipped (its overlap is a courtesy); an unreadable current one raises SecretUnreadable."""
    if not delivery.sealed_secrets:
        return [delivery.plaintext_secret] if delivery.plaintext_secret else []
    current, *previous = delivery.sealed_secrets
    secrets = [keys.decrypt(current)]
    for sealed in previous:
        try:
            secrets.append(keys.decrypt(sealed))
        except SecretUnreadable:
            pass
    return secrets
