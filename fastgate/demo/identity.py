"""A throwaway identity provider for `fastgate demo`: signed tokens for a few demo users.

At start an ES256 key pair is generated in memory; only the public JWKS is written (to the
demo's temporary directory), so the gateway verifies demo tokens exactly as it verifies an
organisation's OIDC tokens, through `identity.jwt.jwks_file`. The private key never touches
the disk and dies with the process.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = ["DEMO_USERS", "DemoIdentity"]

DEMO_USERS: dict[str, tuple[str, ...]] = {
    "alice": ("support",),
    "bob": ("finance-leads",),
    "ivan": ("interns",),
}
"""Demo subject -> groups; the demo rules are written against these groups."""

ISSUER = "https://demo-idp.fastgate.invalid"
AUDIENCE = "fastgate"
KID = "fastgate-demo-1"


class DemoIdentity:
    """`DemoIdentity(tmpdir).issuer / .jwks_path / .token(user)`."""

    def __init__(self, tmpdir: str | os.PathLike[str], lifetime: int = 12 * 3600,
                 users: dict[str, tuple[str, ...]] | None = None) -> None:
        self.issuer = ISSUER
        self.audience = AUDIENCE
        self.lifetime = lifetime
        self.users = dict(DEMO_USERS if users is None else users)
        self._private = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        public.update(kid=KID, use="sig", alg="ES256")
        self.jwks_path = str(Path(tmpdir) / "demo-jwks.json")
        Path(self.jwks_path).write_text(json.dumps({"keys": [public]}, indent=2) + "\n")

    def jwt_config(self) -> dict[str, Any]:
        """The `identity.jwt` section that accepts these tokens."""
        return {"issuer": self.issuer, "audiences": [self.audience], "jwks_file": self.jwks_path,
                "algorithms": ["ES256"]}

    def token(self, user: str) -> str:
        """A signed token for a demo user; KeyError for anyone else."""
        groups = self.users[user]
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": user, "groups": list(groups),
                  "iat": now, "exp": now + self.lifetime}
        return jwt.encode(claims, self._private, algorithm="ES256", headers={"kid": KID})
