"""Request ids: ULIDs (time-ordered, 26 Crockford base32 characters), so ids sort by time."""
from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits per lookup


def new_request_id() -> str:
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
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
