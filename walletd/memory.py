"""Memory follows the active wallets: once every actor has retired, caches are dropped and the
freed heap is handed back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import yarl

from walletd.auth.tokens import TokenIssuer
from walletd.logs import get_logger
from walletd.persistence.ledger import PgLedger

log = get_logger("walletd.memory")


def release_memory(ledger: PgLedger, tokens: TokenIssuer) -> None:
    """Every actor has retired: forget the per-wallet caches and return freed heap to the OS
    (glibc keeps freed arenas otherwise), so RSS falls back once a burst of wallets goes idle."""
    ledger.forget()
    tokens.forget()
    # The type cache holds attribute names that C code made afresh for each call during the
    # burst; scattered over the heap, they would keep its pages from being trimmed.
    sys._clear_type_cache()
    _clear_url_caches()
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    log.info("memory.released")


def _clear_url_caches() -> None:
    # aiohttp parses each request's target through yarl, which keeps the last URLs it built (each
    # with its parsed query) in lru_caches of its own; yarl.cache_clear() reaches only its host caches.
    yarl.cache_clear()
    modules = [getattr(yarl, name, None) for name in ("_url", "_parse")]  # private: may move
    for module in filter(None, modules):
        for value in vars(module).values():
            if callable(cache_clear := getattr(value, "cache_clear", None)):
                cache_clear()


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim()
