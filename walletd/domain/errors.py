"""Domain errors: each names the problem with a stable snake_case `code` (what clients match on)
and a `message` for people (the original service's text where it had one). handlers/errors.py
maps each class to its HTTP status; the class docstring is the code's meaning in docs/errors.md and
the OpenAPI document.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request walletd refuses."""

    code = "invalid_request"
    message = "invalid_request"

    def __init__(self, message: str | None = None, *, errors: list | None = None, **detail: object) -> None:
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.errors = errors  # per-field problems, for validation failures
        self.detail = detail


class InvalidAmount(DomainError):
    """The amount is not a decimal number in (0, 10^15] at 10 places; `message` says why."""

    code = "invalid_amount"
    message = "Invalid amount"

    def __init__(self, reason: str | None = None, **kwargs) -> None:
        # The original's text stays as the prefix (its clients match on it); the reason follows.
        self.reason = reason
        super().__init__(f"{InvalidAmount.message}: {reason}" if reason else None, **kwargs)


class InsufficientFunds(DomainError):
    """The source wallet's balance does not cover the amount."""

    code = "insufficient_funds"
    message = "insufficient_funds"


class LegsRefused(DomainError):
    """A multi-leg transfer was refused whole: `errors` names each refused leg (index, code, message); nothing moved."""

    code = "legs_refused"
    message = "one or more legs were refused; nothing moved"


class LegsLackFunds(LegsRefused, InsufficientFunds):
    """A LegsRefused in which some leg lacks funds. Being an InsufficientFunds too, the ledger
    checks it again under row locks before answering, as it does a single transfer's (the
    balances it planned against may have been predictions)."""

    code = "legs_refused"


def legs_refused(items: list[dict]) -> LegsRefused:
    """The refusal of a multi-leg transfer whose legs `items` ({index, code, message}) were refused."""
    lacking = any(item["code"] == InsufficientFunds.code for item in items)
    return (LegsLackFunds if lacking else LegsRefused)(errors=items)


class WalletNotFound(DomainError):
    """No such wallet among the caller's (someone else's wallet looks the same)."""

    code = "wallet_not_found"
    message = "wallet_not_found"


class NotYourWallet(WalletNotFound):
    """The source wallet does not exist or is not the caller's."""

    message = "source_wallet_id have different owner"


class TargetWalletNotFound(DomainError):
    """The transfer's target wallet does not exist."""

    code = "target_wallet_not_found"
    message = "target_wallet_id does not exist"


class SameWallet(DomainError):
    """Source and target of a transfer are the same wallet."""

    code = "same_wallet"
    message = "source and target wallet are the same"


class CurrencyNotFound(DomainError):
    """An unknown currency (or the same currency on both sides where two are needed)."""

    code = "currency_not_found"
    message = "currency_not_found"


class RateNotFound(DomainError):
    """No stored exchange rate for the currency pair."""

    code = "exchange_rate_not_found"
    message = "exchange_rate_not_found"


class RateStale(DomainError):
    """The stored rate is older than WALLETD_RATES_MAX_AGE; `detail.updated_at` says when it was set."""

    code = "exchange_rate_stale"
    message = "exchange_rate_stale"


class RateArbitrage(DomainError):
    """The rate would let a round trip through the exchange desk return more than it started with;
    `detail` names the reverse rate (or the cycle) and the highest rate allowed. `force` does not lift this."""

    code = "rate_arbitrage"
    message = "rate_arbitrage"


class RateChangeTooLarge(DomainError):
    """The rate is further from the stored one than WALLETD_RATE_MAX_CHANGE allows; if it is right,
    send it again with force=true."""

    code = "rate_change_too_large"
    message = "rate_change_too_large"


class CommissionRateTooHigh(DomainError):
    """A commission rate above WALLETD_MAX_COMMISSION_RATE, the operator's ceiling."""

    code = "commission_rate_too_high"
    message = "commission_rate_too_high"


class ServiceWalletNotFound(DomainError):
    """The named payment service has no wallet in this currency (or is not a service user)."""

    code = "service_wallet_not_found"
    message = "service_wallet_not_found"


class ExternalWalletNotFound(DomainError):
    """A withdrawal needs the caller's external wallet in the currency: create it first."""

    code = "external_wallet_not_found"
    message = "user_ext_wallet_not_found"


class ExternalWalletExists(DomainError):
    """The caller already has an external wallet in this currency."""

    code = "external_wallet_exists"
    message = "external_wallet_already_exists"


class TransactionNotFound(DomainError):
    """No such transaction (a service user sees only its own)."""

    code = "transaction_not_found"
    message = "transaction_not_found"


