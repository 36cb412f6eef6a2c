"""walletd: an async multi-currency e-wallet service with a double-entry ledger."""

__version__ = "0.1.0"
