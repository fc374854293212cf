"""identity: every token attack of threats.md section 3 against the authenticator.

Tokens are signed with keys generated here, and keys reach the authenticator the way they do in
production: a JWKS file, or a real local OIDC provider over HTTP (tests/support/oidc.py) with
discovery, rotation and outages. Time is injected (`Clock`), so boundaries are exact.
Sources: RFC 7515/7519 (JWS/JWT), RFC 8725 (JWT BCP), RFC 6750 (Bearer), OIDC Discovery 1.0.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import sys
from pathlib import Path

import jwt as pyjwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.oidc import (
    AUDIENCE, DROP, OIDCProvider, SigningKey, b64url, claims_for, ec_key, mint, rsa_key, sign_raw,
)

from fastgate.config import ApiKey, Identity
from fastgate.demo.identity import DemoIdentity
from fastgate.identity import (
    ANONYMOUS, FAILURE_BACKOFF, AuthError, Authenticator, Caller, KeySourceError, NoCredentials,
    UnknownKey, forward_headers, gateway_jwks,
)
from fastgate.keygen import keygen

NOW = 1_800_000_000
ISSUER = "https://idp.example.com"
LEEWAY = 30


class Clock:
    """An injected clock: tests move `t` instead of sleeping."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    """Generated once per module: RSA 2048 generation is slow on the shared cores."""
    return {
        "rsa": rsa_key("rsa-1"),
        "rsa2": rsa_key("rsa-2"),
        "ec": ec_key("ec-1"),
        "ec2": ec_key("ec-2"),
        "ec384": ec_key("ec-384", "P-384"),
        "attacker": rsa_key("rsa-1"),          # same kid as "rsa", different key
        "small": rsa_key("small", bits=1024),
    }


@pytest.fixture(scope="module")
def provider():
    with OIDCProvider() as idp:
        yield idp


@pytest.fixture
def idp(provider: OIDCProvider, keys) -> OIDCProvider:
    provider.reset([keys["rsa"], keys["ec"]])
    return provider


def jwt_config(**overrides) -> dict:
    cfg = {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["RS256", "ES256"],
           "leeway": f"{LEEWAY}s"}
    cfg.update(overrides)
    return {k: v for k, v in cfg.items() if v is not None}


def identity(jwt: dict | None = None, api_keys: list[dict] = (), forward: str = "none") -> Identity:
    data: dict = {"api_keys": list(api_keys), "forward": forward}
    if jwt is not None:
        data["jwt"] = jwt
    return Identity.model_validate(data)


def write_jwks(path: Path, keys: list[SigningKey], extra: list[dict] = ()) -> str:
    path.write_text(json.dumps({"keys": [k.jwk for k in keys] + list(extra)}))
    return str(path)


def run(coro):
    return asyncio.run(coro)


def file_auth(tmp_path: Path, keys: list[SigningKey], *, extra: list[dict] = (), clock: Clock | None = None,
              api_keys: list[dict] = (), **jwt_overrides) -> Authenticator:
    """An authenticator over a JWKS file, started."""
    path = write_jwks(tmp_path / "jwks.json", keys, extra)
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=path, **jwt_overrides), api_keys),
                                     clock=clock or Clock(NOW), auto_refresh=False)
    run(auth.start())
    return auth


def token(key: SigningKey, claims: dict | None = None, **kw) -> str:
    kw.setdefault("now", NOW)
    return mint(ISSUER, claims, key, **kw)


def bearer(tok: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = tok.encode() if isinstance(tok, str) else tok
    return [(b"host", b"gw.test"), (b"authorization", b"Bearer " + raw)]


def refused(auth: Authenticator, headers: list[tuple[bytes, bytes]], description: str | None = None,
            error: str = "invalid_token", kind: type[AuthError] = AuthError) -> AuthError:
    """Assert a refusal, and that nothing the client sent leaks into the message or challenge."""
    with pytest.raises(kind) as info:
        auth.authenticate(headers)
    exc = info.value
    assert exc.error == error, exc.description
    if description is not None:
        assert exc.description == description
    challenge = exc.www_authenticate()
    for _, value in headers:
        for part in value.split(b" ")[-1].split(b"."):
            if len(part) >= 8:
                assert part.decode("latin-1") not in exc.description
                assert part.decode("latin-1") not in challenge
    assert "\r" not in challenge and "\n" not in challenge
    return exc


@pytest.fixture
def auth(tmp_path, keys) -> Authenticator:
    return file_auth(tmp_path, [keys["rsa"], keys["ec"]])


# --------------------------------------------------------------------------- happy path

@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_valid_token_gives_caller(auth, keys, which):
    tok = token(keys[which], {"sub": "alice", "groups": ["support", "emea"]})
    caller = auth.authenticate(bearer(tok))
    assert caller == Caller("alice", frozenset({"support", "emea"}), "jwt", {})
    assert caller.claims["iss"] == ISSUER
    with pytest.raises(TypeError):
        caller.claims["sub"] = "admin"  # type: ignore[index]


def test_ps256_and_lowercase_scheme(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], algorithms=["PS256"])
    tok = token(keys["rsa"], alg="PS256")
    assert auth.authenticate([(b"authorization", b"bearer " + tok.encode())]).subject == "alice"
    refused(auth, bearer(token(keys["rsa"])), "algorithm not allowed")


def test_hmac_mode(keys):
    secret = "s" * 32
    auth = Authenticator.from_config(identity(jwt_config(algorithms=["HS256"], hmac_secret=secret)),
                                     clock=Clock(NOW))
    run(auth.start())
    tok = sign_raw({"alg": "HS256"}, claims_for(ISSUER, now=NOW), secret=secret.encode())
    assert auth.authenticate(bearer(tok)).subject == "alice"
    bad = sign_raw({"alg": "HS256"}, claims_for(ISSUER, now=NOW), secret=b"t" * 32)
    refused(auth, bearer(bad), "invalid signature")
    # an asymmetric token is not accepted by an HMAC gateway either
    refused(auth, bearer(token(keys["rsa"])), "algorithm not allowed")


def test_disabled_means_anonymous():
    auth = Authenticator.from_config(identity())
    assert not auth.enabled
    assert auth.authenticate([(b"authorization", b"Bearer whatever")]) is ANONYMOUS
    assert ANONYMOUS.auth == "none" and ANONYMOUS.groups == frozenset()


# --------------------------------------------------------------------------- credentials (RFC 6750)

def test_no_credentials(auth):
    exc = refused(auth, [(b"host", b"x")], "no credentials", error="invalid_request", kind=NoCredentials)
    # RFC 6750 section 3.1: no error code when the request carried no credentials
    assert exc.www_authenticate() == "Bearer"
    meta = "https://gw.example/.well-known/oauth-protected-resource"
    assert exc.www_authenticate(meta) == f'Bearer resource_metadata="{meta}"'


def test_challenge_format(auth, keys):
    exc = refused(auth, bearer(token(keys["rsa"], {"exp": NOW - 3600})), "token expired")
    assert exc.www_authenticate() == 'Bearer error="invalid_token", error_description="token expired"'
    assert exc.www_authenticate("https://gw/meta") == (
        'Bearer resource_metadata="https://gw/meta", error="invalid_token", '
        'error_description="token expired"')


@pytest.mark.parametrize("headers, description", [
    ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], "several Authorization headers"),
    ([(b"x-api-key", b"a"), (b"x-api-key", b"b")], "several X-Api-Key headers"),
    ([(b"authorization", b"Bearer a"), (b"x-api-key", b"a")], "both Authorization and X-Api-Key"),
    ([(b"authorization", b"Basic YWxpY2U6cHc=")], "unsupported authorization scheme (use Bearer)"),
    ([(b"authorization", b"Bearer")], "malformed bearer token"),
    ([(b"authorization", b"Bearer a b")], "malformed bearer token"),
    ([(b"authorization", b"Bearer a, Bearer b")], "malformed bearer token"),
    ([(b"authorization", b"Bearer\tabc")], "unsupported authorization scheme (use Bearer)"),
    ([(b"authorization", b"Bearer ab\x00c")], "malformed bearer token"),
    ([(b"x-api-key", b"key with spaces")], "malformed API key"),
    ([(b"x-api-key", b"")], "malformed API key"),
])
def test_malformed_credentials_are_invalid_request(auth, headers, description):
    refused(auth, headers, description, error="invalid_request")


# --------------------------------------------------------------------------- API keys

KEY_A, KEY_B, KEY_C = "fgk_alpha-" + "a" * 30, "fgk_bravo-" + "b" * 30, "fgk_charlie-" + "c" * 30


def api_keys_config() -> list[dict]:
    return [{"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "groups": groups}
            for name, key, groups in (("ci-bot", KEY_A, ["automation"]), ("agent", KEY_B, ["support"]),
                                      ("ops", KEY_C, ["ops", "support"]))]


@pytest.fixture
def key_auth() -> Authenticator:
    return Authenticator.from_config(identity(api_keys=api_keys_config()))


def test_api_key_both_ways(key_auth):
    expected = Caller("agent", frozenset({"support"}), "api_key", {}, "agent")
    assert key_auth.authenticate([(b"x-api-key", KEY_B.encode())]) == expected
    assert key_auth.authenticate(bearer(KEY_B)) == expected
    assert key_auth.authenticate(bearer(KEY_B)).name == "agent"


def test_wrong_api_key(key_auth):
    refused(key_auth, [(b"x-api-key", KEY_A.encode() + b"x")], "unknown API key")
    refused(key_auth, bearer(KEY_A[:-1]), "unknown API key")
    refused(key_auth, [(b"x-api-key", KEY_A.upper().encode())], "unknown API key")


def test_jwt_shaped_api_key_header_is_not_a_jwt(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], api_keys=api_keys_config())
    tok = token(keys["rsa"])
    assert auth.authenticate(bearer(tok)).auth == "jwt"
    refused(auth, [(b"x-api-key", tok.encode())], "unknown API key")


def test_bearer_api_key_alongside_jwt(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], api_keys=api_keys_config())
    assert auth.authenticate(bearer(KEY_C)).subject == "ops"
    assert auth.authenticate(bearer(token(keys["rsa"]))).subject == "alice"


def _count_compare_digest(auth: Authenticator, headers) -> int:
    """Count calls of hmac.compare_digest during one authenticate (a C function: 'c_call')."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        if event == "c_call" and arg is hmac.compare_digest:
            calls += 1

    sys.setprofile(profile)
    try:
        try:
            auth.authenticate(headers)
        except AuthError:
            pass
    finally:
        sys.setprofile(None)
    return calls


