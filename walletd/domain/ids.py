"""Identifiers: UUIDv7 (RFC 9562) for ledger rows.

Time-ordered ids keep PostgreSQL's primary-key inserts at the right edge of the B-tree instead
of scattering them over it, and drawing the random bits from a buffer costs one getrandom call
per few hundred ids instead of one per id (os.urandom is a system call each time).
"""

from __future__ import annotations

import os
import time
import uuid

_BUFFER_IDS = 256
_buffer = b""
_offset = 0


def _random10() -> bytes:
    global _buffer, _offset
    if _offset >= len(_buffer):
        _buffer, _offset = os.urandom(10 * _BUFFER_IDS), 0
    chunk = _buffer[_offset:_offset + 10]
    _offset += 10
    return chunk


def new_id() -> uuid.UUID:
    """48-bit Unix milliseconds, version 7, 74 random bits (variant RFC 4122)."""
    rand = int.from_bytes(_random10(), "big")  # 80 bits, 74 used
    value = (time.time_ns() // 1_000_000) << 80
    value |= 0x7 << 76                              # version
    value |= ((rand >> 68) & 0xFFF) << 64           # 12 random bits (rand_a)
    value |= 0b10 << 62                             # variant
    value |= rand & ((1 << 62) - 1)                 # 62 random bits (rand_b)
    return uuid.UUID(int=value)
