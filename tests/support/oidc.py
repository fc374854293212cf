"""A real local OIDC provider for the identity tests: discovery + JWKS over HTTP on 127.0.0.1:0.

Keys are generated at test time (nothing private is committed). The provider runs a threaded
`http.server` in the background and can be steered while it runs:

    idp = OIDCProvider().start()
    key = idp.add_key(rsa_key("k1"))           # published in the JWKS from now on
    token = idp.mint({"sub": "alice"}, key)    # signed, with iss/aud/iat/exp filled in
    idp.remove_key("k1")                       # rotation
    idp.outage = "503"                         # or "close" (no answer) or "hang"; None to recover
    idp.delay = 0.2                            # answer slowly (to overlap concurrent fetches)
    idp.count("/jwks")                         # requests seen per path (refetch-storm checks)

`sign_raw(header, payload, key)` signs arbitrary header and payload bytes (duplicate members,
odd types) for attacks a well-behaved encoder cannot express.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import datetime
import ipaddress
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

AUDIENCE = "fastgate"
DROP = object()
"""A claim value meaning "leave this claim out" in `mint`."""

_ALGS = get_default_algorithms()


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass
class SigningKey:
    """A private key, its kid and its public JWK (what a provider publishes)."""

    kid: str | None
    alg: str
    private: Any
    jwk: dict[str, Any] = field(default_factory=dict)

    @property
    def public(self) -> Any:
        return self.private.public_key()


def rsa_key(kid: str | None = "rsa-1", bits: int = 2048, alg: str = "RS256") -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return _finish(SigningKey(kid, alg, private, jwk))


_CURVES = {"P-256": (ec.SECP256R1, "ES256"), "P-384": (ec.SECP384R1, "ES384"),
           "P-521": (ec.SECP521R1, "ES512")}


def ec_key(kid: str | None = "ec-1", curve: str = "P-256") -> SigningKey:
    curve_cls, alg = _CURVES[curve]
    private = ec.generate_private_key(curve_cls())
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return _finish(SigningKey(kid, alg, private, jwk))


def _finish(key: SigningKey) -> SigningKey:
    key.jwk = {k: v for k, v in key.jwk.items() if k not in ("kid", "alg")}
    key.jwk["use"] = "sig"
    if key.kid is not None:
        key.jwk["kid"] = key.kid
    return key


def _json(value: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


def sign_raw(header: dict[str, Any] | bytes | str, payload: dict[str, Any] | bytes | str,
             key: SigningKey | None = None, alg: str | None = None, *, secret: bytes | None = None,
             signature: bytes | None = None) -> str:
    """A compact JWS over exactly these header and payload bytes.

    `secret` signs with HMAC (the hash named by `alg`) over any bytes, e.g. a public key as an
    HMAC secret; `signature` puts these raw bytes in the signature part instead.
    """
    signing_input = b64url(_json(header)) + b"." + b64url(_json(payload))
    if signature is None:
        alg = alg or (key.alg if key else "HS256")
        if secret is not None:
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            signature = hmac.new(secret, signing_input, digest).digest()
        else:
            assert key is not None
            signature = _ALGS[alg].sign(signing_input, key.private)
    return (signing_input + b"." + b64url(signature)).decode()


def claims_for(issuer: str, overrides: dict[str, Any] | None = None, now: float | None = None,
               lifetime: int = 300) -> dict[str, Any]:
    """Valid default claims for `issuer`, then `overrides` (DROP removes a claim)."""
    now = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "aud": AUDIENCE, "sub": "alice", "groups": ["support"],
                              "iat": now, "exp": now + lifetime}
    for name, value in (overrides or {}).items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def mint(issuer: str, claims: dict[str, Any] | None = None, key: SigningKey | None = None, *,
         alg: str | None = None, headers: dict[str, Any] | None = None, now: float | None = None,
         lifetime: int = 300) -> str:
    """A signed token with default claims. `headers` entries override (DROP removes) the JOSE header."""
    assert key is not None
    header: dict[str, Any] = {"alg": alg or key.alg, "typ": "JWT"}
    if key.kid is not None:
        header["kid"] = key.kid
    for name, value in (headers or {}).items():
        if value is DROP:
            header.pop(name, None)
        else:
            header[name] = value
    return sign_raw(header, claims_for(issuer, claims, now, lifetime), key, alg or key.alg)


def _self_signed_cert() -> tuple[bytes, bytes]:
    """A certificate for IP 127.0.0.1, valid for a day; (cert PEM, unencrypted key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastgate test idp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer (timeouts, size caps) is expected here


class OIDCProvider:
    """Discovery at /.well-known/openid-configuration, keys at /jwks."""

    def __init__(self, issuer: str | None = None, tls: bool = False) -> None:
        self._issuer = issuer
        self.tls = tls
        self.cert_pem: bytes | None = None                # the self-signed certificate when tls
        self.keys: list[SigningKey] = []
        self.extra_jwks: list[dict[str, Any]] = []       # raw JWKs published as they are
        self.discovery_overrides: dict[str, Any] = {}
        self.outage: str | None = None                    # None | "503" | "close" | "hang"
        self.delay = 0.0
        self.hang_seconds = 10.0
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "OIDCProvider":
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                provider._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        if self.tls:
            self.cert_pem, key_pem = _self_signed_cert()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
                cert_file.write_bytes(self.cert_pem)
                key_file.write_bytes(key_pem)
                ctx.load_cert_chain(cert_file, key_file)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "OIDCProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self, keys: list[SigningKey] = ()) -> None:
        """Back to a healthy provider publishing `keys`, with the request counters cleared."""
        with self._lock:
            self.keys = list(keys)
            self.extra_jwks = []
            self.discovery_overrides = {}
            self.outage = None
            self.delay = 0.0
            self.requests.clear()

    # -- addresses
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the provider first"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return self._issuer or self.url

    @property
    def discovery_url(self) -> str:
        return self.url + "/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return self.url + "/jwks"

    # -- keys and tokens
    def add_key(self, key: SigningKey) -> SigningKey:
        with self._lock:
            self.keys.append(key)
        return key

    def remove_key(self, kid: str) -> None:
        with self._lock:
            self.keys = [k for k in self.keys if k.kid != kid]

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [dict(k.jwk) for k in self.keys] + [dict(j) for j in self.extra_jwks]}

    def mint(self, claims: dict[str, Any] | None = None, key: SigningKey | None = None, **kw: Any) -> str:
        return mint(self.issuer, claims, key or self.keys[0], **kw)

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    # -- serving
    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        with self._lock:
            self.requests[path] += 1
            outage, delay = self.outage, self.delay
        if delay:
            self._stop.wait(delay)
        if outage == "close":
            handler.close_connection = True
            return
        if outage == "hang":
            self._stop.wait(self.hang_seconds)
            handler.close_connection = True
            return
        if outage == "503":
            self._send(handler, 503, {"error": "temporarily_unavailable"})
        elif path == "/.well-known/openid-configuration":
            doc = {"issuer": self.issuer, "jwks_uri": self.jwks_url,
                   "id_token_signing_alg_values_supported": ["RS256", "ES256"]}
            with self._lock:
                doc.update(self.discovery_overrides)
            self._send(handler, 200, doc)
        elif path == "/jwks":
            self._send(handler, 200, self.jwks())
        else:
            self._send(handler, 404, {"error": "not_found"})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