def test_api_key_comparison_touches_every_key(key_auth):
    """No early exit: the first key, the last key and no key all cost the same comparisons."""
    counts = {which: _count_compare_digest(key_auth, [(b"x-api-key", key.encode())])
              for which, key in (("first", KEY_A), ("last", KEY_C), ("none", "fgk_nope"))}
    assert counts == {"first": 3, "last": 3, "none": 3}


def test_keygen():
    key, digest = keygen()
    other, _ = keygen()
    assert key != other
    assert re.fullmatch(r"fgk_[A-Za-z0-9_-]{43}", key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    ApiKey.model_validate({"name": "svc", "sha256": digest})          # pastes into the config as is
    auth = Authenticator.from_config(identity(api_keys=[{"name": "svc", "sha256": digest}]))
    assert auth.authenticate([(b"x-api-key", key.encode())]).subject == "svc"


# --------------------------------------------------------------------------- alg none, confusion

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "noNe"])
@pytest.mark.parametrize("signature", [b"", b"\x00" * 32])
def test_alg_none_in_every_casing(auth, alg, signature):
    """RFC 8725 section 3.1; auth0 2015 "Critical vulnerabilities in JSON Web Token libraries"."""
    tok = sign_raw({"alg": alg, "typ": "JWT"}, claims_for(ISSUER, now=NOW), signature=signature)
    refused(auth, bearer(tok), "unsigned tokens (alg none) are refused")


def test_missing_or_mistyped_alg(auth, keys):
    for header in ({"kid": "rsa-1"}, {"alg": None, "kid": "rsa-1"}, {"alg": ["RS256"], "kid": "rsa-1"}):
        tok = sign_raw(header, claims_for(ISSUER, now=NOW), keys["rsa"], "RS256")
        refused(auth, bearer(tok), "missing alg")
    tok = sign_raw({"alg": "rs256", "kid": "rsa-1"}, claims_for(ISSUER, now=NOW), keys["rsa"], "RS256")
    refused(auth, bearer(tok), "algorithm not allowed")


