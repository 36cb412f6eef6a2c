"""POST /wallet/transfers: many transfers from the caller's wallets, all or none, in one journal
entry. The request's own problems (a malformed leg, a source not the caller's, a target that does
not exist, a leg to its own source) are refused here, every leg named, before any actor is asked;
balances and rates are checked by the ledger, in request order (domain/multi_transfer.py)."""

from __future__ import annotations

from aiohttp import web

from walletd.appkeys import pool_key, request_id_key, settings_key
from walletd.auth.tokens import Principal
from walletd.config import Settings
from walletd.domain import errors
from walletd.domain.access import transfer_refusal
from walletd.domain.commands import MultiTransfer, Replay, TransferLeg
from walletd.domain.multi_transfer import leg_refusal
from walletd.handlers.book_schemas import TransfersOut, TransfersParams
from walletd.handlers.commands import MOVE_ERRORS, hand_to_actors, idempotency
from walletd.handlers.endpoint import Routes
from walletd.handlers.errors import ValidationFailed
from walletd.handlers.schemas import TxOut
from walletd.persistence import accounts

routes = Routes()

# Room for one leg in a request body: its three fields at their longest (ids, and an amount of up
# to 64 characters) with JSON punctuation and some spacing.
LEG_BYTES = 256


def body_limit(settings: Settings) -> int:
    return max(settings.max_body_bytes, LEG_BYTES * settings.max_batch_legs + 1024)


@routes("POST", "/wallet/transfers", summary="Transfer from the caller's wallets to many wallets: all legs or none",
        description="Each leg is priced as /wallet/transfer (converted at the stored rate when currencies differ). "
                    "All legs are one journal entry: every leg moves, or none does and the refusal (400 legs_refused) "
                    "names each refused leg in `errors` (index, code, message). One Idempotency-Key covers the "
                    "request. The body may hold up to max(WALLETD_MAX_BODY_BYTES, 256 × WALLETD_MAX_BATCH_LEGS) bytes.",
        auth="user", scope={"user": "from its own wallets"}, params=TransfersParams, response=TransfersOut,
        tags=["money"], idempotent=True, errors=[errors.LegsRefused, *MOVE_ERRORS], max_body_bytes=body_limit)
async def transfer_legs(request: web.Request, principal: Principal, params: TransfersParams, raw_params: dict):
    most = request.app[settings_key].max_batch_legs
    if len(params.transfers) > most:
        raise ValidationFailed("invalid parameters: transfers", errors=[
            {"loc": "transfers", "msg": f"at most {most} legs (WALLETD_MAX_BATCH_LEGS)", "type": "too_long"}])
    legs = tuple(TransferLeg(leg.source_wallet_id, leg.target_wallet_id, leg.amount) for leg in params.transfers)
    await _check_wallets(request, principal, legs)
    command = MultiTransfer(principal.user_id, legs, request.get(request_id_key),
                            idempotency(request, principal, raw_params))
    result = await hand_to_actors(request, command)
    if isinstance(result, Replay) and result.status == 200:
        # The stored first answer comes back from jsonb with every record's keys reordered: put
        # them back in TxOut's order, so a replay repeats the first answer byte for byte.
        fields = list(TxOut.model_fields)
        records = [{name: record.get(name) for name in fields} for record in result.body["transfers"]]
        return Replay(result.status, {"transfers": records})
    return result


async def _check_wallets(request: web.Request, principal: Principal, legs: tuple[TransferLeg, ...]) -> None:
    """Every leg's source is the caller's, its target a user's wallet, and not its source."""
    wallets = await accounts.wallet_owners(
        request.app[pool_key], list({w for leg in legs for w in (leg.source_wallet_id, leg.target_wallet_id)}))
    refused = []
    for index, leg in enumerate(legs):
        problem = transfer_refusal(principal.user_id, leg.source_wallet_id, wallets.get(leg.source_wallet_id),
                                   leg.target_wallet_id, wallets.get(leg.target_wallet_id))
        if problem is not None:
            refused.append(leg_refusal(index, problem))
    if refused:
        raise errors.legs_refused(refused)
