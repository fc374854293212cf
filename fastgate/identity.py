"""Who is calling: verified callers from OIDC JWTs and API keys (threats.md section 3).

`Authenticator.authenticate(headers)` is synchronous and sans-IO: request headers in, a
`Caller` out, or an `AuthError` carrying the RFC 6750 answer. Keys are the only state that
needs I/O; `start()` and `refresh()` load them (a JWKS file, a JWKS URL, or OIDC discovery)
and swap one reference, so the hot path never waits for the network.

Verification is deliberately stricter than PyJWT's `decode`: PyJWT supplies the JWK parsing
and the signature primitives, while the envelope and claims are checked here, because
PyJWT accepts numeric strings as time claims, keeps the last of duplicate claims and trusts
the header's `alg` to pick the primitive. The rules, each with its test:

- credentials: `Authorization: Bearer <x>` or `X-Api-Key: <x>`, never both, never repeated;
  a Bearer value is a JWT when it has the JWS compact shape (RFC 7515 section 7.1) and its
  header decodes to a JSON object, otherwise it is an API key.
- the header `alg` must be in the configured allow-list and match the key's type (RFC 8725
  section 3.1); `none` in any casing, `crit` (RFC 7515 section 4.1.11) and `b64` are refused;
  `jku`, `x5u`, `jwk` and `x5c` are ignored: keys only come from the configuration.
- duplicate member names in the header or payload are refused (RFC 7515 section 5.2 allows
  rejecting them; a parser that keeps the first would read another token than ours).
- `exp` is required; `exp`, `nbf` and `iat` must be JSON numbers; `iss` equals the issuer
  exactly; `aud` (string or list) contains a configured audience exactly.
- subject and groups are refused when they hold control characters: they may become headers.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import h11
import jwt as pyjwt
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms

__all__ = [
    "ANONYMOUS", "AuthError", "Authenticator", "Caller", "KeySourceError", "NoCredentials",
    "UnknownKey", "forward_headers", "gateway_jwks",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller. `claims` is read-only and left out of equality and hashing."""

    subject: str
    groups: frozenset[str]
    auth: str                  # "jwt" | "api_key" | "none"
    claims: Mapping[str, Any] = field(compare=False, hash=False, repr=False)
    name: str | None = None    # the API key's name


ANONYMOUS = Caller("anonymous", frozenset(), "none", _EMPTY)


# --------------------------------------------------------------------------- errors