def test_hs256_signed_with_rsa_public_key_pem(auth, keys):
    """HS/RS confusion (CVE-2017-11424 in PyJWT): the public PEM used as the HMAC secret."""
    from cryptography.hazmat.primitives import serialization

    pem = keys["rsa"].public.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, pem.strip(), keys["rsa"].public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)):
        tok = sign_raw({"alg": "HS256", "kid": "rsa-1"}, claims_for(ISSUER, now=NOW), secret=secret)
        refused(auth, bearer(tok), "algorithm not allowed")


def test_hs256_signed_with_the_jwk_as_secret(auth, keys):
    """JWK-as-HMAC-secret (CVE-2022-29217 class): the published JWK, serialized, as the HMAC key."""
    for secret in (json.dumps(keys["rsa"].jwk).encode(), json.dumps(keys["ec"].jwk, sort_keys=True).encode(),
                   keys["rsa"].jwk["n"].encode()):
        tok = sign_raw({"alg": "HS256", "kid": "rsa-1"}, claims_for(ISSUER, now=NOW), secret=secret)
        refused(auth, bearer(tok), "algorithm not allowed")


def test_symmetric_jwk_in_the_key_set_is_never_a_key(tmp_path, keys):
    """An `oct` key (or an RSA key declaring an HS alg) in a JWKS never becomes an HMAC secret."""
    secret = b"k" * 32
    extra = [{"kty": "oct", "kid": "shared", "k": b64url(secret).decode(), "alg": "HS256"},
             {**keys["rsa2"].jwk, "kid": "rsa-as-hs", "alg": "HS256"}]
    auth = file_auth(tmp_path, [keys["rsa"]], extra=extra)
    assert auth.stats["keys"] == 1
    for kid in ("shared", "rsa-as-hs"):
        tok = sign_raw({"alg": "HS256", "kid": kid}, claims_for(ISSUER, now=NOW), secret=secret)
        refused(auth, bearer(tok), "algorithm not allowed")
        tok = sign_raw({"alg": "RS256", "kid": kid}, claims_for(ISSUER, now=NOW), keys["rsa2"], "RS256")
        refused(auth, bearer(tok), "unknown signing key", kind=UnknownKey)


def test_alg_must_match_key_type(tmp_path, keys):
    """RFC 8725 section 3.1: the key decides which algorithm may verify, not the token."""
    auth = file_auth(tmp_path, [keys["rsa"], keys["ec"], keys["ec384"]],
                     algorithms=["RS256", "ES256", "ES384"])
    mismatch = "signing key does not match the token's algorithm"
    # an EC signature presented under an RSA kid and vice versa
    refused(auth, bearer(token(keys["ec"], headers={"kid": "rsa-1"})), mismatch)
    refused(auth, bearer(token(keys["rsa"], headers={"kid": "ec-1"})), mismatch)
    # ES384 against a P-256 key, ES256 against a P-384 key
    refused(auth, bearer(token(keys["ec384"], headers={"kid": "ec-1"})), mismatch)
    refused(auth, bearer(token(keys["ec"], headers={"kid": "ec-384"})), mismatch)
    assert auth.authenticate(bearer(token(keys["ec384"]))).subject == "alice"


def test_jwk_alg_member_restricts(tmp_path, keys):
    pinned = {**keys["rsa"].jwk, "alg": "PS256"}
    auth = file_auth(tmp_path, [], extra=[pinned], algorithms=["RS256", "PS256"])
    refused(auth, bearer(token(keys["rsa"], alg="RS256")), "signing key does not match the token's algorithm")
    assert auth.authenticate(bearer(token(keys["rsa"], alg="PS256"))).subject == "alice"


def test_zero_ecdsa_signature(auth, keys):
    """CVE-2022-21449 ("psychic signatures"): r = s = 0 must not verify."""
    tok = sign_raw({"alg": "ES256", "kid": "ec-1"}, claims_for(ISSUER, now=NOW), signature=b"\x00" * 64)
    refused(auth, bearer(tok), "invalid signature")


def test_tampered_payload(auth, keys):
    tok = token(keys["rsa"], {"sub": "alice"})
    head, _, sig = tok.split(".")
    forged = b64url(json.dumps(claims_for(ISSUER, {"sub": "admin"}, now=NOW)).encode()).decode()
    refused(auth, bearer(f"{head}.{forged}.{sig}"), "invalid signature")
    refused(auth, bearer(f"{head}.{tok.split('.')[1]}."), "missing signature")


# --------------------------------------------------------------------------- kid, jku, x5u, jwk

@pytest.mark.parametrize("kid", ["unknown", "../../../../etc/passwd", "/dev/null", "' OR '1'='1' --",
                                 "rsa-1\x00", "RSA-1", " rsa-1", "", "a" * 500, "rsa-1/../rsa-1"])
def test_kid_games_are_unknown_keys(auth, keys, kid):
    """RFC 8725 section 3.10: kid is a lookup key only; never a path, a query or a prefix."""
    refused(auth, bearer(token(keys["rsa"], headers={"kid": kid})), "unknown signing key", kind=UnknownKey)


@pytest.mark.parametrize("kid", [1, ["rsa-1"], {"k": "rsa-1"}, True, None])
def test_kid_of_wrong_type(auth, keys, kid):
    refused(auth, bearer(token(keys["rsa"], headers={"kid": kid})), "kid must be a string")


def test_missing_kid(tmp_path, keys):
    # one key per type: a token without kid is verified by the one key of its type
    auth = file_auth(tmp_path, [keys["rsa"], keys["ec"]])
    assert auth.authenticate(bearer(token(keys["rsa"], headers={"kid": DROP}))).subject == "alice"
    assert auth.authenticate(bearer(token(keys["ec"], headers={"kid": DROP}))).subject == "alice"
    # several keys could verify it: refused, not tried one by one
    auth = file_auth(tmp_path, [keys["rsa"], keys["rsa2"]])
    refused(auth, bearer(token(keys["rsa"], headers={"kid": DROP})),
            "token has no kid and several keys could verify it")


