"""Fixtures for the micro-benchmarks, and a guard that keeps bench/ benchmark-only.

These files measure; they do not judge. Nothing here asserts on timings (shared, noisy
cores would make such a test flaky), and the guard below refuses any test in bench/ that
does not use the `benchmark` fixture, so a correctness or timing test cannot creep in.
Run with:  python -m pytest bench/ -p no:cacheprovider --benchmark-only
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

# A typical proxied API call head: ~145 bytes, four header fields.
REQUEST_HEAD = (
    b"GET /bench?limit=10 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"Accept: application/json\r\n"
    b"Authorization: Bearer 8f14e45fceea167a\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)

RESPONSE_BODY = b'{"id":"bench-0001","status":"ok","items":[1,2,3]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(RESPONSE_BODY)).encode() + b"\r\n"
    b"\r\n" + RESPONSE_BODY
)


@pytest.fixture
def request_head() -> bytes:
    return REQUEST_HEAD


@pytest.fixture
def response_bytes() -> bytes:
    return RESPONSE


BENCH_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if BENCH_DIR not in Path(item.path).resolve().parents:
            continue  # e.g. `pytest tests bench`: leave the real tests alone
        if "benchmark" not in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: bench/ holds benchmarks only; use the benchmark fixture "
                                    "and put correctness tests under tests/")
