"""Micro-benchmarks of metrics: the per-call hook and a scrape.

`observe_call` runs once per finished call on the event loop (fastgate/listener.py), so it is
part of every call's CPU (~140-250 µs today). Measured both ways it runs:

- one process (`fastgate run`, one worker): prometheus_client's in-process values (a lock and
  a float add per value);
- multiprocess (`--workers N`): each value update writes this process's mmap file (a lock, a
  getpid() to notice forks, a struct pack into the map).

One call updates the counter and two histograms (sum + one bucket each): five value updates.
"refusal" is a call the gate answered itself (no upstream histogram: three updates).
The scrape benchmark renders 20 functions x 4 outcomes as one process, and merged from two
workers' files (what worker 0 does for each GET /metrics, on its event loop).
"""
from __future__ import annotations

import pytest

from fastgate.metrics import Metrics

FUNCTIONS = [f"function_{i:02d}" for i in range(20)]
OUTCOMES = [("allow", 200, None, 1.2), ("allow", 502, "upstream_unavailable", None),
            ("deny", 403, "denied", None), ("allow", 503, None, 3.0)]


@pytest.fixture(scope="module")
def multiprocess(tmp_path_factory):
    return str(tmp_path_factory.mktemp("metrics"))


def _metrics(mode: str, path: str) -> Metrics:
    return Metrics(path if mode == "multiprocess" else None)


@pytest.mark.parametrize("mode", ["one-process", "multiprocess"])
def test_observe_call_forwarded(benchmark, mode, multiprocess):
    m = _metrics(mode, multiprocess)
    benchmark(m.observe_call, "get_item", "allow", 200, None, 0.21, 1.3)
    assert m.calls.labels("get_item", "allow", "2xx", "")._value.get() > 0


@pytest.mark.parametrize("mode", ["one-process", "multiprocess"])
def test_observe_call_refused(benchmark, mode, multiprocess):
    m = _metrics(mode, multiprocess)
    benchmark(m.observe_call, "create_item", "deny", 403, "denied", 0.15, None)


@pytest.mark.parametrize("mode", ["one-process", "multiprocess"])
def test_set_connections(benchmark, mode, multiprocess):
    m = _metrics(mode, multiprocess)
    benchmark(m.set_connections, 17)


@pytest.mark.parametrize("mode", ["one-process", "multiprocess"])
def test_scrape(benchmark, mode, tmp_path):
    m = _metrics(mode, str(tmp_path))
    for fn in FUNCTIONS:
        for decision, status, error, up in OUTCOMES:
            m.observe_call(fn, decision, status, error, 0.2, up)
    if mode == "multiprocess":  # a second worker's file, as worker 1 would leave it
        (tmp_path / "counter_1.db").write_bytes((tmp_path / next(
            p.name for p in tmp_path.iterdir() if p.name.startswith("counter_"))).read_bytes())
        for kind in ("histogram",):
            src = next(p for p in tmp_path.iterdir() if p.name.startswith(kind + "_"))
            (tmp_path / f"{kind}_1.db").write_bytes(src.read_bytes())
    m.serve_state(lambda: {"ready": True, "approvals_pending": 0, "store_writable": True})
    body, _ = benchmark(m.render)
    assert b"fastgate_calls_total" in body