def test_jku_x5u_jwk_x5c_headers_are_ignored(tmp_path, keys):
    """CVE-2018-0114 (embedded jwk) and RFC 8725 section 3.10 (jku/x5u): keys never come from a token."""
    attacker = keys["attacker"]
    with OIDCProvider() as evil:
        evil.add_key(attacker)
        auth = file_auth(tmp_path, [keys["rsa"]])
        headers = {"jku": evil.jwks_url, "x5u": evil.jwks_url + "/cert.pem", "jwk": attacker.jwk,
                   "x5c": ["MIIB"]}
        # the attacker's key under the legitimate kid: the configured key verifies, and fails
        refused(auth, bearer(token(attacker, headers=headers)), "invalid signature")
        # the attacker's key under a new kid: unknown, and nothing was fetched from their URL
        renamed = SigningKey("evil-1", "RS256", attacker.private, {**attacker.jwk, "kid": "evil-1"})
        refused(auth, bearer(token(renamed, headers=headers)), "unknown signing key", kind=UnknownKey)
        run(auth.refresh())
        assert sum(evil.requests.values()) == 0
        # the same headers on a genuine token change nothing
        assert auth.authenticate(bearer(token(keys["rsa"], headers=headers))).subject == "alice"


# --------------------------------------------------------------------------- time claims

@pytest.mark.parametrize("claims, description", [
    ({"exp": DROP}, "exp claim required"),
    ({"exp": str(NOW + 300)}, "exp claim must be a NumericDate"),       # cf. GHSA-h395-gr6q-cpjc
    ({"exp": True}, "exp claim must be a NumericDate"),
    ({"exp": None}, "exp claim must be a NumericDate"),
    ({"exp": [NOW + 300]}, "exp claim must be a NumericDate"),
    ({"exp": 10 ** 30}, "exp claim must be a NumericDate"),
    ({"nbf": str(NOW)}, "nbf claim must be a NumericDate"),
    ({"nbf": None}, "nbf claim must be a NumericDate"),
    ({"iat": "now"}, "iat claim must be a NumericDate"),
    ({"iat": {"t": NOW}}, "iat claim must be a NumericDate"),
])
def test_missing_and_mistyped_time_claims(auth, keys, claims, description):
    refused(auth, bearer(token(keys["rsa"], claims)), description)


def test_exp_infinity_and_nan(auth, keys):
    for literal in (b"1e400", b"NaN", b"Infinity", b"-Infinity"):
        payload = json.dumps(claims_for(ISSUER, {"exp": 0}, now=NOW)).encode()
        payload = payload.replace(b'"exp": 0', b'"exp": ' + literal)
        assert literal in payload
        tok = sign_raw({"alg": "RS256", "kid": "rsa-1"}, payload, keys["rsa"])
        exc = refused(auth, bearer(tok))
        assert exc.description in ("exp claim must be a NumericDate", "malformed token")


@pytest.mark.parametrize("claims, ok", [
    # exp: valid while now < exp + leeway (RFC 7519 section 4.1.4 plus leeway)
    ({"exp": NOW - LEEWAY}, False),
    ({"exp": NOW - LEEWAY + 1}, True),
    ({"exp": NOW - LEEWAY + 0.001}, True),
    ({"exp": NOW - LEEWAY - 0.001}, False),
    # nbf: valid once now + leeway >= nbf (section 4.1.5)
    ({"nbf": NOW + LEEWAY}, True),
    ({"nbf": NOW + LEEWAY + 1}, False),
    ({"nbf": NOW + LEEWAY + 0.001}, False),
    # iat: a token issued further in the future than the leeway is refused
    ({"iat": NOW + LEEWAY}, True),
    ({"iat": NOW + LEEWAY + 1}, False),
    ({"iat": NOW - 10 ** 6, "exp": NOW + 60}, True),
])
def test_time_claims_at_the_leeway_edges(auth, keys, claims, ok):
    tok = token(keys["rsa"], claims)
    if ok:
        assert auth.authenticate(bearer(tok)).subject == "alice"
    else:
        refused(auth, bearer(tok))


def test_zero_leeway(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], leeway="0s")
    refused(auth, bearer(token(keys["rsa"], {"exp": NOW})), "token expired")
    assert auth.authenticate(bearer(token(keys["rsa"], {"exp": NOW + 1}))).subject == "alice"
    refused(auth, bearer(token(keys["rsa"], {"nbf": NOW + 1})), "token not yet valid")
    refused(auth, bearer(token(keys["rsa"], {"iat": NOW + 1})), "token issued in the future")


# --------------------------------------------------------------------------- issuer and audience

@pytest.mark.parametrize("iss", [
    "https://idp.example.com.evil", "https://idp.example.co", "https://idp.example.com/",
    "https://idp.example.com/evil", "HTTPS://IDP.EXAMPLE.COM", "https://idp.example.com ",
    "http://idp.example.com",
    "https://evil.example/https://idp.example.com", "", ["https://idp.example.com"], None, DROP,
])
def test_issuer_must_match_exactly(auth, keys, iss):
    """CVE-2024-53861 (PyJWT partial issuer match); RFC 8725 section 3.8."""
    refused(auth, bearer(token(keys["rsa"], {"iss": iss})), "issuer mismatch")


@pytest.mark.parametrize("aud, ok", [
    ("fastgate", True), (["other", "fastgate"], True), (["fastgate"], True),
    ("fastgate-evil", False), ("fastgat", False), ("Fastgate", False), ("fastgate ", False),
    (["fastgate-evil", "other"], False), ([], False), ([1], False), (["fastgate", 1], False),
    ({"fastgate": True}, False), (None, False), (DROP, False), ("", False),
])
def test_audience_must_intersect_exactly(auth, keys, aud, ok):
    """RFC 7519 section 4.1.3; RFC 8725 section 3.9."""
    tok = token(keys["rsa"], {"aud": aud})
    if ok:
        assert auth.authenticate(bearer(tok)).subject == "alice"
    else:
        refused(auth, bearer(tok), "audience mismatch")


# --------------------------------------------------------------------------- envelope

def test_crit_is_refused(auth, keys):
    """RFC 7515 section 4.1.11: we understand no extension, so any crit is refused."""
    for crit in (["exp"], [], ["b64"], "exp"):
        refused(auth, bearer(token(keys["rsa"], headers={"crit": crit})),
                "crit header parameters are not supported")
    refused(auth, bearer(token(keys["rsa"], headers={"b64": False})), "unencoded payloads are not supported")


def test_huge_token_refused_before_decoding(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], max_token_bytes="2KiB")
    # not even base64: the size check comes first
    refused(auth, bearer(b"!" * 2049), "token too large")
    refused(auth, [(b"x-api-key", b"k" * 2049)], "API key too large")
    big = token(keys["rsa"], {"pad": "x" * 3000})
    refused(auth, bearer(big), "token too large")
    assert auth.authenticate(bearer(token(keys["rsa"], {"pad": "x" * 800}))).subject == "alice"


