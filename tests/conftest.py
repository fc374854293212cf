"""Shared fixtures for the end-to-end suites (real gateway process, real sockets).

Fixtures
- `upstream_server` (session): the RecordingUpstream every gateway of the session forwards to.
- `upstream` (function): the same recorder, cleared before the test.
- `gateway` (module): a gateway running `base_config(upstream_server.port)`.
- `gateway_factory` (function): `gateway_factory(config, env=None) -> Gateway`; stopped at teardown.
- `raw_conn` (function): `raw_conn(port=None, timeout=5.0) -> RawConn` to `gateway` (or PORT);
  closed at teardown.

Helpers (`from support import ...`): base_config, req, chunked, assert_error, assert_closes,
assert_request_id, assert_nothing_forwarded, RawConn; `support.rawhttp` has split_variants/run_variants.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.gateway import Gateway, base_config  # noqa: E402
from support.rawhttp import RawConn  # noqa: E402
from support.upstream import RecordingUpstream  # noqa: E402


@pytest.fixture(scope="session")
def upstream_server():
    up = RecordingUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def upstream(upstream_server: RecordingUpstream) -> RecordingUpstream:
    upstream_server.clear()
    return upstream_server


@pytest.fixture(scope="module")
def gateway(upstream_server: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory):
    gw = Gateway.start(base_config(upstream_server.port), tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path):
    started: list[Gateway] = []

    def start(config: dict, env: dict[str, str] | None = None) -> Gateway:
        gw = Gateway.start(config, tmp_path, env=env)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def raw_conn(request: pytest.FixtureRequest):
    conns: list[RawConn] = []

    def connect(port: int | None = None, timeout: float = 5.0) -> RawConn:
        if port is None:
            port = request.getfixturevalue("gateway").port
        conn = RawConn(port, timeout=timeout)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        conn.close()
