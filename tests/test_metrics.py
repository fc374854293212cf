"""admin.http over real processes and sockets: /metrics counts exactly what was done (one worker and
two adding up, a worker killed and restarted), /healthz, /readyz while draining, 404/405, a taken
port; and the sans-IO parts: label mapping and the exposition of one process's metrics."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.gateway import GATEWAY_ENV, REPO_ROOT, base_config, free_port, wait_for

API_KEY = "fgk_metrics-test-key-0123456789abcdefghijklmnop"
BOGUS_TOKEN = "not-a-key-but-a-canary-4f1c9a"
SECRET_PATH = "SECRETPATH-7d1e"


def metrics_config(upstream_port: int, admin_port: int, **overrides) -> dict:
    config = base_config(
        upstream_port, admin={"http": f"127.0.0.1:{admin_port}"},
        identity={"api_keys": [{"name": "ci-bot", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                                "groups": ["automation"]}]},
        rules=[{"id": "allow-all", "functions": ["*"], "effect": "allow"},
               {"id": "no-create", "functions": ["create_item"], "effect": "deny"}], **overrides)
    return config


def scrape(admin_port: int) -> tuple[httpx.Response, dict[tuple[str, frozenset], float]]:
    r = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5)
    assert r.status_code == 200, r.text
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r, samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= lbls)


def calls(samples: dict, function: str, decision: str, status_class: str, error: str) -> float:
    return value(samples, "fastgate_calls_total", function=function, decision=decision,
                 status_class=status_class, error=error)


def key(**headers) -> dict:
    return {"X-Api-Key": API_KEY, **headers}


def test_metrics_count_exactly_what_was_done(upstream, gateway_factory):
    admin = free_port()
    gw = gateway_factory(metrics_config(upstream.port, admin))
    _, before = scrape(admin)
    assert total(before, "fastgate_calls_total") == 0
    for i in range(3):
        assert httpx.get(f"{gw.url}/items/{SECRET_PATH}-{i}", headers=key()).status_code == 200
    for _ in range(2):
        assert httpx.post(f"{gw.url}/items", json={"a": 1},
                          headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 403
    for _ in range(2):
        assert httpx.get(f"{gw.url}/dead/x", headers=key()).status_code == 502
    assert httpx.get(f"{gw.url}/status/503", headers=key()).status_code == 503
    assert httpx.get(f"{gw.url}/nope/{SECRET_PATH}", headers=key()).status_code == 404
    assert httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {BOGUS_TOKEN}"}).status_code == 401

    r, s = scrape(admin)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert calls(s, "get_item", "allow", "2xx", "") == 3
    assert calls(s, "create_item", "deny", "4xx", "denied") == 2
    assert calls(s, "dead", "allow", "5xx", "upstream_unavailable") == 2
    assert calls(s, "status", "allow", "5xx", "") == 1
    assert calls(s, "", "", "4xx", "unknown_function") == 1
    assert calls(s, "", "", "4xx", "unauthenticated") == 1
    assert total(s, "fastgate_calls_total") == 10 == len(gw.access_lines())  # one count per access line

    gate, up = "fastgate_gateway_duration_seconds", "fastgate_upstream_duration_seconds"
    for function, n in (("get_item", 3), ("create_item", 2), ("dead", 2), ("status", 1), ("", 2)):
        assert value(s, gate + "_count", function=function) == n
        assert value(s, gate + "_bucket", function=function, le="+Inf") == n
        assert value(s, gate + "_sum", function=function) > 0
    assert value(s, up + "_count", function="get_item") == 3
    assert value(s, up + "_count", function="status") == 1
    assert total(s, up + "_count") == 4  # refused and unreachable calls never reached an upstream
    assert value(s, up + "_sum", function="get_item") > 0

    assert value(s, "fastgate_ready") == 1
    assert value(s, "fastgate_store_writable") == 1
    assert value(s, "fastgate_approvals_pending") == 0
    assert value(s, "fastgate_store_used_bytes") > 0
    assert value(s, "fastgate_store_map_size_bytes") >= value(s, "fastgate_store_used_bytes")
    assert total(s, "fastgate_build_info") == 1
    cores = {dict(lbls)["core"]: dict(lbls)["implementation"] for (n, lbls), _ in s.items() if n == "fastgate_core_info"}
    assert set(cores) >= {"pathnorm", "policy", "redact"} and set(cores.values()) <= {"compiled", "python"}

    # nothing the caller sent is in the exposition: keys, tokens, paths, subjects, request ids
    request_ids = {rec["request_id"] for rec in gw.access_lines()}
    for canary in (API_KEY, BOGUS_TOKEN, SECRET_PATH, "ci-bot", *request_ids):
        assert canary not in r.text

    assert wait_for(lambda: value(scrape(admin)[1], "fastgate_open_connections") == 0)
    with socket.create_connection(("127.0.0.1", gw.port)):
        assert wait_for(lambda: value(scrape(admin)[1], "fastgate_open_connections") == 1)


def test_two_workers_add_up_and_a_dead_worker_keeps_its_counts(upstream, gateway_factory):
    admin = free_port()
    gw = gateway_factory(metrics_config(upstream.port, admin, workers=2))
    assert wait_for(lambda: gw.stderr_text().count('"msg":"listening"') == 2)
    n = 60
    for _ in range(n):  # a new connection each time: the kernel spreads them over both workers
        assert httpx.get(f"{gw.url}/items/A1", headers=key()).status_code == 200
    assert wait_for(lambda: len(gw.access_lines()) == n)
    assert {rec["worker"] for rec in gw.access_lines()} == {0, 1}

    def counted() -> float:
        return calls(scrape(admin)[1], "get_item", "allow", "2xx", "")

    assert wait_for(lambda: counted() == n)
    _, s = scrape(admin)
    assert total(s, "fastgate_calls_total") == n
    assert value(s, "fastgate_gateway_duration_seconds_count", function="get_item") == n
    assert value(s, "fastgate_upstream_duration_seconds_count", function="get_item") == n

    pids = {rec["worker"]: rec["pid"] for rec in map(json.loads, re.findall(r'^\{.*"msg":"listening".*\}$',
                                                                         gw.stderr_text(), re.M))}
    with open(f"/proc/{pids[0]}/maps") as f:  # the workers' metric files are mapped from the private dir
        metrics_dir = os.path.dirname(next(line.split()[-1] for line in f if "fastgate-metrics-" in line))

    # worker 1 dies holding connections: the supervisor restarts it; its counts stay in the sums and
    # its open connections leave the gauge (10 connections: all on worker 0 by chance once in 1024)
    idle = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(10)]
    assert wait_for(lambda: value(scrape(admin)[1], "fastgate_open_connections") == 10)
    os.kill(pids[1], signal.SIGKILL)
    assert wait_for(lambda: gw.stderr_text().count('"msg":"listening"') == 3)
    _, s = scrape(admin)
    assert total(s, "fastgate_calls_total") == n
    assert value(s, "fastgate_gateway_duration_seconds_count", function="get_item") == n
    for sock in idle:
        sock.close()
    assert wait_for(lambda: value(scrape(admin)[1], "fastgate_open_connections") == 0)
    assert httpx.get(f"{gw.url}/items/A1", headers=key()).status_code == 200
    assert wait_for(lambda: counted() == n + 1)

    assert os.path.isdir(metrics_dir)
    assert gw.stop() == 0
    assert not os.path.exists(metrics_dir)  # the supervisor removes it on the way out


def test_healthz_and_readyz_while_draining(upstream, gateway_factory):
    admin = free_port()
    gw = gateway_factory(metrics_config(upstream.port, admin, limits={"upstream_timeout": "5s"}))
    base = f"http://127.0.0.1:{admin}"
    r = httpx.get(f"{base}/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    assert r.headers["content-type"] == "application/json"
    r = httpx.get(f"{base}/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ready"})

    result = {}

    def slow_call():
        with httpx.Client(timeout=10) as client:
            result["r"] = client.get(f"{gw.url}/slow-head/x", headers=key())

    t = threading.Thread(target=slow_call)
    t.start()
    assert wait_for(lambda: any(r.target.startswith("/slow-head/") for r in upstream.requests))
    gw.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 503)
    r = httpx.get(f"{base}/readyz")  # the slow call (3 s upstream) is still in flight
    assert r.json() == {"status": "not_ready", "reason": "draining"}
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert value(scrape(admin)[1], "fastgate_ready") == 0
    t.join(15)
    assert result["r"].status_code == 200
    assert gw.proc.wait(10) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=1)


def test_readyz_503_while_the_store_refuses_records(upstream, gateway_factory):
    admin = free_port()
    gw = gateway_factory(metrics_config(upstream.port, admin, store={"map_size": "256KiB"}))
    big = json.dumps({"pad": "x" * 40000}).encode()
    statuses = []
    for i in range(40):
        r = httpx.post(f"{gw.url}/echo/{i}", content=big, headers=key(**{"content-type": "application/json"}))
        statuses.append(r.status_code)
        if r.status_code == 503:
            break
    assert statuses[-1] == 503 and set(statuses[:-1]) == {200}, statuses
    r = httpx.get(f"http://127.0.0.1:{admin}/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready" and r.json()["reason"].startswith("store unavailable: store failing:")
    _, s = scrape(admin)
    assert value(s, "fastgate_ready") == 0 and value(s, "fastgate_store_writable") == 0
    assert calls(s, "echo", "allow", "5xx", "unavailable") == 1
    assert calls(s, "echo", "allow", "2xx", "") == len(statuses) - 1


def test_other_paths_methods_and_broken_requests(upstream, gateway_factory):
    admin = free_port()
    gateway_factory(metrics_config(upstream.port, admin))
    base = f"http://127.0.0.1:{admin}"
    for path in ("/", "/metrics/", "/nope", "/READYZ", "/metricsx"):
        r = httpx.get(base + path)
        assert (r.status_code, r.json()) == (404, {"error": "not_found"}), path
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
        r = httpx.request(method, f"{base}/metrics")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "GET"
    assert httpx.get(f"{base}/metrics?name[]=fastgate_ready").status_code == 200
    r = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", admin), timeout=5) as sock:
            sock.sendall(data)
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
            return out

    assert raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431 ")
    assert raw(b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")  # no Host
    assert raw(b"GET /healthz/../metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    answer = raw(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize("workers", [1, 2])
def test_taken_port_refuses_to_start(upstream, tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        admin = taken.getsockname()[1]
        config = dict(metrics_config(upstream.port, admin, workers=workers), listen=f"127.0.0.1:{free_port()}")
        path = tmp_path / "fastgate.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run([sys.executable, "-m", "fastgate", "run", "-c", str(path)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, **GATEWAY_ENV, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 1
    assert "admin.http: cannot listen" in proc.stderr and f"127.0.0.1:{admin}" in proc.stderr
    assert '"msg":"listening"' not in proc.stderr


# -- sans-IO ------------------------------------------------------------------------------------------

def test_labels_are_bounded():
    from fastgate.metrics import error_kind, status_class

    assert error_kind(None) == error_kind("") == ""
    assert error_kind("denied") == "denied"
    assert error_kind("unauthenticated: token from alice expired") == "other"
    assert error_kind("client disconnected") == "other"
    assert [status_class(s) for s in (0, 101, 200, 302, 404, 503, 999)] == [
        "none", "1xx", "2xx", "3xx", "4xx", "5xx", "none"]


def test_one_process_exposition():
    from fastgate.metrics import AdminHttp, Metrics

    m = Metrics()
    m.observe_call("get_item", "allow", 200, None, 0.2, 1.5)
    m.observe_call("get_item", "allow", 200, None, 0.3, 2.5)
    m.observe_call("get_item", "deny", 403, "denied", 0.1, None)
    m.observe_call(None, None, 400, "bad_request: secret-ish detail", None, None)
    m.set_connections(3)
    m.serve_state(lambda: {"ready": True, "approvals_pending": 2})
    http = AdminHttp(m, lambda: None)
    status, headers, body = http.answer(b"GET", b"/metrics")
    assert status == 200 and dict(headers)[b"content-type"].startswith(b"text/plain; version=0.0.4")
    text = body.decode()
    assert "secret-ish" not in text
    s = {(x.name, frozenset(x.labels.items())): x.value
         for f in text_string_to_metric_families(text) for x in f.samples}
    assert calls(s, "get_item", "allow", "2xx", "") == 2
    assert calls(s, "get_item", "deny", "4xx", "denied") == 1
    assert calls(s, "", "", "4xx", "other") == 1
    assert value(s, "fastgate_gateway_duration_seconds_count", function="get_item") == 3
    assert value(s, "fastgate_gateway_duration_seconds_count", function="") == 0
    assert value(s, "fastgate_upstream_duration_seconds_count", function="get_item") == 2
    assert value(s, "fastgate_upstream_duration_seconds_sum", function="get_item") == pytest.approx(0.004)
    assert value(s, "fastgate_upstream_duration_seconds_bucket", function="get_item", le="0.0025") == 2
    assert value(s, "fastgate_upstream_duration_seconds_bucket", function="get_item", le="0.001") == 0
    assert value(s, "fastgate_open_connections") == 3
    assert value(s, "fastgate_ready") == 1 and value(s, "fastgate_approvals_pending") == 2
    assert "fastgate_store_writable" not in text  # not given: left out, not zero

    assert http.answer(b"GET", b"/readyz")[0] == 200
    not_ready = AdminHttp(m, lambda: "draining")
    status, _, body = not_ready.answer(b"GET", b"/readyz")
    assert (status, json.loads(body)) == (503, {"status": "not_ready", "reason": "draining"})
    assert http.answer(b"POST", b"/readyz")[0] == 405
    assert http.answer(b"GET", b"/other")[0] == 404