def test_default_size_cap_holds_megabyte_tokens(auth, keys):
    refused(auth, bearer(token(keys["rsa"], {"pad": "x" * (1 << 20)})), "token too large")


def test_duplicate_claims_refused(auth, keys):
    """RFC 7519 section 4: reject duplicates (PyJWT keeps the last one; another parser the first)."""
    base = claims_for(ISSUER, now=NOW)
    body = json.dumps(base)[:-1]
    for dup in (', "sub": "admin"}', ', "groups": ["admins"]}', ', "exp": 9999999999}', ', "aud": "other"}',
                ', "nested": {"a": 1, "a": 2}}'):
        tok = sign_raw({"alg": "RS256", "kid": "rsa-1"}, (body + dup).encode(), keys["rsa"])
        refused(auth, bearer(tok), "duplicate claim")


def test_duplicate_header_parameters_refused(auth, keys):
    payload = json.dumps(claims_for(ISSUER, now=NOW))
    for header in ('{"alg":"RS256","kid":"rsa-1","alg":"none"}', '{"alg":"none","alg":"RS256","kid":"rsa-1"}',
                   '{"alg":"RS256","kid":"rsa-2","kid":"rsa-1"}'):
        tok = sign_raw(header, payload, keys["rsa"], "RS256")
        refused(auth, bearer(tok), "duplicate header parameter")


@pytest.mark.parametrize("payload, description", [
    (b"[1, 2]", "payload is not a JSON object"),
    (b'"claims"', "payload is not a JSON object"),
    (b"\xef\xbb\xbf{}", "malformed token"),                        # UTF-8 BOM
    ('{"sub": "alice"}'.encode("utf-16"), "malformed token"),
    (b'{"sub": "al\xffice"}', "malformed token"),
    (b"{" * 5000, "malformed token"),
])
def test_malformed_payload(tmp_path, keys, payload, description):
    auth = file_auth(tmp_path, [keys["rsa"]], max_token_bytes="64KiB")
    refused(auth, bearer(sign_raw({"alg": "RS256", "kid": "rsa-1"}, payload, keys["rsa"])), description)


@pytest.mark.parametrize("shape, error, description", [
    ("{tok}.", "invalid_token", "malformed token"),                  # four parts
    ("{head}..{rest}", "invalid_token", "malformed token"),
    ("a.b.c", "invalid_token", "malformed token"),                   # header is not base64url JSON
    ("W10.e30.c2ln", "invalid_token", "malformed token"),            # header is [] (not an object)
    ("{head}==.e30.c2ln", "invalid_request", "malformed bearer token"),
    ("e30.e30.", "invalid_token", "missing alg"),                    # {} is a JWS header, just a bad one
])
def test_odd_shapes(auth, keys, shape, error, description):
    tok = token(keys["rsa"])
    head, rest = tok.split(".", 1)
    refused(auth, bearer(shape.format(tok=tok, head=head, rest=rest)), description, error=error)


# --------------------------------------------------------------------------- subject and groups

@pytest.mark.parametrize("groups, expected", [
    (["support", "emea"], {"support", "emea"}),
    ("support emea", {"support", "emea"}),
    ("support,emea", {"support", "emea"}),
    ("support, emea  ops", {"support", "emea", "ops"}),
    ("", set()),
    ([], set()),
    (None, set()),
    (DROP, set()),
    (["Domain Admins", "CN=ops,OU=groups,DC=example"], {"Domain Admins", "CN=ops,OU=groups,DC=example"}),
    (["8c6a7f3e-1b2d-4c5e-9f00-aa11bb22cc33"], {"8c6a7f3e-1b2d-4c5e-9f00-aa11bb22cc33"}),   # Azure AD ids
    (["support", "support", ""], {"support"}),
])
def test_groups_shapes(auth, keys, groups, expected):
    assert auth.authenticate(bearer(token(keys["rsa"], {"groups": groups}))).groups == frozenset(expected)


@pytest.mark.parametrize("groups", [7, {"support": True}, ["support", 7], [["support"]], True])
def test_groups_of_wrong_type(auth, keys, groups):
    refused(auth, bearer(token(keys["rsa"], {"groups": groups})),
            "groups claim must be a list of strings or a string")


@pytest.mark.parametrize("sub", [
    "alice\r\nX-Fastgate-Groups: admins", "alice\n", "alice\r", "al\x00ice", "al\x1bice", "al\x7fice",
    "al\x85ice", "al\u2028ice", "al\ud800ice",
])
def test_control_characters_in_subject(auth, keys, sub):
    """Claims may become upstream headers: CR/LF (RFC 9110 section 5.5) and friends are refused."""
    refused(auth, bearer(token(keys["rsa"], {"sub": sub})), "subject claim contains control characters")


@pytest.mark.parametrize("groups", [["support\r\nx-admin: 1"], "support\nadmins", "support\tadmins",
                                    ["a\x00"], ["a\u2029b"], "a\x85b"])
def test_control_characters_in_groups(auth, keys, groups):
    refused(auth, bearer(token(keys["rsa"], {"groups": groups})), "groups claim contains control characters")


@pytest.mark.parametrize("sub", ["", 42, None, DROP, ["alice"], {"id": "alice"}])
def test_subject_must_be_a_non_empty_string(auth, keys, sub):
    refused(auth, bearer(token(keys["rsa"], {"sub": sub})), "subject claim must be a non-empty string")


def test_custom_and_nested_claims(tmp_path, keys):
    auth = file_auth(tmp_path, [keys["rsa"]], subject_claim="email", groups_claim="realm_access.roles")
    tok = token(keys["rsa"], {"email": "bob@example.com", "realm_access": {"roles": ["finance-leads"]}})
    caller = auth.authenticate(bearer(tok))
    assert (caller.subject, caller.groups) == ("bob@example.com", frozenset({"finance-leads"}))
    # an exact claim name wins over the dotted path (Auth0 namespaced claims contain dots)
    auth = file_auth(tmp_path, [keys["rsa"]], groups_claim="https://example.com/groups")
    tok = token(keys["rsa"], {"https://example.com/groups": ["x"], "groups": ["y"]})
    assert auth.authenticate(bearer(tok)).groups == frozenset({"x"})


