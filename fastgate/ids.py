"""Request ids: ULIDs (time-ordered, 26 Crockford base32 characters), so ids sort by time."""
from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits per lookup


_pool = b""
_pos = 0


def _random80() -> int:
    """80 random bits from a pooled os.urandom read: one syscall per 400 ids, not one per id."""
    global _pool, _pos
    if _pos + 10 > len(_pool):
        _pool, _pos = os.urandom(4000), 0
    _pos += 10
    return int.from_bytes(_pool[_pos - 10:_pos], "big")


def _reseed_after_fork() -> None:
    global _pool, _pos
    _pool, _pos = b"", 0


os.register_at_fork(after_in_child=_reseed_after_fork)


def new_request_id() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | _random80()
    # 128 bits -> 26 base32 characters, most significant first: 3 bits, 5 bits, 12 x 10 bits.
    out = [_ALPHABET[value >> 125], _ALPHABET[(value >> 120) & 0x1F]]
    for shift in range(110, -1, -10):
        out.append(_PAIRS[(value >> shift) & 0x3FF])
    return "".join(out)


def request_id_time_ms(request_id: str) -> int:
    value = 0
    for ch in request_id[:10]:
        value = value * 32 + _ALPHABET.index(ch)
    return value
