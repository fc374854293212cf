"""Identity through a real gateway: OIDC discovery against a local provider, API keys, 401 answers,
forwarded identity, and what the upstream actually received (never the caller's credentials)."""
from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from support.gateway import base_config
from support.oidc import AUDIENCE, OIDCProvider, ec_key, rsa_key

API_KEY = "fgk_test-service-key-0123456789abcdefghijklmnop"


@pytest.fixture(scope="module")
def idp():
    with OIDCProvider() as provider:
        provider.add_key(rsa_key("rsa-1"))
        provider.add_key(ec_key("ec-1"))
        yield provider


def identity_config(idp: OIDCProvider, **extra) -> dict:
    return {"jwt": {"issuer": idp.issuer, "audiences": [AUDIENCE], "discovery": idp.discovery_url,
                    "algorithms": ["RS256", "ES256"], "leeway": "5s", "jwks_refresh_interval": "1s"},
            "api_keys": [{"name": "ci-bot", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                          "groups": ["automation"]}],
            **extra}


@pytest.fixture
def gw(idp, upstream, gateway_factory):
    return gateway_factory(base_config(upstream.port, identity=identity_config(idp, forward="headers")))


def test_valid_tokens_pass_and_credentials_stay_behind(gw, idp, upstream):
    for key in idp.keys:
        token = idp.mint({"sub": "alice", "groups": ["support", "ops"]}, key=key)
        r = httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {token}",
                                                     "X-Fastgate-Subject": "root", "Cookie": "s=1"})
        assert r.status_code == 200, r.text
        got = upstream.requests[-1]
        assert token.encode() not in got.raw
        assert got.header("authorization") == b"Bearer tok-upstream-canary"  # the gateway's own
        assert got.header("x-fastgate-subject") == b"alice"  # verified, not the client's "root"
        assert got.header_all("x-fastgate-subject") == [b"alice"]
        assert set(got.header("x-fastgate-groups").split(b",")) == {b"support", b"ops"}
        assert got.header("cookie") is None


def test_api_key_by_header_and_bearer(gw, upstream):
    for headers in ({"X-Api-Key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}):
        r = httpx.get(f"{gw.url}/items/A1", headers=headers)
        assert r.status_code == 200, r.text
        assert API_KEY.encode() not in upstream.requests[-1].raw
        assert upstream.requests[-1].header("x-fastgate-subject") == b"ci-bot"


@pytest.mark.parametrize("headers,error", [
    ({}, None),
    ({"Authorization": "Bearer nope"}, "invalid_token"),
    ({"Authorization": "Basic YTpi"}, "invalid_request"),
    ({"X-Api-Key": "wrong-key"}, "invalid_token"),
])
def test_unauthenticated_answers(gw, upstream, headers, error):
    r = httpx.get(f"{gw.url}/items/A1", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated" and r.json()["request_id"] == r.headers["x-request-id"]
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if error:
        assert f'error="{error}"' in challenge
    assert not upstream.requests


def test_expired_and_foreign_tokens_refused(gw, idp, upstream):
    key = idp.keys[0]
    expired = idp.mint({"exp": int(time.time()) - 60}, key=key)
    other_aud = idp.mint({"aud": "someone-else"}, key=key)
    prefix_iss = idp.mint({"iss": idp.issuer + ".evil"}, key=key)
    for token in (expired, other_aud, prefix_iss):
        r = httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, token
        assert token not in gw.stderr_text()  # the reason is logged, the token never
    assert not upstream.requests


def test_key_rotation_reaches_a_running_gateway(gw, idp, upstream):
    new = idp.add_key(rsa_key("rsa-rotated"))
    time.sleep(1.1)  # refetches are rate-limited to one per jwks_refresh_interval after the start load
    try:
        token = idp.mint({"sub": "bob"}, key=new)
        r = httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
    finally:
        idp.remove_key("rsa-rotated")


def test_provider_outage_keeps_known_keys(gw, idp, upstream):
    token = idp.mint({"sub": "carol"}, key=idp.keys[0])
    assert httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    idp.outage = "503"
    try:
        time.sleep(1.2)  # past jwks_refresh_interval: a refresh is attempted and fails
        fresh = idp.mint({"sub": "dave"}, key=idp.keys[0])
        assert httpx.get(f"{gw.url}/items/A1",
                         headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
        unknown = idp.mint({"sub": "eve"}, key=ec_key("never-published"))
        assert httpx.get(f"{gw.url}/items/A1",
                         headers={"Authorization": f"Bearer {unknown}"}).status_code == 401
    finally:
        idp.outage = None


def test_forwarded_identity_jwt_verifies_with_the_published_jwks(idp, upstream, gateway_factory):
    """identity.forward: jwt — the upstream verifies who called with the gateway's public keys."""
    import jwt as pyjwt

    gw = gateway_factory(base_config(upstream.port, workers=2, identity=identity_config(idp, forward="jwt")))
    jwks = httpx.get(f"{gw.url}/.well-known/fastgate/jwks.json").json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])  # public halves only
    token = idp.mint({"sub": "alice", "groups": ["support"]}, key=idp.keys[0])
    for _ in range(6):  # both workers sign with the same key
        with httpx.Client() as client:
            assert client.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        forwarded = upstream.requests[-1].header("x-fastgate-identity").decode()
        key = pyjwt.PyJWK(jwks["keys"][0]).key
        claims = pyjwt.decode(forwarded, key, algorithms=["ES256"], options={"verify_aud": False})
        assert claims["sub"] == "alice" and claims["groups"] == ["support"]
        assert token.encode() not in upstream.requests[-1].raw