# --------------------------------------------------------------------------- verified-token cache

def test_cache_hit_then_expiry(tmp_path, keys):
    clock = Clock(NOW)
    auth = file_auth(tmp_path, [keys["rsa"]], clock=clock)
    tok = token(keys["rsa"], {"exp": NOW + 60})
    first = auth.authenticate(bearer(tok))
    assert auth.authenticate(bearer(tok)) is first
    assert (auth.stats["cache_misses"], auth.stats["cache_hits"]) == (1, 1)
    clock.t = NOW + 60 + LEEWAY - 0.5
    assert auth.authenticate(bearer(tok)) is first
    clock.t = NOW + 60 + LEEWAY
    refused(auth, bearer(tok), "token expired")
    refused(auth, bearer(tok), "token expired")          # and it was evicted: the cold path says so too
    assert auth.stats["cache_hits"] == 2


def test_cache_is_bounded_and_lru(tmp_path, keys):
    path = write_jwks(tmp_path / "jwks.json", [keys["rsa"]])
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=path)), clock=Clock(NOW), cache_size=2,
                                     auto_refresh=False)
    run(auth.start())
    toks = [token(keys["rsa"], {"sub": f"user{i}"}) for i in range(3)]
    auth.authenticate(bearer(toks[0]))
    auth.authenticate(bearer(toks[1]))
    auth.authenticate(bearer(toks[0]))            # 0 is now the most recent
    auth.authenticate(bearer(toks[2]))            # evicts 1
    hits = auth.stats["cache_hits"]
    auth.authenticate(bearer(toks[0]))
    assert auth.stats["cache_hits"] == hits + 1
    auth.authenticate(bearer(toks[1]))
    assert auth.stats["cache_hits"] == hits + 1 and auth.stats["cache_misses"] == 4


def test_cache_disabled(tmp_path, keys):
    path = write_jwks(tmp_path / "jwks.json", [keys["rsa"]])
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=path)), clock=Clock(NOW), cache_size=0,
                                     auto_refresh=False)
    run(auth.start())
    tok = token(keys["rsa"])
    auth.authenticate(bearer(tok))
    auth.authenticate(bearer(tok))
    assert auth.stats["cache_hits"] == 0 and auth.stats["jwt_verified"] == 2


def test_refused_tokens_are_not_cached(auth, keys):
    tok = token(keys["rsa"], {"aud": "other"})
    for _ in range(2):
        refused(auth, bearer(tok), "audience mismatch")
    assert auth.stats["cache_hits"] == 0


# --------------------------------------------------------------------------- JWKS sources

def test_jwks_file_reread_on_refresh(tmp_path, keys):
    clock, mono = Clock(NOW), Clock(0.0)
    path = write_jwks(tmp_path / "jwks.json", [keys["rsa"]])
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=path)), clock=clock, monotonic=mono,
                                     auto_refresh=False)

    async def scenario():
        await auth.start()
        new = token(keys["ec"])
        refused(auth, bearer(new), kind=UnknownKey)
        write_jwks(tmp_path / "jwks.json", [keys["rsa"], keys["ec"]])
        assert await auth.refresh() is False                # within the interval: not re-read
        mono.t = 301.0
        assert await auth.refresh() is True
        assert auth.authenticate(bearer(new)).subject == "alice"

    run(scenario())


def test_jwks_skips_unusable_keys(tmp_path, keys):
    extra = [
        {**keys["rsa2"].jwk, "use": "enc"},                             # not for signatures
        {**keys["ec2"].jwk, "key_ops": ["encrypt"]},
        keys["small"].jwk,                                               # RSA below 2048 bits
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},                    # missing e
        {"kty": "EC", "kid": "bad-curve", "crv": "P-192", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": 7, "n": keys["rsa2"].jwk["n"], "e": "AQAB"},
        "not-an-object",
    ]
    auth = file_auth(tmp_path, [keys["rsa"]], extra=extra)
    assert auth.stats["keys"] == 1
    refused(auth, bearer(token(keys["small"])), "unknown signing key", kind=UnknownKey)


def test_jwks_private_members_are_ignored(tmp_path, keys):
    """A JWKS that leaks private members still only yields a public verification key."""
    from jwt.algorithms import RSAAlgorithm

    private_jwk = {**RSAAlgorithm.to_jwk(keys["rsa"].private, as_dict=True), "kid": "rsa-1"}
    assert "d" in private_jwk
    # as PyJWT exports it (key_ops: ["sign"]) it is not a verification key at all
    with pytest.raises(KeySourceError):
        file_auth(tmp_path, [], extra=[private_jwk])
    del private_jwk["key_ops"]
    auth = file_auth(tmp_path, [], extra=[private_jwk])
    assert auth.authenticate(bearer(token(keys["rsa"]))).subject == "alice"


@pytest.mark.parametrize("content", [b"", b"{}", b'{"keys": {}}', b'{"keys": []}', b"[]", b"not json",
                                     b'{"keys": [], "keys": []}'])
def test_bad_jwks_file(tmp_path, content):
    path = tmp_path / "jwks.json"
    path.write_bytes(content)
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=str(path))), auto_refresh=False)
    with pytest.raises(KeySourceError):
        run(auth.start())
    assert auth.stats["refresh_failures"] == 1


def test_missing_jwks_file(tmp_path):
    auth = Authenticator.from_config(identity(jwt_config(jwks_file=str(tmp_path / "nope.json"))),
                                     auto_refresh=False)
    with pytest.raises(KeySourceError, match="nope.json"):
        run(auth.start())


def provider_auth(idp: OIDCProvider, *, source: str = "discovery", clock: Clock | None = None,
                  mono: Clock | None = None, fetch_timeout: float = 2.0, **overrides) -> Authenticator:
    url = idp.discovery_url if source == "discovery" else idp.jwks_url
    cfg = jwt_config(issuer=idp.issuer, **{source: url}, **overrides)
    return Authenticator.from_config(identity(cfg), clock=clock or Clock(NOW), monotonic=mono or Clock(0.0),
                                     auto_refresh=False, fetch_timeout=fetch_timeout)


def idp_token(idp: OIDCProvider, key: SigningKey, claims: dict | None = None, **kw) -> str:
    kw.setdefault("now", NOW)
    return idp.mint(claims, key, **kw)


