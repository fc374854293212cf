"""Micro-benchmarks of identity: what `Authenticator.authenticate` costs per request.

"cold" runs with the verified-token cache disabled, so every call parses the token and checks
its signature and claims; "cached" is the common case of an agent reusing one token, which
should cost a hash and a dictionary lookup. Headers are a typical proxied call's five fields.
The asserts only check the benchmarked code did its job.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fastgate.config import Identity
from fastgate.identity import Authenticator, Caller, forward_headers

ISSUER = "https://idp.example.com"
HMAC_SECRET = "bench-secret-" + "x" * 40
API_KEYS = [f"fgk_bench-key-{i:02d}-" + "k" * 30 for i in range(5)]


@pytest.fixture(scope="module")
def signing_keys():
    return {"RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory, signing_keys) -> str:
    keys = [{**RSAAlgorithm.to_jwk(signing_keys["RS256"].public_key(), as_dict=True), "kid": "rs"},
            {**ECAlgorithm.to_jwk(signing_keys["ES256"].public_key(), as_dict=True), "kid": "es"}]
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


def _claims() -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "fastgate", "sub": "alice@example.com", "groups": ["support", "emea"],
            "iat": now, "exp": now + 3600, "email": "alice@example.com", "name": "Alice Example",
            "scope": "openid profile email"}


def _token(alg: str, signing_keys) -> str:
    if alg == "HS256":
        return jwt.encode(_claims(), HMAC_SECRET, algorithm="HS256")
    return jwt.encode(_claims(), signing_keys[alg], algorithm=alg, headers={"kid": alg[:2].lower()})


def _authenticator(jwks_file: str | None, alg: str, cache_size: int) -> Authenticator:
    jwt_cfg: dict = {"issuer": ISSUER, "audiences": ["fastgate"], "algorithms": [alg]}
    if alg == "HS256":
        jwt_cfg["hmac_secret"] = HMAC_SECRET
    else:
        jwt_cfg["jwks_file"] = jwks_file
    keys = [{"name": f"svc{i}", "sha256": hashlib.sha256(k.encode()).hexdigest(), "groups": ["automation"]}
            for i, k in enumerate(API_KEYS)]
    auth = Authenticator.from_config(Identity.model_validate({"jwt": jwt_cfg, "api_keys": keys}),
                                     cache_size=cache_size, auto_refresh=False)
    asyncio.run(auth.start())
    return auth


def _headers(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"127.0.0.1:8080"), (b"accept", b"application/json"),
            (b"content-type", b"application/json"), (name, value), (b"connection", b"keep-alive")]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_jwt_cold(benchmark, jwks_file, signing_keys, alg):
    auth = _authenticator(jwks_file, alg, cache_size=0)
    headers = _headers(b"authorization", b"Bearer " + _token(alg, signing_keys).encode())
    caller = benchmark(auth.authenticate, headers)
    assert caller.subject == "alice@example.com" and auth.stats["cache_hits"] == 0


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwt_cached(benchmark, jwks_file, signing_keys, alg):
    auth = _authenticator(jwks_file, alg, cache_size=10_000)
    headers = _headers(b"authorization", b"Bearer " + _token(alg, signing_keys).encode())
    auth.authenticate(headers)
    caller = benchmark(auth.authenticate, headers)
    assert caller.subject == "alice@example.com" and auth.stats["jwt_verified"] == 1


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_api_key(benchmark, jwks_file, how):
    auth = _authenticator(jwks_file, "RS256", cache_size=10_000)
    key = API_KEYS[-1].encode()
    if how == "x-api-key":
        headers = _headers(b"x-api-key", key)
    else:
        headers = _headers(b"authorization", b"Bearer " + key)
    caller = benchmark(auth.authenticate, headers)
    assert caller.auth == "api_key" and caller.name == "svc4"


@pytest.mark.parametrize("mode", ["headers", "jwt"])
def test_forward_headers(benchmark, mode):
    caller = Caller("alice@example.com", frozenset({"support", "emea"}), "jwt", {})
    out = benchmark(forward_headers, caller, mode)
    assert out and out[0][0].startswith(b"x-fastgate-")


def test_cached_path_floor_sha256_lookup(benchmark):
    """The least a token cache can cost: hash the token and look it up."""
    token = b"e" * 800
    table = {hashlib.sha256(token).digest(): object()}

    def lookup() -> object:
        return table.get(hashlib.sha256(token).digest())

    assert benchmark(lookup) is not None

