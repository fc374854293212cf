"""`fastgate keygen`: a new API key and the sha256 the config stores instead of the key."""
from __future__ import annotations

import hashlib
import secrets

__all__ = ["KEY_PREFIX", "keygen"]

KEY_PREFIX = "fgk_"
"""Marks the string as a fastgate key, so secret scanners and people can recognise a leaked one."""


def keygen() -> tuple[str, str]:
    """(key, sha256 hex of the key). 256 random bits, base64url: no dots, so never JWT-shaped."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode("ascii")).hexdigest()