@pytest.mark.parametrize("source", ["discovery", "jwks_url"])
def test_provider_sources(idp, keys, source):
    auth = provider_auth(idp, source=source)
    run(auth.start())
    assert auth.authenticate(bearer(idp_token(idp, keys["rsa"]))).subject == "alice"
    assert auth.authenticate(bearer(idp_token(idp, keys["ec"]))).subject == "alice"
    assert idp.count("/jwks") == 1
    assert idp.count("/.well-known/openid-configuration") == (1 if source == "discovery" else 0)


def test_discovery_given_as_issuer_url(idp, keys):
    cfg = jwt_config(issuer=idp.issuer, discovery=idp.url)
    auth = Authenticator.from_config(identity(cfg), clock=Clock(NOW), auto_refresh=False)
    run(auth.start())
    assert idp.count("/.well-known/openid-configuration") == 1
    assert auth.authenticate(bearer(idp_token(idp, keys["rsa"]))).subject == "alice"


@pytest.mark.parametrize("issuer", ["https://evil.example", None, ["x"]])
def test_discovery_issuer_mismatch(idp, issuer):
    """OpenID Connect Discovery 1.0 section 4.3: the document's issuer must be identical."""
    idp.discovery_overrides = {"issuer": issuer if issuer is not None else idp.issuer + "/"}
    auth = provider_auth(idp)
    with pytest.raises(KeySourceError, match="issuer"):
        run(auth.start())
    assert idp.count("/jwks") == 0


@pytest.mark.parametrize("uri", ["http://jwks.example.com/keys", "ftp://127.0.0.1/keys", 42,
                                 "https://user:pw@idp.example.com/jwks"])
def test_discovery_jwks_uri_must_be_secure(idp, uri):
    idp.discovery_overrides = {"jwks_uri": uri}
    with pytest.raises(KeySourceError):
        run(provider_auth(idp).start())


def test_unknown_key_then_rotation(idp, keys):
    mono = Clock(0.0)
    auth = provider_auth(idp, mono=mono)

    async def scenario():
        await auth.start()
        new = idp_token(idp, keys["rsa2"])
        refused(auth, bearer(new), kind=UnknownKey)
        idp.add_key(keys["rsa2"])
        mono.t = 300.0
        assert await auth.refresh() is True
        assert auth.authenticate(bearer(new)).subject == "alice"
        # the old key is withdrawn: its cached and fresh tokens stop working at the next refresh
        old = idp_token(idp, keys["rsa"])
        auth.authenticate(bearer(old))
        idp.remove_key("rsa-1")
        mono.t = 600.0
        assert await auth.refresh() is False
        refused(auth, bearer(old), kind=UnknownKey)
        assert auth.authenticate(bearer(new)).subject == "alice"

    run(scenario())


def test_unknown_kid_storm_fetches_once(idp, keys):
    """N concurrent unknown-kid tokens share one fetch; more within the interval fetch nothing."""
    mono = Clock(0.0)
    auth = provider_auth(idp, mono=mono)
    rotated = idp_token(idp, keys["rsa2"])

    async def one_call(tok: str) -> str:
        # what the pipeline does: on UnknownKey, await refresh() once and retry
        try:
            return auth.authenticate(bearer(tok)).subject
        except UnknownKey:
            await auth.refresh()
            try:
                return auth.authenticate(bearer(tok)).subject
            except UnknownKey:
                return "refused"

    async def scenario():
        await auth.start()
        assert idp.count("/jwks") == 1
        idp.add_key(keys["rsa2"])
        idp.delay = 0.2
        mono.t = 300.0
        results = await asyncio.gather(*(one_call(rotated) for _ in range(20)))
        assert results == ["alice"] * 20
        assert idp.count("/jwks") == 2
        bogus = [idp_token(idp, keys["rsa2"], headers={"kid": f"random-{i}"}) for i in range(20)]
        results = await asyncio.gather(*(one_call(t) for t in bogus))
        assert results == ["refused"] * 20
        assert idp.count("/jwks") == 2 and idp.count("/.well-known/openid-configuration") == 1
        assert auth.stats["refresh_skipped"] == 20

    run(scenario())


@pytest.mark.parametrize("outage", ["503", "close", "hang"])
def test_outage_keeps_known_keys(idp, keys, outage):
    """threats.md section 3: JWKS down -> keep serving known keys, refuse unknown ones."""
    mono = Clock(0.0)
    auth = provider_auth(idp, mono=mono, fetch_timeout=0.3)
    idp.hang_seconds = 1.0

    async def scenario():
        await auth.start()
        idp.outage = outage
        idp.add_key(keys["rsa2"])
        mono.t = 300.0
        assert await auth.refresh() is False
        assert auth.stats["refresh_failures"] == 1 and auth.last_error
        assert auth.authenticate(bearer(idp_token(idp, keys["rsa"], {"sub": "fresh"}))).subject == "fresh"
        assert auth.authenticate(bearer(idp_token(idp, keys["ec"]))).subject == "alice"
        refused(auth, bearer(idp_token(idp, keys["rsa2"])), kind=UnknownKey)
        # no storm while down: the next attempt waits for the failure backoff
        attempts = idp.count("/.well-known/openid-configuration")
        assert await auth.refresh() is False
        assert idp.count("/.well-known/openid-configuration") == attempts
        idp.outage = None
        mono.t = 300.0 + FAILURE_BACKOFF
        assert await auth.refresh() is True
        assert auth.authenticate(bearer(idp_token(idp, keys["rsa2"]))).subject == "alice"

    run(scenario())
    for tok_part in ("Bearer", "eyJ"):
        assert tok_part not in (auth.last_error or "")


def test_start_during_outage_recovers(idp, keys):
    mono = Clock(0.0)
    idp.outage = "503"
    auth = provider_auth(idp, mono=mono)

    async def scenario():
        with pytest.raises(KeySourceError, match="503"):
            await auth.start()
        refused(auth, bearer(idp_token(idp, keys["rsa"])), kind=UnknownKey)
        idp.outage = None
        assert await auth.refresh() is False                  # backoff still running
        mono.t = FAILURE_BACKOFF
        assert await auth.refresh() is True
        assert auth.authenticate(bearer(idp_token(idp, keys["rsa"]))).subject == "alice"

    run(scenario())


