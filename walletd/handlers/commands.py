"""What every money-moving route shares: its Idempotency-Key, the hand-off of its command to the
wallet actors, the errors any command may meet, and waking webhook delivery after a commit."""

from __future__ import annotations

import hashlib
import json

from aiohttp import web

from walletd.appkeys import dispatcher_key, registry_key, settings_key
from walletd.auth.operator import OperatorPrincipal
from walletd.auth.tokens import Principal
from walletd.domain import errors
from walletd.domain.commands import Idempotency, Replay
from walletd.domain.policy import CommissionRates, fixed_commission_rate
from walletd.handlers.errors import InvalidIdempotencyKey

MOVE_ERRORS = [errors.IdempotencyKeyReused, InvalidIdempotencyKey, errors.Overloaded, errors.OutcomeUnknown,
               errors.InternalFailure]


def idempotency(request: web.Request, principal: Principal | OperatorPrincipal, raw_params: dict) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 128:
        raise InvalidIdempotencyKey()
    if not key.isprintable() or not key.isascii():
        # Keys are stored as text: a byte that is not UTF-8 (or a control character) must be
        # refused here, never reach the database inside somebody else's batch.
        raise InvalidIdempotencyKey("Idempotency-Key must be printable ASCII")
    canonical = json.dumps({"path": request.path, "params": raw_params}, sort_keys=True, default=str)
    return Idempotency(principal.user_id, key, hashlib.sha256(canonical.encode()).hexdigest())


async def hand_to_actors(request: web.Request, command) -> dict | Replay:
    """Hand the command to its wallet's actor. The reply is the ledger's tx_json record, or a
    Replay of the stored first one; endpoint.render writes both the same way."""
    return await request.app[registry_key].execute(command)


def wake_delivery(app: web.Application) -> None:
    """Called by the deposit, withdrawal, settlement and reversal routes after their commit (never
    by transfers, which publish no event); other processes' events are found by the poll."""
    dispatcher = app.get(dispatcher_key)
    if dispatcher is not None:
        dispatcher.wake()


def fixed_rate(request: web.Request, service, kind: str):
    """The service's rate now, within the operator's ceiling: the record keeps it, and its
    settlement charges exactly the commission it fixes, whatever the service sets meanwhile (a
    settlement uses it only for a record written before fees were fixed at request time)."""
    rates = CommissionRates.stored_or_default(service["deposit_rate"], service["withdraw_rate"])
    return fixed_commission_rate(rates, kind, request.app[settings_key].max_commission_rate)
