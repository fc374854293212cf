"""Durations, sizes and HOST:PORT strings as written in the config file.

Each parser takes what YAML hands over (a string, or a bare number) and returns a plain
value, or raises ValueError with a message that can be shown to the person who wrote it.
The `format_*` twins produce the canonical spelling, and `parse(format(x)) == x` holds.
"""
from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_hostport",
    "parse_size",
    "valid_hostname",
]

DURATION_UNITS: dict[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
"""Unit -> milliseconds. A bare number means seconds."""

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
"""Unit (matched case-insensitively) -> bytes. KB is 1000 bytes, KiB is 1024."""

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([A-Za-z]+)?")
_DURATION_HINT = "use e.g. 250ms, 30s, 15m, 1h, 2d or a number of seconds"
_SIZE_HINT = "use e.g. 512, 512B, 10KB, 64KiB, 1MiB or 4GiB"


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `30s`, `1.5s`, `15m`, `1h`, `2d`, or a bare number of seconds.

    Negative, non-finite and boolean values are refused, and so is whitespace inside
    (`1 s`): a config value is one token.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"invalid duration: expected a string like 30s, got {type(value).__name__}")
    m = _DURATION_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    number, unit = m.groups()
    millis = DURATION_UNITS[unit or "s"]
    seconds = float(number) / 1000 if millis == 1 else float(number) * (millis // 1000)
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: too large")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration that parse_duration reads back."""
    seconds = parse_duration(seconds)
    candidates = [f"{round(seconds / (DURATION_UNITS[u] // 1000))}{u}" for u in ("d", "h", "m", "s")]
    if math.isfinite(seconds * 1000):
        candidates.append(f"{round(seconds * 1000)}ms")
    for candidate in candidates:
        if not candidate.startswith("0") or candidate == "0s":
            try:
                if parse_duration(candidate) == seconds:
                    return candidate
            except ValueError:
                pass
    return f"{Decimal(repr(seconds)):f}s"


def parse_size(value: object) -> int:
    """Bytes from `512`, `512B`, `10KB` (10000), `64KiB`, `1MiB`, `4GiB`, or an int.

    Units are matched case-insensitively; a fraction is accepted only when it comes to a
    whole number of bytes (`1.5KiB` is 1536).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must be >= 0")
        return value
    if isinstance(value, float):
        if value.is_integer() and value >= 0:
            return int(value)
        raise ValueError(f"invalid size {value!r}: must be a whole number of bytes >= 0")
    if not isinstance(value, str):
        raise ValueError(f"invalid size: expected a string like 64KiB, got {type(value).__name__}")
    m = _SIZE_RE.fullmatch(value)
    unit = (m.group(2) or "b").lower() if m else ""
    if m is None or unit not in SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT})")
    try:
        amount = Decimal(m.group(1)) * SIZE_UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal literals
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT})") from None
    if amount != amount.to_integral_value():
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(amount)


def format_size(size: int) -> str:
    """The shortest exact spelling of a size: binary units first, then decimal, then bytes."""
    size = parse_size(size)
    if size == 0:
        return "0B"
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
        factor = SIZE_UNITS[unit.lower()]
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def valid_hostname(host: str) -> bool:
    """A DNS name or a dotted IPv4 address (IPv6 is handled by the callers, in brackets)."""
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def parse_hostport(value: object) -> tuple[str, int]:
    """`("127.0.0.1", 8080)` from `127.0.0.1:8080`; `("::1", 8080)` from `[::1]:8080`.

    Port 0 is allowed and means "any free port". IPv6 addresses must be bracketed.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT as a string, got {type(value).__name__}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"invalid address {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid address {value!r}: {host!r} is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"invalid address {value!r}: expected HOST:PORT, e.g. [::1]:8080")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
        if ":" in host:
            raise ValueError(f"invalid address {value!r}: IPv6 addresses need brackets, e.g. [::1]:8080")
        if not valid_hostname(host):
            raise ValueError(f"invalid address {value!r}: {host!r} is not a valid host")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"invalid address {value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)
