"""Memory follows the active wallets: once every actor has retired, caches are dropped and the
freed heap is handed back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

from walletd.auth.tokens import TokenIssuer
from walletd.logs import get_logger
from walletd.persistence.ledger import PgLedger

log = get_logger("walletd.memory")


def release_memory(ledger: PgLedger, tokens: TokenIssuer) -> None:
    """Every actor has retired: forget the per-wallet caches and return freed heap to the OS
    (glibc keeps freed arenas otherwise), so RSS falls back once a burst of wallets goes idle."""
    ledger.forget()
    tokens.forget()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    log.info("memory.released")


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()
