"""End-to-end load benchmark: bench upstream direct, nginx, and fastgate under the same load.

    python bench/e2e.py [--duration 10] [--connections 32] [--quick] [--json FILE]
    python bench/e2e.py --upstream-answer mcp-sse ...   # the upstream answers an MCP result as SSE

Layout on a 2-core machine: the server under test runs alone on core 0; the load generator
shares core 1 with the bench upstream (there is no third core). So req/s can be limited
by core 1 rather than by the server; the figure that stays comparable is the server's CPU
time per request, read from /proc before and after each load window. See bench/README.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import procs, wrk  # noqa: E402
from bench.procs import BenchError  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SERVER_CORE, LOAD_CORE = 0, 1
TARGETS = ("upstream", "direct", "nginx", "fastgate")
TARGET_HELP = {
    "upstream": "a second bench upstream alone on core 0: its own capacity",
    "direct": "load straight at the shared upstream on core 1 (no proxy)",
    "nginx": "nginx reverse proxy on core 0",
    "fastgate": "fastgate on core 0",
}

FASTGATE_YAML = """\
version: 1
listen: "127.0.0.1:${PORT}"
upstreams:
  bench:
    url: "http://127.0.0.1:${UPSTREAM_PORT}"
    inject_headers: {Authorization: "Bearer bench-secret"}
functions:
  - {name: bench_get, upstream: bench, http: {method: GET, path: "/bench"}}
  - {name: bench_post, upstream: bench, http: {method: POST, path: "/items/{item_id}"}}
rules:
  - {id: bench-open, functions: ["*"], effect: allow}
