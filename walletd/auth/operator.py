"""The operator principal: whoever sends the operator key (WALLETD_OPERATOR_KEY, or the key an
embedded installation generated) in header X-Operator-Key.

The key is compared in constant time (digests of equal length, every accepted key compared, so
neither the timing nor the length of a guess tells anything). During a rotation the previous key
(WALLETD_OPERATOR_KEY_PREVIOUS) is accepted too. A wrong key counts as a failed login against the
client's address only (auth/throttle.py): one address guessing is throttled (429), while the
operator on any other address is never locked out, since no counter is kept per key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from walletd.auth.throttle import LoginThrottle
from walletd.domain.errors import OperatorKeyRequired
from walletd.domain.policy import OPERATOR_USER_ID
from walletd.logs import get_logger
from walletd.persistence.db import FairPool

HEADER = "X-Operator-Key"
log = get_logger("walletd.auth")


@dataclass(frozen=True)
class OperatorPrincipal:
    """The operator, shaped like a token's Principal. Its idempotency keys are scoped to the
    operator account's fixed id."""

    user_id = OPERATOR_USER_ID
    role = "operator"

    @property
    def subject(self) -> str:
        return "operator"


OPERATOR = OperatorPrincipal()


def matching_key(given: str, accepted: tuple[str, ...]) -> int | None:
    """The index of the accepted key equal to `given` (0: the current one, 1: the previous one),
    or None."""
    digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    # Every accepted key is compared (a list, not a generator that stops at the first match): the
    # time taken does not say which one matched.
    results = [hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest()) for key in accepted]
    return results.index(True) if True in results else None


async def authenticate(request: web.Request, accepted: tuple[str, ...], throttle: LoginThrottle,
                       pool: FairPool) -> OperatorPrincipal:
    """The operator, if the request carries one of the `accepted` keys; else OperatorKeyRequired
    (403), or TooManyAttempts (429) when this address has sent too many wrong keys."""
    if not accepted:
        raise OperatorKeyRequired("operator actions are closed: set WALLETD_OPERATOR_KEY and send it as "
                                  f"{HEADER}")
    given = request.headers.get(HEADER)
    if not given:
        raise OperatorKeyRequired()
    address = request.remote or "unknown"
    await throttle.check(pool, None, address)
    matched = matching_key(given, accepted)
    if matched is None:
        await throttle.failed(pool, None, address)
        log.warning("auth.operator_key_refused", path=request.path, method=request.method, address=address)
        raise OperatorKeyRequired("operator credential refused (X-Operator-Key)")
    if matched > 0:  # during a rotation: who still sends the key being retired
        log.info("auth.operator_key_previous", path=request.path, method=request.method, address=address)
    return OPERATOR