def test_oversized_jwks_answer(idp, keys):
    idp.extra_jwks = [{"kty": "RSA", "kid": f"pad-{i}", "n": "x" * 4000, "e": "AQAB"} for i in range(300)]
    auth = provider_auth(idp, source="jwks_url")
    with pytest.raises(KeySourceError, match="larger"):
        run(auth.start())


def test_background_refresh_under_uvloop(idp, keys):
    """With auto_refresh, a key added at the provider is known before any token needs it."""
    import uvloop

    cfg = jwt_config(issuer=idp.issuer, jwks_url=idp.jwks_url, jwks_refresh_interval="200ms")
    auth = Authenticator.from_config(identity(cfg), clock=Clock(NOW))

    async def scenario():
        await auth.start()
        idp.add_key(keys["rsa2"])
        for _ in range(50):
            await asyncio.sleep(0.1)
            if auth.stats["keys"] == 3:
                break
        assert auth.authenticate(bearer(idp_token(idp, keys["rsa2"]))).subject == "alice"
        auth.close()

    uvloop.run(scenario())
    assert idp.count("/jwks") >= 2


# --------------------------------------------------------------------------- forwarding identity

def test_forward_headers_mode():
    caller = Caller("alice@example.com", frozenset({"support", "emea"}), "jwt", {})
    assert forward_headers(caller, "headers") == [
        (b"x-fastgate-subject", b"alice@example.com"), (b"x-fastgate-groups", b"emea,support"),
        (b"x-fastgate-auth", b"jwt")]
    assert forward_headers(caller, "none") == []
    assert forward_headers(ANONYMOUS, "headers")[1] == (b"x-fastgate-groups", b"")


def test_forward_headers_encode_separators_and_text():
    caller = Caller("zoë", frozenset({"CN=ops,OU=x", "Domain Admins", "50%"}), "jwt", {})
    headers = dict(forward_headers(caller, "headers"))
    assert headers[b"x-fastgate-subject"] == b"zo%C3%AB"
    groups = headers[b"x-fastgate-groups"].split(b",")
    assert groups == [b"50%25", b"CN=ops%2COU=x", b"Domain%20Admins"]
    for value in headers.values():
        assert re.fullmatch(rb"[\x21-\x7e]*", value)


def test_forward_jwt_mode():
    caller = Caller("ci-bot", frozenset({"automation"}), "api_key", {}, "ci-bot")
    [(name, value)] = forward_headers(caller, "jwt")
    assert name == b"x-fastgate-identity"
    jwks = gateway_jwks()
    assert all("d" not in k for k in jwks["keys"])
    key = pyjwt.PyJWK(jwks["keys"][0])
    assert pyjwt.get_unverified_header(value.decode())["kid"] == jwks["keys"][0]["kid"]
    claims = pyjwt.decode(value.decode(), key, algorithms=["ES256"], issuer="fastgate",
                          options={"require": ["exp", "iat", "iss", "sub"]})
    assert (claims["sub"], claims["groups"], claims["auth"], claims["name"]) == (
        "ci-bot", ["automation"], "api_key", "ci-bot")
    assert claims["exp"] - claims["iat"] == 60
    assert forward_headers(caller, "jwt") == [(name, value)]      # reused while fresh
    with pytest.raises(ValueError):
        forward_headers(caller, "cookie")


# --------------------------------------------------------------------------- demo identity

def test_demo_identity(tmp_path):
    demo = DemoIdentity(tmp_path)
    published = json.loads(Path(demo.jwks_path).read_text())
    assert published["keys"] and all("d" not in k for k in published["keys"])
    auth = Authenticator.from_config(identity(demo.jwt_config()), auto_refresh=False)
    run(auth.start())
    seen = {user: auth.authenticate(bearer(demo.token(user))) for user in demo.users}
    assert seen["alice"].groups == frozenset({"support"})
    assert seen["bob"].groups == frozenset({"finance-leads"})
    assert seen["ivan"].groups == frozenset({"interns"})
    with pytest.raises(KeyError):
        demo.token("mallory")


# --------------------------------------------------------------------------- fuzz

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.binary(max_size=300),
    st.lists(st.from_regex(rb"[A-Za-z0-9_\-=]{0,40}", fullmatch=True), min_size=1, max_size=5).map(b".".join),
    st.builds(lambda h, p: b64url(h) + b"." + b64url(p) + b".c2ln",
              st.binary(max_size=60), st.binary(max_size=60)),
    st.builds(lambda h: b64url(json.dumps(h).encode()) + b".e30.c2ln",
              st.dictionaries(st.sampled_from(["alg", "kid", "crit", "b64", "typ"]),
                              st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                                        st.sampled_from(["RS256", "ES256", "none", "HS256", "rsa-1"])))),
))
def test_fuzz_returns_or_raises_auth_error(tmp_path, keys, value):
    """h11's rule: any input returns a caller or raises our error, never anything else."""
    auth = _fuzz_auth(tmp_path, keys)
    for headers in ([(b"authorization", b"Bearer " + value)], [(b"authorization", value)],
                    [(b"x-api-key", value)]):
        try:
            result = auth.authenticate(headers)
        except AuthError as exc:
            assert exc.www_authenticate().startswith("Bearer")
        else:
            assert isinstance(result, Caller)


_FUZZ: dict[str, Authenticator] = {}


def _fuzz_auth(tmp_path: Path, keys) -> Authenticator:
    if "auth" not in _FUZZ:
        _FUZZ["auth"] = file_auth(tmp_path, [keys["rsa"], keys["ec"]], api_keys=api_keys_config())
    return _FUZZ["auth"]


# --------------------------------------------------------------------------- TLS to the provider

def test_https_provider_certificate_is_verified(keys, tmp_path, monkeypatch):
    """Keys fetched over https are only trusted with a verified certificate (system trust store)."""
    with OIDCProvider(tls=True) as idp:
        idp.add_key(keys["rsa"])
        assert idp.url.startswith("https://127.0.0.1:")
        auth = provider_auth(idp)
        with pytest.raises(KeySourceError, match="CERTIFICATE_VERIFY_FAILED"):
            run(auth.start())
        assert idp.count("/.well-known/openid-configuration") == 0
        # trusted through the standard OpenSSL variable: the same code path succeeds
        (tmp_path / "ca.pem").write_bytes(idp.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        auth = provider_auth(idp)
        run(auth.start())
        assert auth.authenticate(bearer(idp_token(idp, keys["rsa"]))).subject == "alice"