log: {access: false}
"""

NGINX_CONF = """\
worker_processes 1;
pid ${DIR}/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path ${DIR}/client_body;
    proxy_temp_path ${DIR}/proxy;
    fastcgi_temp_path ${DIR}/fastcgi;
    uwsgi_temp_path ${DIR}/uwsgi;
    scgi_temp_path ${DIR}/scgi;
    keepalive_requests 1000000;
    upstream bench {
        server 127.0.0.1:${UPSTREAM_PORT};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT};
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-secret";
        }
    }
}
"""


def fill(template: str, **values: object) -> str:
    """Replace ${NAME} placeholders (str.format would trip over nginx's braces)."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", str(value))
    return template


# ---------------------------------------------------------------- load generation

class Load:
    """Drives one bounded load window with wrk if present, else bench/loadgen.py; both pinned."""

    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.workdir = workdir
        self.use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and wrk.available())
        if args.loadgen == "wrk" and not wrk.available():
            raise BenchError("--loadgen wrk given but wrk is not installed")
        self.name = wrk.version() if self.use_wrk else "bench/loadgen.py (asyncio, uvloop)"

    def run(self, port: int, connections: int, duration: float) -> dict:
        a = self.args
        if self.use_wrk:
            return wrk.run(port, a.path, connections=connections, duration=duration, method=a.method,
                           body=a.body.encode(), headers=a.headers, core=LOAD_CORE, workdir=self.workdir)
        cmd = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--path", a.path,
               "--method", a.method, "--body", a.body, "-c", str(connections), "-d", str(duration),
               "--json", "-"]
        for name, value in a.headers.items():
            cmd += ["-H", f"{name}: {value}"]
        argv, preexec = procs.pinned(cmd, LOAD_CORE)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30,
                                 preexec_fn=preexec)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"loadgen did not finish within {duration + 30:.0f}s") from exc
        if out.returncode != 0:
            raise BenchError(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def children_cpu_seconds() -> float:
    """CPU of this script's reaped children: the load generator once subprocess.run returns."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(load: Load, port: int, server_pid: int, upstream_pid: int, connections: int,
            duration: float) -> dict:
    """One load window with the server's CPU read just before and just after it."""
    srv0, up0, gen0 = (procs.tree_cpu_seconds(server_pid), procs.tree_cpu_seconds(upstream_pid),
                       children_cpu_seconds())
    cores0, t0 = procs.core_times(), time.monotonic()
    result = load.run(port, connections, duration)
    wall = time.monotonic() - t0
    cores1 = procs.core_times()
    srv = procs.tree_cpu_seconds(server_pid) - srv0
    up = procs.tree_cpu_seconds(upstream_pid) - up0
    gen = children_cpu_seconds() - gen0
    n = result["requests"]
    cpu_us = srv / n * 1e6 if n else float("nan")
    result.update(
        wall_s=round(wall, 3),
        server_cpu_s=round(srv, 3),
        cpu_us_per_req=cpu_us,
        rps_per_busy_core=1e6 / cpu_us if n and srv > 0 else float("nan"),
        server_busy_pct=100 * srv / wall,
        # the load generator and the shared upstream, both on the load core (for "direct"
        # the upstream is also the server)
        load_procs_busy_pct=100 * (gen + up) / wall,
        # CPU on all cores charged to none of the measured processes: softirq plus neighbours
        other_busy_pct=100 * (sum(cores1[c]["busy"] - cores0[c]["busy"] for c in cores1)
                              - gen - up - (srv if server_pid != upstream_pid else 0)) / wall,
        # whole cores from /proc/stat: includes softirq (loopback TCP) that no process is
        # charged for, and anything else that ran there (a noisy neighbour shows up here)
        core_busy_pct={c: 100 * (cores1[c]["busy"] - cores0[c]["busy"]) / wall for c in cores1},
        core_softirq_pct={c: 100 * (cores1[c]["softirq"] - cores0[c]["softirq"]) / wall for c in cores1},
        steal_pct=100 * sum(cores1[c]["steal"] - cores0[c]["steal"] for c in cores1) / wall,
    )
    return result


# ---------------------------------------------------------------- targets

def probe(port: int, method: str, path: str, body: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """One request before loading a target, so a 404/502 setup is reported, not benchmarked:
    (status, content-type and framing, the first 300 bytes of the body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        hdrs = {"Content-Type": "application/json", **headers} if body else dict(headers)
        conn.request(method, path, body=body.encode() if body else None, headers=hdrs)
        resp = conn.getresponse()
        framing = "chunked" if resp.chunked else f"length {resp.getheader('Content-Length')}"
        return resp.status, f"{resp.getheader('Content-Type')}, {framing}", resp.read()[:300]
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"probe request to 127.0.0.1:{port}{path} failed: {exc!r}") from exc
    finally:
        conn.close()


def nginx_binary(args: argparse.Namespace) -> str | None:
    if args.nginx:
        return args.nginx
    return shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")


def upstream_cmd(args: argparse.Namespace, port: int) -> list[str]:
    cmd = [sys.executable, str(BENCH_DIR / "upstream.py"), "--port", str(port), "--answer", args.upstream_answer]
    return cmd + (["--split-writes"] if args.upstream_split_writes else [])


def start_target(name: str, args: argparse.Namespace, workdir: str, upstream_port: int) -> procs.Server:
    port = procs.free_port()
    if name == "upstream":
        return procs.start_server("upstream-alone", upstream_cmd(args, port), port, core=SERVER_CORE,
                                  workdir=workdir)
    if name == "nginx":
        ndir = Path(workdir) / "nginx"
        ndir.mkdir(exist_ok=True)
        (ndir / "nginx.conf").write_text(fill(NGINX_CONF, DIR=ndir, PORT=port, UPSTREAM_PORT=upstream_port))
        cmd = [nginx_binary(args), "-p", str(ndir), "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"]
        return procs.start_server("nginx", cmd, port, core=SERVER_CORE, workdir=workdir)
    if name == "fastgate":
        template = Path(args.fastgate_config).read_text() if args.fastgate_config else FASTGATE_YAML
        cfg = Path(workdir) / "fastgate.yaml"
        cfg.write_text(fill(template, PORT=port, UPSTREAM_PORT=upstream_port))
        cmd = [sys.executable, "-m", "fastgate", "run", "-c", str(cfg)]
        if "${PORT}" not in template:
            cmd += ["--listen", f"127.0.0.1:{port}"]
        if args.fastgate_workers:
            cmd += ["--workers", str(args.fastgate_workers)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        # cwd is the run's temp dir: relative store/audit/admin paths (var/...) start empty each run
        return procs.start_server("fastgate", cmd, port, core=SERVER_CORE, env=env, cwd=workdir,
                                  workdir=workdir, ready_timeout=30)
    raise ValueError(name)


def bench_target(name: str, args: argparse.Namespace, load: Load, workdir: str,
                 upstream: procs.Server) -> dict:
    """Start (or reuse) the target, check one request, warm up, then measure at N and 1 connection."""
    server = upstream if name == "direct" else start_target(name, args, workdir, upstream.port)
    try:
        status, kind, snippet = probe(server.port, args.method, args.path, args.body, args.headers)
        out: dict = {"probe_status": status, "probe_content": kind}
        log(f"[{name}] probe: {status}, {kind}")
        if not 200 <= status < 300:
            log(f"[{name}] WARNING: probe {args.method} {args.path} answered {status}: {snippet!r}")
        log(f"[{name}] warm-up {args.warmup:g}s")
        load.run(server.port, args.connections, args.warmup)
        for conns in (args.connections, 1):
            runs = []
            for i in range(args.repeat):
                before = wait_quiet(args.quiet_wait, name) if args.quiet_wait else None
                log(f"[{name}] measuring {conns} connection(s) for {args.duration:g}s"
                    + (f" ({i + 1}/{args.repeat})" if args.repeat > 1 else ""))
                run = measure(load, server.port, server.pid, upstream.pid, conns, args.duration)
                run["background_busy_pct_before"] = before
                runs.append(run)
            out[f"c{conns}"] = quietest_run(runs)
        return out
    finally:
        if server is not upstream:
            server.stop()


def quietest_run(runs: list[dict], quiet_pct: float = 10.0) -> dict:
    """The median-req/s window among the undisturbed ones (`other` under quiet_pct), else the
    least disturbed window; all windows stay in the JSON."""
    quiet = sorted((r for r in runs if r["other_busy_pct"] < quiet_pct), key=lambda r: r["rps"])
    chosen = dict(quiet[len(quiet) // 2] if quiet else min(runs, key=lambda r: r["other_busy_pct"]))
    if len(runs) > 1:
        chosen["repeats"] = [{"rps": round(r["rps"]), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                              "cpu_us_per_req": round(r["cpu_us_per_req"], 2),
                              "other_busy_pct": round(r["other_busy_pct"], 1)} for r in runs]
    return chosen


def wait_quiet(limit_s: float, name: str, threshold_pct: float = 10.0) -> float:
    """Wait, at most limit_s, until the machine is idle apart from us; returns the last reading.

    On a shared machine a neighbour's test run can take most of a core for minutes; a
    window measured then says more about the neighbour than about the server.
    """
    deadline = time.monotonic() + limit_s
    busy = background_busy_pct(0.5)
    if busy >= threshold_pct:
        log(f"[{name}] waiting up to {limit_s:g}s for a quiet machine ({busy:.0f}% of a core busy)")
    while busy >= threshold_pct and time.monotonic() < deadline:
        busy = background_busy_pct(0.5)
    if busy >= threshold_pct:
        log(f"[{name}] still {busy:.0f}% busy: measuring anyway")
    return round(busy, 1)


# ---------------------------------------------------------------- report

def background_busy_pct(seconds: float = 1.0) -> float:
    """CPU in use before anything of ours runs (percent of one core), to flag a noisy machine."""
    before = procs.core_times()
    time.sleep(seconds)
    after = procs.core_times()
    return 100 * sum(after[c]["busy"] - before[c]["busy"] for c in after) / seconds


def machine_info(load: Load, args: argparse.Namespace) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx = nginx_binary(args)
    nginx_version = ""
    if nginx:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
        nginx_version = (out.stderr or out.stdout).strip().replace("nginx version: ", "")
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "nginx": nginx_version or None, "load_generator": load.name,
            "pinned": procs.can_pin()}


def derive(results: dict, connections: int) -> dict:
    """Ratios and added latency; missing targets simply leave their entries out."""
    def get(target: str, conns: int, key: str) -> float | None:
        return results.get(target, {}).get(f"c{conns}", {}).get(key)

    d: dict = {"added_latency_p50_us_at_1_connection": {}, "ratios": {}, "left_out": {}}
    for target, res in results.items():  # a target that mostly answered errors gives no figures
        for key, run in res.items():
            if isinstance(run, dict) and run.get("requests"):
                bad = run["non_2xx"] + run["errors"] + run["timeouts"]
                if bad > 0.01 * run["requests"]:
                    d["left_out"][target] = f"{bad} of {run['requests']} responses at {key} were not 2xx"
    results = {t: r for t, r in results.items() if t not in d["left_out"]}
    base = get("direct", 1, "p50_ms")
    for t in ("nginx", "fastgate"):
        p50 = get(t, 1, "p50_ms")
        if base is not None and p50 is not None:
            d["added_latency_p50_us_at_1_connection"][t] = round((p50 - base) * 1000, 1)
    pairs = {"fastgate/nginx req/s": ("fastgate", "nginx", "rps"),
             "fastgate/nginx CPU per request": ("fastgate", "nginx", "cpu_us_per_req"),
             "fastgate/direct req/s": ("fastgate", "direct", "rps"),
             "nginx/direct req/s": ("nginx", "direct", "rps")}
    for label, (a, b, key) in pairs.items():
        x, y = get(a, connections, key), get(b, connections, key)
        if x is not None and y:
            d["ratios"][label] = round(x / y, 3)
    return d


def table(results: dict) -> str:
    head = (f"{'target':<10} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
            f"{'req/s/busy core':>15} {'srv busy':>8} {'core0':>5} {'core1':>5} {'other':>5} {'bad':>4}")
    rows = [head, "-" * len(head)]
    for target, res in results.items():
        if "error" in res:
            rows.append(f"{target:<10} FAILED: {res['error'].splitlines()[0]}")
            continue
        for key in sorted((k for k in res if k[0] == "c" and k[1:].isdigit()), key=lambda k: -int(k[1:])):
            r = res[key]
            core = r["core_busy_pct"]
            rows.append(f"{target:<10} {r['connections']:>5} {r['rps']:>9,.0f} {r['p50_ms']:>7.3f} "
                        f"{r['p99_ms']:>7.3f} {r['cpu_us_per_req']:>10.1f} {r['rps_per_busy_core']:>15,.0f} "
                        f"{r['server_busy_pct']:>7.0f}% {core.get(0, 0):>4.0f}% {core.get(1, 0):>4.0f}% "
                        f"{r['other_busy_pct']:>4.0f}% "
                        f"{r['non_2xx'] + r['errors'] + r['timeouts']:>4}")
    return "\n".join(rows)


def report(results: dict, derived: dict, args: argparse.Namespace, load_name: str) -> None:
    """The human-readable summary on stdout."""
    print()
    print(f"{args.method} {args.path}  {args.duration:g}s windows  load generator: {load_name}  "
          f"upstream answer: {args.upstream_answer}" + (" (split writes)" if args.upstream_split_writes else ""))
    print(f"server under test on core {SERVER_CORE}; load generator + bench upstream on core {LOAD_CORE}")
    print(table(results))
    print("srv busy: server processes' CPU / wall; core0/core1: whole cores from /proc/stat; other: CPU\n"
          "charged to none of the measured processes (softirq, neighbours). High other = noisy run.")
    print()
    for t, us in derived["added_latency_p50_us_at_1_connection"].items():
        print(f"added latency at 1 connection, p50 {t} - p50 direct: {us:+.1f} us")
    if derived["added_latency_p50_us_at_1_connection"]:
        print("  (direct never leaves core 1; a proxy adds two cross-core hops each way, so nginx's\n"
              "   figure is the floor any proxy pays on this layout)")
    for label, value in derived["ratios"].items():
        print(f"{label} ({args.connections} connections): {value:.3f}")
    for target, why in derived["left_out"].items():
        print(f"{target} left out of the ratios: {why}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per measured window (default 10)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="3 s windows, for a smoke run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=1, help="windows per measurement; the quietest is kept")
    p.add_argument("--quiet-wait", type=float, default=0, metavar="S",
                   help="before each window wait up to S seconds for other processes to go idle")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma list of " + "; ".join(f"{k}: {v}" for k, v in TARGET_HELP.items()))
    p.add_argument("--method", default="GET")
    p.add_argument("--path", default=None, help="default /bench for GET, /items/42 otherwise")
    p.add_argument("--body", default=None, help='request body; default \'{"name":"bench","qty":1}\' for POST')
    p.add_argument("-H", "--header", action="append", default=[], help="extra request header 'Name: value'")
    p.add_argument("--upstream-answer", choices=("bench", "mcp-json", "mcp-sse"), default="bench",
                   help="what the bench upstream answers: bench (301-byte JSON, default), mcp-json (an MCP "
                        "tools/call result, Content-Length), mcp-sse (the same result as one SSE event, chunked)")
    p.add_argument("--upstream-split-writes", action="store_true",
                   help="the upstream sends head, each chunk and the last chunk in separate writes")
    p.add_argument("--fastgate-config", default=None,
                   help="YAML template for fastgate; ${PORT} and ${UPSTREAM_PORT} are filled in")
    p.add_argument("--fastgate-workers", type=int, default=1, help="--workers for fastgate run (0: omit)")
    p.add_argument("--nginx", default=None, help="nginx binary (default: from PATH or /usr/sbin)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--json", metavar="FILE", help="write all numbers as JSON")
    args = p.parse_args(argv)
    args.method = args.method.upper()
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.path is None:
        args.path = "/bench" if args.method == "GET" else "/items/42"
    if args.body is None:
        args.body = "" if args.method in ("GET", "HEAD", "DELETE") else '{"name":"bench","qty":1}'
    args.headers = {k.strip(): v.strip() for k, v in (h.split(":", 1) for h in args.header)}
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop the servers on either, even if SIGINT came ignored
        signal.signal(sig, _raise_interrupt)
    workdir = tempfile.mkdtemp(prefix="fastgate-bench-")
    failed = False
    try:
        load = Load(args, workdir)
        machine = machine_info(load, args)
        machine["background_busy_pct"] = round(background_busy_pct(), 1)
        log(f"machine: {machine}")
        if machine["background_busy_pct"] > 20:
            log(f"WARNING: other processes already use {machine['background_busy_pct']:.0f}% of a core: "
                "req/s and latency will be noisy; CPU us/request holds up best")
        if not machine["pinned"]:
            log("WARNING: fewer than 2 cores or no affinity support: nothing is pinned")
        up_port = procs.free_port()
        upstream = procs.start_server("upstream", upstream_cmd(args, up_port), up_port, core=LOAD_CORE,
                                      workdir=workdir)
        results: dict = {}
        for target in args.targets:
            if target == "nginx" and not nginx_binary(args):
                log("[nginx] skipped: nginx is not installed (apt-get install nginx)")
                continue
            try:
                results[target] = bench_target(target, args, load, workdir, upstream)
            except BenchError as exc:
                failed = True
                log(f"[{target}] FAILED: {exc}")
                results[target] = {"error": str(exc)}
        derived = derive(results, args.connections)
        report(results, derived, args, load.name)
        if args.json:
            doc = {"machine": machine, "settings": {k: v for k, v in vars(args).items() if k != "json"},
                   "results": results, "derived": derived}
            Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
            log(f"numbers written to {args.json}")
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    raise SystemExit(main())