class AlreadyReversed(DomainError):
    """The transaction was reversed already (a reversal is never reversed twice)."""

    code = "already_reversed"
    message = "transaction already reversed"


class NotReversible(DomainError):
    """Only a completed transfer or a paid deposit can be reversed; `message` says what this one is."""

    code = "transaction_not_reversible"
    message = "only a completed transfer or a paid deposit can be reversed"


class ReversalNotCovered(InsufficientFunds):
    """A wallet the reversal takes money back from no longer holds it; nothing moved."""

    message = "insufficient_funds: the wallet credited by the original no longer holds the amount"


class SettlementConflict(DomainError):
    """The transaction was already settled with the other outcome; `detail.settled_by` says who decided
    (service, operator, or expiry for a record the previous release expired)."""

    code = "transaction_already_settled"
    message = "transaction_already_settled"


class TransactionNotStale(DomainError):
    """The operator ends only a stale pending transaction (older than WALLETD_PENDING_TTL); until then
    the payment service settles it."""

    code = "transaction_not_stale"
    message = "transaction_not_stale"


class InvalidWebhookUrl(DomainError):
    """A webhook URL must be http(s) to a public address (no loopback, private, link-local, CGNAT, multicast,
    reserved or unspecified one unless allowed), parse strictly and carry no credentials or fragment; `message`
    says why."""

    code = "invalid_webhook_url"
    message = "url is not a valid URL"


class TooManyWebhooks(DomainError):
    """The caller already has the most webhook endpoints allowed."""

    code = "too_many_webhooks"
    message = "too many webhook endpoints"


class WebhookNotFound(DomainError):
    """No such webhook endpoint among the caller's."""

    code = "webhook_not_found"
    message = "webhook_not_found"


class UnknownEventCursor(DomainError):
    """`after` is not the id of one of the caller's events."""

    code = "unknown_cursor"
    message = "unknown cursor: `after` must be the id of one of your events"


class InvalidTransactionType(DomainError):
    """The transaction is not of the kind this endpoint settles (deposit vs withdraw)."""

    code = "invalid_transaction_type"
    message = "invalid_type_transaction"


class DuplicateAccount(DomainError):
    """The username or e-mail is already registered."""

    code = "account_exists"
    message = "username or email already registered"


class InvalidCredentials(DomainError):
    """Wrong username or password (which one is not said)."""

    code = "invalid_credentials"
    message = "Invalid credentials"


class TokenMissing(DomainError):
    """No token in `Authorization: Bearer …` or the `token` header."""

    code = "token_missing"
    message = "Not authenticated"


class TokenInvalid(DomainError):
    """The token is not one walletd issued (malformed, bad signature, unknown account)."""

    code = "token_invalid"
    message = "Invalid token"


class TokenExpired(TokenInvalid):
    """The token's `exp` has passed: log in again."""

    code = "token_expired"
    message = "Invalid token: the token has expired"


class WrongRole(TokenInvalid):
    """A valid token of the other role (a user token on a service endpoint, or the reverse)."""

    code = "wrong_role"
    message = "Invalid token: this endpoint needs a {role} token"

    def __init__(self, needed: str) -> None:
        super().__init__(self.message.format(role=needed))


class OperatorKeyRequired(DomainError):
    """The action belongs to the operator: send header X-Operator-Key (WALLETD_OPERATOR_KEY); a
    service token is not enough."""

    code = "operator_key_required"
    message = "operator credential required (X-Operator-Key)"


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was already used with different parameters."""

    code = "idempotency_key_reused"
    message = "Idempotency-Key was used with a different request"


class Overloaded(DomainError):
    """The wallet's queue is full (or walletd is shutting down); nothing moved, retry after `Retry-After`."""

    code = "overloaded"
    message = "wallet busy, retry later"


class RateProviderError(DomainError):
    """The configured rate provider failed or is not configured."""

    code = "rate_provider_unavailable"
    message = "rate provider unavailable"


class Unavailable(DomainError):
    """The database cannot be reached or written right now; certainly nothing moved (retry after `Retry-After`)."""

    code = "unavailable"
    message = "service unavailable, retry later"


class OutcomeUnknown(DomainError):
    """A commit was cut off and its outcome could not be found out in time; retry with the same
    Idempotency-Key (a registration: log in to learn whether the account exists)."""

    code = "outcome_unknown"
    message = "outcome unknown: retry with the same Idempotency-Key to learn it"


class InternalFailure(DomainError):
    """A command failed for a reason that is walletd's fault, not the caller's; nothing of it moved."""

    code = "internal_error"
    message = "internal error; nothing moved"
