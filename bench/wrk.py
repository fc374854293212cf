"""Run wrk pinned to a core and turn its text report into numbers.

wrk (C, epoll) costs far less CPU per request than any Python client, so when it is
installed it is the load generator: the load core then has room for the upstream too.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.procs import BenchError, pinned

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_PCT = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)


def available() -> bool:
    return shutil.which("wrk") is not None


def version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).split("Copyright")[0].strip()


def _lua(method: str, body: bytes, headers: dict[str, str]) -> str:
    """A wrk script that sets method, body and headers; long brackets avoid escaping."""
    lines = [f'wrk.method = "{method}"']
    if body:
        lines.append(f"wrk.body = [==[{body.decode()}]==]")
        headers = {"Content-Type": "application/json", **headers}
    for name, value in headers.items():
        lines.append(f'wrk.headers["{name}"] = [==[{value}]==]')
    return "\n".join(lines) + "\n"


def run(port: int, path: str, *, connections: int, duration: int, method: str = "GET", body: bytes = b"",
        headers: dict[str, str] | None = None, core: int | None = None, workdir: str = "/tmp") -> dict:
    """One wrk window of whole seconds (wrk takes no fractions); bounded by a hard timeout."""
    duration = max(1, int(round(duration)))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if method != "GET" or body or headers:
        script = Path(workdir) / f"wrk-{method.lower()}.lua"
        script.write_text(_lua(method, body, headers or {}))
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    argv, preexec = pinned(cmd, core)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, preexec_fn=preexec)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration + 30}s") from exc
    if out.returncode != 0:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    result = parse(out.stdout)
    result["connections"] = connections
    return result


def _seconds(match: re.Match | None) -> float:
    return float(match.group(1)) * _UNITS[match.group(2)] / 1e3 if match else 0.0


def parse(text: str) -> dict:
    """Requests, req/s, latency percentiles (ms) and error counts from `wrk --latency` output."""
    def number(pattern: str, default: float | None = None) -> float:
        m = re.search(pattern, text)
        if m is None:
            if default is None:
                raise BenchError(f"unexpected wrk output (no match for {pattern!r}):\n{text}")
            return default
        return float(m.group(1))

    pct = {int(q): float(v) * _UNITS[u] for q, v, u in _PCT.findall(text)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    conn_err, read_err, write_err, timeouts = (int(g) for g in errors.groups()) if errors else (0, 0, 0, 0)
    return {
        "requests": int(number(r"(\d+) requests in ")),
        "duration_s": _seconds(re.search(r"requests in ([\d.]+)(us|ms|s|m|h),", text)),
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": pct.get(50, 0.0),
        "p90_ms": pct.get(90, 0.0),
        "p99_ms": pct.get(99, 0.0),
        "non_2xx": int(number(r"Non-2xx or 3xx responses: (\d+)", 0)),
        "errors": conn_err + read_err + write_err,
        "timeouts": timeouts,
    }
