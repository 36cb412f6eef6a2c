"""Domain errors: each names the problem. handlers/errors.py maps them to HTTP statuses."""


class DomainError(Exception):
    """A request the ledger refuses; `message` is the contract's machine-friendly text."""

    message = "invalid_request"

    def __init__(self, message: str | None = None, **detail: object) -> None:
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.detail = detail


class InvalidAmount(DomainError):
    message = "Invalid amount"


class InsufficientFunds(DomainError):
    message = "insufficient_funds"


class WalletNotFound(DomainError):
    message = "wallet_not_found"


class NotYourWallet(DomainError):
    message = "source_wallet_id have different owner"


class TargetWalletNotFound(DomainError):
    message = "target_wallet_id does not exist"


class SameWallet(DomainError):
    message = "source and target wallet are the same"


class CurrencyNotFound(DomainError):
    message = "currency_not_found"


class RateNotFound(DomainError):
    message = "exchange_rate_not_found"


class RateStale(DomainError):
    message = "exchange_rate_stale"


class ServiceWalletNotFound(DomainError):
    message = "service_wallet_not_found"


class ExternalWalletNotFound(DomainError):
    message = "user_ext_wallet_not_found"


class ExternalWalletExists(DomainError):
    message = "external_wallet_already_exists"


class TransactionNotFound(DomainError):
    message = "transaction_not_found"


class InvalidStatusUpdate(DomainError):
    message = "invalid_status_update"


class SettlementConflict(DomainError):
    message = "transaction_already_settled"


class InvalidTransactionType(DomainError):
    message = "invalid_type_transaction"


class DuplicateAccount(DomainError):
    message = "username or email already registered"


class InvalidCredentials(DomainError):
    message = "Invalid credentials"


class IdempotencyKeyReused(DomainError):
    message = "Idempotency-Key was used with a different request"


class Overloaded(DomainError):
    message = "wallet busy, retry later"


class RateProviderError(DomainError):
    message = "rate provider unavailable"


class Unavailable(DomainError):
    """The database cannot be reached or written right now; certainly nothing moved."""

    message = "service unavailable, retry later"


class OutcomeUnknown(DomainError):
    """A commit was cut off and its outcome could not be found out in time."""

    message = "outcome unknown: retry with the same Idempotency-Key to learn it"


class InternalFailure(DomainError):
    """A command failed for a reason that is walletd's fault, not the caller's; nothing of it moved."""

    message = "internal error; nothing moved"