class AuthError(Exception):
    """A 401. `description` is one of our fixed phrases: never a token or a claim value."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def www_authenticate(self, resource_metadata: str | None = None) -> str:
        """The RFC 6750 section 3 challenge; `resource_metadata` per RFC 9728 section 5.1 (MCP)."""
        params = []
        if resource_metadata:
            params.append(f'resource_metadata="{_quoted(resource_metadata)}"')
        if self.error:
            params.append(f'error="{self.error}"')
            params.append(f'error_description="{_quoted(self.description)}"')
        return "Bearer " + ", ".join(params) if params else "Bearer"


class NoCredentials(AuthError):
    """No credentials at all. RFC 6750 section 3.1: the challenge then carries no error code."""

    def __init__(self) -> None:
        super().__init__("invalid_request", "no credentials")

    def www_authenticate(self, resource_metadata: str | None = None) -> str:
        if resource_metadata:
            return f'Bearer resource_metadata="{_quoted(resource_metadata)}"'
        return "Bearer"


class UnknownKey(AuthError):
    """The token names a key we do not hold; a refresh of the key set may bring it."""

    def __init__(self) -> None:
        super().__init__("invalid_token", "unknown signing key")


class KeySourceError(Exception):
    """The key set could not be loaded. The message names the source, never a token."""


def _quoted(text: str) -> str:
    # RFC 6750 section 3: error_description is %x20-21 / %x23-5B / %x5D-7E.
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def _invalid(description: str) -> AuthError:
    return AuthError("invalid_token", description)


def _bad_request(description: str) -> AuthError:
    return AuthError("invalid_request", description)


# --------------------------------------------------------------------------- parsing

_TOKEN68 = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")          # RFC 6750 section 2.1 b64token
_JWS = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_API_KEY = re.compile(rb"[\x21-\x7e]+")
# C0, DEL, C1, line/paragraph separators, lone surrogates: never let them reach a header.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SPLIT_GROUPS = re.compile(r"[ ,]+")
_MAX_DATE = 2**53


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate("duplicate member name")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _strict_json(data: bytes) -> Any:
    """UTF-8 JSON without duplicate names or NaN/Infinity (json.loads accepts both)."""
    return _DECODER.decode(data.decode("utf-8"))


def _b64url(segment: bytes) -> bytes:
    # RFC 7515 section 2: base64url without padding; the caller checked the alphabet, so the
    # lenient a2b_base64 sees only valid characters.
    if len(segment) % 4 == 1:
        raise ValueError("bad base64url length")
    return binascii.a2b_base64(segment.translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4))


def _jws_header(token: bytes) -> dict[str, Any] | None:
    """The JOSE header when `token` has the JWS compact shape, else None (an API key)."""
    if token.count(b".") != 2 or not _JWS.fullmatch(token):
        return None
    try:
        header = _strict_json(_b64url(token[:token.index(b".")]))
    except _Duplicate:
        raise _invalid("duplicate header parameter") from None
    except (ValueError, binascii.Error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _is_numeric_date(value: Any) -> bool:
    """RFC 7519 NumericDate: a JSON number; not a bool, a numeric string, NaN or a 400-digit int."""
    if type(value) is int:
        return -_MAX_DATE < value < _MAX_DATE
    return type(value) is float and math.isfinite(value) and -_MAX_DATE < value < _MAX_DATE


def _claim(payload: Mapping[str, Any], name: str) -> Any:
    """`name` exactly, else a dotted path into nested objects (Keycloak's `realm_access.roles`)."""
    if name in payload or "." not in name:
        return payload.get(name)
    value: Any = payload
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _groups(value: Any) -> frozenset[str]:
    """A list of strings, or one string of names separated by spaces and/or commas.

    Only space and comma separate: a CR, LF or tab inside the string is refused below,
    not quietly taken as a separator.
    """
    if value is None:
        return frozenset()
    if isinstance(value, str):
        names = [g for g in _SPLIT_GROUPS.split(value) if g]
    elif isinstance(value, list) and all(isinstance(g, str) for g in value):
        names = [g for g in value if g]
    else:
        raise _invalid("groups claim must be a list of strings or a string")
    for name in names:
        if _UNSAFE_TEXT.search(name):
            raise _invalid("groups claim contains control characters")
    return frozenset(names)


# --------------------------------------------------------------------------- keys

_ALGORITHMS: dict[str, Algorithm] = get_default_algorithms()
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_MIN_RSA_BITS = 2048
_Verifier = tuple[Algorithm, Any]


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    thumbprint: str
    verifiers: Mapping[str, _Verifier]      # alg -> (PyJWT primitive, public key)


def _thumbprint(public: dict[str, str]) -> str:
    # RFC 7638: SHA-256 of the required members, sorted, without whitespace.
    canonical = json.dumps(public, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _load_jwk(jwk: Any, allowed: frozenset[str]) -> _Key | None:
    """One usable verification key, or None (skipped: wrong use, symmetric, weak, unparsable).

    Only the public members are read, so a JWKS that carries private or symmetric material
    never turns into a secret (the JWK-as-HMAC-secret attack needs `kty: oct` or a key the
    HMAC primitive would accept; neither is ever built here).
    """
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and not (isinstance(ops, list) and "verify" in ops):
        return None
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            public = {"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}
            key = RSAAlgorithm.from_jwk(public)
            if key.key_size < _MIN_RSA_BITS:
                return None
            algs = _RSA_ALGS
        elif kty == "EC":
            public = {"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}
            algs = frozenset({_EC_ALGS[jwk["crv"]]})
            key = ECAlgorithm.from_jwk(public)
        elif kty == "OKP" and jwk.get("crv") in _OKP_CURVES:
            public = {"kty": "OKP", "crv": jwk["crv"], "x": jwk["x"]}
            algs = frozenset({"EdDSA"})
            key = OKPAlgorithm.from_jwk(public)
        else:
            return None
    except (KeyError, TypeError, ValueError, pyjwt.InvalidKeyError):
        return None
    if not all(isinstance(v, str) for v in public.values()):
        return None
    declared = jwk.get("alg")
    if declared is not None:
        algs = algs & {declared}
    algs = algs & allowed
    if not algs:
        return None
    return _Key(kid, _thumbprint(public), MappingProxyType({a: (_ALGORITHMS[a], key) for a in algs}))


class _KeySet:
    """An immutable JWKS index; a refresh builds a new one and swaps the reference."""

    __slots__ = ("keys", "by_kid", "thumbprints")

    def __init__(self, keys: list[_Key]) -> None:
        self.keys = tuple(keys)
        self.by_kid: dict[str, list[_Key]] = {}
        for key in keys:
            if key.kid is not None:
                self.by_kid.setdefault(key.kid, []).append(key)
        self.thumbprints = frozenset((k.kid, k.thumbprint) for k in keys)

    def select(self, alg: str, kid: str | None) -> _Verifier:
        """The key for this header; `alg` was already checked against the allow-list."""
        if kid is not None:
            candidates = self.by_kid.get(kid)
            if not candidates:
                raise UnknownKey()
            for key in candidates:
                verifier = key.verifiers.get(alg)
                if verifier is not None:
                    return verifier
            raise _invalid("signing key does not match the token's algorithm")
        found = [v for v in (k.verifiers.get(alg) for k in self.keys) if v is not None]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UnknownKey()
        raise _invalid("token has no kid and several keys could verify it")


def parse_jwks(document: bytes, allowed: frozenset[str]) -> tuple[_KeySet, int]:
    """(usable keys, number skipped). Raises KeySourceError when nothing usable is left."""
    try:
        doc = _strict_json(document)
    except (ValueError, RecursionError):
        raise KeySourceError("not a JSON document") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeySourceError('not a JWKS (expected {"keys": [...]})')
    keys = [k for k in (_load_jwk(jwk, allowed) for jwk in doc["keys"]) if k is not None]
    if not keys:
        raise KeySourceError("no usable signing key for the allowed algorithms")
    return _KeySet(keys), len(doc["keys"]) - len(keys)


# --------------------------------------------------------------------------- fetching

MAX_DOCUMENT_BYTES = 1 << 20
FETCH_TIMEOUT = 5.0
FAILURE_BACKOFF = 10.0
_DISCOVERY_PATH = "/.well-known/openid-configuration"


def _secure_url(url: str) -> urllib.parse.SplitResult:
    """https, or http to a loopback host (the config's rule for key sources)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if parts.scheme not in ("https", "http") or not host or parts.username is not None:
        raise KeySourceError("key URL must be an https URL without credentials")
    if parts.scheme == "http" and not loopback:
        raise KeySourceError("key URL must use https (plain http only for a loopback host)")
    return parts


async def http_get(url: str, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_DOCUMENT_BYTES) -> bytes:
    """GET one small JSON document over h11: 200 only, no redirects, bounded size and time.

    h11 and asyncio are already the gateway's runtime, so key fetching adds no dependency; it
    also ignores proxy environment variables, so an inherited HTTPS_PROXY cannot reroute it.
    """
    parts = _secure_url(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise KeySourceError(f"{url}: bad port") from None
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    host = parts.hostname or ""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls else None)
        try:
            conn = h11.Connection(h11.CLIENT)
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=[
                ("Host", authority), ("Accept", "application/json, application/jwk-set+json"),
                ("User-Agent", "fastgate"), ("Connection", "close")])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif type(event) is h11.Response:
                    status = event.status_code
                elif type(event) is h11.Data:
                    body += event.data
                    if len(body) > max_bytes:
                        raise KeySourceError(f"{url}: answer larger than {max_bytes} bytes")
                elif type(event) is h11.EndOfMessage:
                    break
                elif type(event) is h11.ConnectionClosed:
                    raise KeySourceError(f"{url}: connection closed early")
            if status != 200:
                raise KeySourceError(f"{url}: HTTP {status}")
            return bytes(body)
        finally:
            writer.transport.abort()   # nothing left to say; a TLS close_notify could stall

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except KeySourceError:
        raise
    except asyncio.TimeoutError:
        raise KeySourceError(f"{url}: timed out after {timeout:g}s") from None
    except (OSError, ValueError, h11.ProtocolError) as exc:
        raise KeySourceError(f"{url}: {type(exc).__name__}: {exc}") from None


def discovery_url(configured: str) -> str:
    """The configured value may be the issuer or the discovery document's own URL."""
    if configured.rstrip("/").endswith(_DISCOVERY_PATH):
        return configured
    return configured.rstrip("/") + _DISCOVERY_PATH


# --------------------------------------------------------------------------- authenticator

CACHE_SIZE = 10_000


class Authenticator:
    """Request headers -> `Caller`. One per config; `start()` before use, `close()` after.

    The pipeline's use: `authenticate(headers)`; on `UnknownKey`, `await refresh()` once and
    call `authenticate` again; any `AuthError` is a 401 with `www_authenticate()` as the
    challenge and `description` as the contract's `detail` and the access log's reason.
    """

    def __init__(self, identity: Any, *, cache_size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 fetch_timeout: float = FETCH_TIMEOUT, auto_refresh: bool = True) -> None:
        self.enabled = identity.jwt is not None or bool(identity.api_keys)
        self.stats: dict[str, int] = dict.fromkeys((
            "cache_hits", "cache_misses", "jwt_verified", "api_key_ok", "refused",
            "refreshes", "refresh_failures", "refresh_skipped", "keys", "keys_skipped"), 0)
        self.last_error: str | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._fetch_timeout = fetch_timeout
        self._auto_refresh = auto_refresh
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._cache_size = cache_size
        self._api_keys = tuple(
            (bytes.fromhex(k.sha256), Caller(k.name, frozenset(k.groups), "api_key", _EMPTY, k.name))
            for k in identity.api_keys)
        self._max_key_bytes = 8 * 1024
        self._keyset: _KeySet | None = None
        self._hmac_key: bytes | None = None
        self._source: str | None = None
        self._next_fetch: float | None = None
        self._inflight: asyncio.Future[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._jwks_uri: str | None = None
        self._last_ok = False
        cfg = identity.jwt
        self._jwt = cfg
        if cfg is None:
            return
        self._issuer: str = cfg.issuer
        self._audiences = frozenset(cfg.audiences)
        self._algorithms = frozenset(cfg.algorithms)
        self._leeway = float(cfg.leeway)
        self._max_token = int(cfg.max_token_bytes)
        self._max_key_bytes = self._max_token
        self._interval = float(cfg.jwks_refresh_interval)
        self._subject_claim: str = cfg.subject_claim
        self._groups_claim: str = cfg.groups_claim
        if cfg.hmac_secret is not None:
            # Config guarantees an HS*-only allow-list here; the secret is the only key.
            secret = cfg.hmac_secret.get_secret_value().encode()
            self._hmac_key = _ALGORITHMS["HS256"].prepare_key(secret)
        elif cfg.jwks_file is not None:
            self._source = "file"
        elif cfg.jwks_url is not None:
            self._source = "url"
            self._jwks_uri = cfg.jwks_url
        else:
            self._source = "discovery"

    @classmethod
    def from_config(cls, identity: Any, **options: Any) -> "Authenticator":
        """`identity` is a `fastgate.config.Identity`; options are for tests and benchmarks."""
        return cls(identity, **options)

    # ------------------------------------------------------------------ key loading

    async def start(self) -> None:
        """Load the keys once; on failure raise KeySourceError (the caller logs it, not fatal).

        A background task then refreshes every `jwks_refresh_interval`, so removed keys stop
        verifying and new ones are known before the first token that uses them.
        """
        if self._source is None:
            return
        if self._auto_refresh and self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._refresh_loop())
        if not await self._refresh_now():
            raise KeySourceError(self.last_error or "key set unavailable")

    async def refresh(self) -> bool:
        """Refetch the key set unless one was fetched recently; True when new keys arrived.

        At most one fetch per `jwks_refresh_interval` after a success, and per
        min(interval, FAILURE_BACKOFF) after a failure; concurrent callers share the fetch in
        flight. A failed fetch keeps the current keys.
        """
        if self._source is None:
            return False
        if self._inflight is None:
            if self._next_fetch is not None and self._monotonic() < self._next_fetch:
                self.stats["refresh_skipped"] += 1
                return False
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, _: asyncio.Future[bool]) -> None:
        self._inflight = None

    async def _refresh_now(self) -> bool:
        self._next_fetch = None
        await self.refresh()
        return self._last_ok

    async def _refresh_loop(self) -> None:
        while True:
            due = self._interval if self._next_fetch is None else self._next_fetch - self._monotonic()
            await asyncio.sleep(min(max(due, 0.01), self._interval))
            await self.refresh()

    async def _fetch(self) -> bool:
        """Load, parse and install; never raises (the outcome is in stats and last_error)."""
        allowed = self._algorithms
        try:
            document = await self._load_document()
            keyset, skipped = parse_jwks(document, allowed)
        except Exception as exc:  # noqa: BLE001 -- shared by every waiter: must not raise
            self.stats["refresh_failures"] += 1
            known = isinstance(exc, KeySourceError)
            self.last_error = str(exc) if known else f"key set: {type(exc).__name__}"
            self._last_ok = False
            if self._source == "discovery":
                self._jwks_uri = None
            self._next_fetch = self._monotonic() + min(self._interval, FAILURE_BACKOFF)
            return False
        self.stats["refreshes"] += 1
        self.stats["keys_skipped"] = skipped
        self.last_error = None
        self._last_ok = True
        self._next_fetch = self._monotonic() + self._interval
        return self._install(keyset)

    def _install(self, keyset: _KeySet) -> bool:
        old = self._keyset.thumbprints if self._keyset is not None else frozenset()
        self._keyset = keyset
        self.stats["keys"] = len(keyset.keys)
        if old - keyset.thumbprints:
            # A key was withdrawn (perhaps compromised): tokens it verified must be checked again.
            self._cache.clear()
        return bool(keyset.thumbprints - old)

    async def _load_document(self) -> bytes:
        cfg = self._jwt
        if self._source == "file":
            try:
                with open(cfg.jwks_file, "rb") as f:
                    data = f.read(MAX_DOCUMENT_BYTES + 1)
            except OSError as exc:
                raise KeySourceError(f"{cfg.jwks_file}: {exc.strerror or exc}") from None
            if len(data) > MAX_DOCUMENT_BYTES:
                raise KeySourceError(f"{cfg.jwks_file}: larger than {MAX_DOCUMENT_BYTES} bytes")
            return data
        if self._jwks_uri is None:
            url = discovery_url(cfg.discovery)
            try:
                meta = _strict_json(await http_get(url, self._fetch_timeout))
            except (ValueError, RecursionError):
                raise KeySourceError(f"{url}: not a JSON document") from None
            if not isinstance(meta, dict):
                raise KeySourceError(f"{url}: not a discovery document")
            # OpenID Connect Discovery 1.0 section 4.3: the issuer must be identical.
            if meta.get("issuer") != self._issuer:
                raise KeySourceError(f"{url}: issuer does not equal the configured issuer")
            uri = meta.get("jwks_uri")
            if not isinstance(uri, str):
                raise KeySourceError(f"{url}: no jwks_uri")
            _secure_url(uri)
            self._jwks_uri = uri
        return await http_get(self._jwks_uri, self._fetch_timeout)

    def close(self) -> None:
        for task in (self._loop_task, self._inflight):
            if task is not None:
                task.cancel()
        self._loop_task = self._inflight = None
        self._cache.clear()

    # ------------------------------------------------------------------ hot path

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Caller:
        """The verified caller of a request (lowercase header names). Raises AuthError."""
        if not self.enabled:
            return ANONYMOUS
        authorization = api_key = None
        for name, value in headers:
            if name == b"authorization":
                if authorization is not None:
                    raise self._refuse(_bad_request("several Authorization headers"))
                authorization = value
            elif name == b"x-api-key":
                if api_key is not None:
                    raise self._refuse(_bad_request("several X-Api-Key headers"))
                api_key = value
        if authorization is not None:
            if api_key is not None:
                raise self._refuse(_bad_request("both Authorization and X-Api-Key"))
            scheme, _, token = authorization.partition(b" ")
            if scheme.lower() != b"bearer":
                raise self._refuse(_bad_request("unsupported authorization scheme (use Bearer)"))
            token = token.lstrip(b" ")
            if len(token) > self._max_key_bytes:
                raise self._refuse(_invalid("token too large"))
            digest = hashlib.sha256(token).digest()
            entry = self._cache.get(digest)
            if entry is not None:
                if self._clock() < entry[1]:
                    self._cache.move_to_end(digest)
                    self.stats["cache_hits"] += 1
                    return entry[0]
                del self._cache[digest]
                raise self._refuse(_invalid("token expired"))
            return self._bearer(token, digest)
        if api_key is not None:
            if len(api_key) > self._max_key_bytes:
                raise self._refuse(_invalid("API key too large"))
            if not _API_KEY.fullmatch(api_key):
                raise self._refuse(_bad_request("malformed API key"))
            return self._match_api_key(hashlib.sha256(api_key).digest())
        raise self._refuse(NoCredentials())

    def _refuse(self, error: AuthError) -> AuthError:
        self.stats["refused"] += 1
        return error

    def _bearer(self, token: bytes, digest: bytes) -> Caller:
        if not _TOKEN68.fullmatch(token):
            raise self._refuse(_bad_request("malformed bearer token"))
        if self._jwt is not None:
            try:
                header = _jws_header(token)
                if header is not None:
                    return self._verify_jwt(token, header, digest)
            except AuthError as exc:
                raise self._refuse(exc) from None
            if not self._api_keys:
                raise self._refuse(_invalid("malformed token"))
        return self._match_api_key(digest)

    def _match_api_key(self, digest: bytes) -> Caller:
        """Compare against every configured hash: the time taken does not depend on which matched."""
        found = None
        for expected, caller in self._api_keys:
            if hmac.compare_digest(digest, expected):
                found = caller
        if found is None:
            raise self._refuse(_invalid("unknown API key"))
        self.stats["api_key_ok"] += 1
        return found

    # ------------------------------------------------------------------ JWT (cold path)

    def _verify_jwt(self, token: bytes, header: dict[str, Any], digest: bytes) -> Caller:
        self.stats["cache_misses"] += 1
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _invalid("missing alg")
        if alg.lower() == "none":
            raise _invalid("unsigned tokens (alg none) are refused")
        if alg not in self._algorithms:
            raise _invalid("algorithm not allowed")
        if "crit" in header:
            raise _invalid("crit header parameters are not supported")
        if header.get("b64", True) is not True:
            raise _invalid("unencoded payloads are not supported")
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):
            raise _invalid("kid must be a string")
        first, last = token.index(b"."), token.rindex(b".")
        try:
            payload = _strict_json(_b64url(token[first + 1:last]))
            signature = _b64url(token[last + 1:])
        except _Duplicate:
            raise _invalid("duplicate claim") from None
        except (ValueError, binascii.Error, RecursionError):
            raise _invalid("malformed token") from None
        if not isinstance(payload, dict):
            raise _invalid("payload is not a JSON object")
        if not signature:
            raise _invalid("missing signature")
        if self._hmac_key is not None:
            algorithm, key = _ALGORITHMS[alg], self._hmac_key
        elif self._keyset is None:
            raise UnknownKey()
        else:
            algorithm, key = self._keyset.select(alg, kid)
        if not algorithm.verify(token[:last], key, signature):
            raise _invalid("invalid signature")
        caller, deadline = self._check_claims(payload)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[digest] = (caller, deadline)
        self.stats["jwt_verified"] += 1
        return caller

    def _check_claims(self, payload: dict[str, Any]) -> tuple[Caller, float]:
        """RFC 7519 section 4.1 checks; returns the caller and the instant it stops being valid."""
        now, leeway = self._clock(), self._leeway
        if "exp" not in payload:
            raise _invalid("exp claim required")
        exp = payload["exp"]
        if not _is_numeric_date(exp):
            raise _invalid("exp claim must be a NumericDate")
        if now >= exp + leeway:                       # section 4.1.4: now must be before exp
            raise _invalid("token expired")
        if "nbf" in payload:
            nbf = payload["nbf"]
            if not _is_numeric_date(nbf):
                raise _invalid("nbf claim must be a NumericDate")
            if now + leeway < nbf:                    # section 4.1.5: now at or after nbf
                raise _invalid("token not yet valid")
        if "iat" in payload:
            iat = payload["iat"]
            if not _is_numeric_date(iat):
                raise _invalid("iat claim must be a NumericDate")
            if iat > now + leeway:
                raise _invalid("token issued in the future")
        iss = payload.get("iss")
        if type(iss) is not str or iss != self._issuer:
            raise _invalid("issuer mismatch")
        aud = payload.get("aud")
        if type(aud) is str:
            aud_ok = aud in self._audiences
        elif type(aud) is list and all(type(a) is str for a in aud):
            aud_ok = not self._audiences.isdisjoint(aud)
        else:
            aud_ok = False
        if not aud_ok:
            raise _invalid("audience mismatch")
        subject = _claim(payload, self._subject_claim)
        if type(subject) is not str or not subject:
            raise _invalid("subject claim must be a non-empty string")
        if _UNSAFE_TEXT.search(subject):
            raise _invalid("subject claim contains control characters")
        groups = _groups(_claim(payload, self._groups_claim))
        return Caller(subject, groups, "jwt", MappingProxyType(payload)), exp + leeway


# --------------------------------------------------------------------------- forwarding

GATEWAY_ISSUER = "fastgate"
FORWARD_TOKEN_SECONDS = 60
# Everything RFC 3986 leaves unencoded except ',' (our list separator) and '%': plain names
# pass unchanged, and a name with a comma, space or non-ASCII text cannot split or inject.
_HEADER_SAFE = "!#$&'()*+-./:;<=>?@[]^_`{|}~"
_PLAIN_HEADER_TEXT = re.compile(r"[A-Za-z0-9_.~" + re.escape(_HEADER_SAFE) + r"-]*")


def _header_text(text: str) -> bytes:
    if _PLAIN_HEADER_TEXT.fullmatch(text):
        return text.encode("ascii")
    return urllib.parse.quote(text, safe=_HEADER_SAFE).encode("ascii")


class _GatewaySigner:
    """A per-process ES256 key for `identity.forward: jwt`, created on first use.

    Create it before forking workers (call `gateway_jwks()`) when every worker should sign
    with the same key. Tokens are reused for half their lifetime: ES256 signing costs tens
    of microseconds, the lookup does not.
    """

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._private = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        members = {k: public[k] for k in ("crv", "kty", "x", "y")}
        self.kid = _thumbprint(members)
        self.jwks = {"keys": [{**members, "kid": self.kid, "use": "sig", "alg": "ES256"}]}
        self._tokens: dict[tuple, tuple[bytes, float]] = {}

    def token(self, caller: Caller, now: float) -> bytes:
        key = (caller.subject, caller.groups, caller.auth, caller.name)
        hit = self._tokens.get(key)
        if hit is not None and hit[1] - now > FORWARD_TOKEN_SECONDS / 2:
            return hit[0]
        iat = int(now)
        claims: dict[str, Any] = {"iss": GATEWAY_ISSUER, "sub": caller.subject,
                                  "groups": sorted(caller.groups), "auth": caller.auth,
                                  "iat": iat, "exp": iat + FORWARD_TOKEN_SECONDS}
        if caller.name is not None:
            claims["name"] = caller.name
        token = pyjwt.encode(claims, self._private, algorithm="ES256", headers={"kid": self.kid}).encode()
        if len(self._tokens) >= 4096:
            self._tokens.clear()
        self._tokens[key] = (token, iat + FORWARD_TOKEN_SECONDS)
        return token


_signer: _GatewaySigner | None = None


def _gateway_signer() -> _GatewaySigner:
    global _signer
    if _signer is None:
        _signer = _GatewaySigner()
    return _signer


def gateway_jwks() -> dict[str, Any]:
    """The public JWKS upstreams use to verify `x-fastgate-identity` tokens."""
    return _gateway_signer().jwks


def forward_headers(caller: Caller, mode: str) -> list[tuple[bytes, bytes]]:
    """Headers that tell the upstream who called (`identity.forward`); the caller's own
    credentials are never among them. Header values are percent-encoded text (RFC 3986),
    groups sorted and comma-joined."""
    if mode == "headers":
        return [(b"x-fastgate-subject", _header_text(caller.subject)),
                (b"x-fastgate-groups", b",".join(_header_text(g) for g in sorted(caller.groups))),
                (b"x-fastgate-auth", caller.auth.encode("ascii"))]
    if mode == "jwt":
        return [(b"x-fastgate-identity", _gateway_signer().token(caller, time.time()))]
    if mode == "none":
        return []
    raise ValueError(f"unknown identity.forward mode {mode!r}")
