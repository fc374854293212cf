"""Processes and signals over real sockets: workers, SIGTERM drain, SIGHUP reload, TLS, status, demo."""
from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from support.gateway import REPO_ROOT, base_config, free_port, wait_for


def test_workers_share_the_port(upstream, gateway_factory):
    gw = gateway_factory(base_config(upstream.port, workers=2))
    assert wait_for(lambda: gw.stderr_text().count('"msg":"listening"') == 2)
    workers = set()
    for _ in range(60):  # new connection each time: the kernel spreads them over both sockets
        with httpx.Client() as client:
            r = client.get(f"{gw.url}/items/A1")
        assert r.status_code == 200
    assert wait_for(lambda: len(gw.access_lines()) >= 60)
    workers = {rec.get("worker") for rec in gw.access_lines()}
    assert workers == {0, 1}


def test_sigterm_drains_in_flight_call(upstream, gateway_factory):
    """A call in flight when SIGTERM arrives still gets its answer; then the process exits 0."""
    gw = gateway_factory(base_config(upstream.port, limits={"upstream_timeout": "5s"}))
    result = {}

    def slow_call():
        with httpx.Client(timeout=10) as client:
            result["r"] = client.get(f"{gw.url}/slow-head/x")

    t = threading.Thread(target=slow_call)
    t.start()
    assert wait_for(lambda: any(r.target.startswith("/slow-head/") for r in upstream.requests))
    gw.proc.send_signal(signal.SIGTERM)
    t.join(15)
    assert result["r"].status_code == 200
    assert gw.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()


def test_sighup_reload_swaps_tables_and_refuses_bad_config(upstream, gateway_factory):
    config = base_config(upstream.port)
    gw = gateway_factory(config)
    assert httpx.get(f"{gw.url}/reloaded/1").status_code == 404

    new = dict(config, listen=f"127.0.0.1:{gw.port}")
    new["functions"] = config["functions"] + [
        {"name": "reloaded", "upstream": "up", "http": {"method": "GET", "path": "/reloaded/{n}"}}]
    gw.config_path.write_text(yaml.safe_dump(new))
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: '"msg":"reloaded"' in gw.stderr_text())
    assert httpx.get(f"{gw.url}/reloaded/1").status_code == 200

    broken = dict(new, rules=[{"id": "r", "functions": ["*"], "effect": "allow", "when": [
        {"arg": "$.a", "op": "=<", "value": 1}]}])
    gw.config_path.write_text(yaml.safe_dump(broken))
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused" in gw.stderr_text())
    assert "unknown operator" in gw.stderr_text()
    assert httpx.get(f"{gw.url}/reloaded/1").status_code == 200  # the running config stayed
    assert gw.alive()


def test_invalid_config_refused_at_start(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nlisten: '127.0.0.1:1'\nbogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "fastgate", "run", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2
    assert "bogus" in proc.stderr


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_listener(upstream, gateway_factory, tmp_path):
    cert, key = _self_signed(tmp_path)
    gw = gateway_factory(base_config(upstream.port, tls={"cert": cert, "key": key}))
    ctx = ssl.create_default_context(cafile=cert)
    with httpx.Client(verify=ctx) as client:
        r = client.get(f"https://127.0.0.1:{gw.port}/items/A1")
    assert r.status_code == 200 and r.headers["x-request-id"]
    assert upstream.requests[-1].header("x-forwarded-proto") == b"https"


def test_status_names_the_core_implementation():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-m", "fastgate", "status"], capture_output=True, text=True,
                         timeout=30, env=env).stdout
    for core in ("http1", "pathnorm", "policy", "redact"):  # every compiled core is named
        assert f"core {core}: compiled" in out or f"core {core}: python" in out, out
    env["FASTGATE_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-m", "fastgate", "status"], capture_output=True, text=True,
                         timeout=30, env=env).stdout
    for core in ("http1", "pathnorm", "policy", "redact"):
        assert f"core {core}: python" in out, out
    assert "slower" in out


def test_demo_prints_curl_lines_that_work(tmp_path):
    """`fastgate demo` runs the bundled functions behind the gateway and its banner is true."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fastgate", "demo", "--listen", f"127.0.0.1:{port}"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        assert wait_for(lambda: '"msg":"listening"' in out_path.read_text(errors="replace"), 30), \
            out_path.read_text(errors="replace")
        text = out_path.read_text()
        line = next(ln for ln in text.splitlines() if "curl" in ln and "X-Api-Key" in ln and "/customers/" in ln)
        key = line.split("X-Api-Key: ")[1].split("'")[0]
        url = next(w for w in line.split() if w.startswith(f"http://127.0.0.1:{port}/"))
        r = httpx.get(url, headers={"X-Api-Key": key})
        assert r.status_code == 200, r.text
        assert httpx.get(url).status_code == 401
        tokens = dict(ln.strip()[len("export "):].split("=", 1) for ln in text.splitlines()
                      if ln.strip().startswith("export "))
        alice = tokens["ALICE"].strip("'")
        assert httpx.get(url, headers={"Authorization": f"Bearer {alice}"}).status_code == 200
        ivan = tokens["IVAN"].strip("'")
        assert httpx.get(url, headers={"Authorization": f"Bearer {ivan}"}).status_code == 403
        echo = httpx.post(f"http://127.0.0.1:{port}/echo", content=b'{"hi": 1}',
                          headers={"Authorization": f"Bearer {alice}"})
        assert echo.status_code == 200
        assert alice not in echo.text
        assert os.environ.get("FASTGATE_DEMO_UPSTREAM_TOKEN", "unset") not in echo.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


def test_gateway_serves_on_the_pure_python_references(upstream, gateway_factory):
    """FASTGATE_NO_EXTENSIONS=1: the same answers, slower, and the log says which cores run."""
    config = base_config(upstream.port, pii={"detectors": ["email"], "scan": ["response"]},
                         rules=[{"id": "small", "functions": ["echo"], "effect": "allow",
                                 "when": [{"arg": "$.n", "op": "<=", "value": 5}]},
                                {"id": "items", "functions": ["get_item"], "effect": "allow"}])
    gw = gateway_factory(config, env={"FASTGATE_NO_EXTENSIONS": "1"})
    ok = httpx.post(f"{gw.url}/echo/1", content=b'{"n": 1, "mail": "a@b.example"}',
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200 and "a@b.example" not in ok.text and "REDACTED" in ok.text
    assert httpx.post(f"{gw.url}/echo/1", content=b'{"n": 9}').status_code == 403
    assert httpx.get(f"{gw.url}/%2e%2e/items/x").status_code == 400  # climbs above the root
    assert '"pathnorm":"python"' in gw.stderr_text() and '"policy":"python"' in gw.stderr_text()
