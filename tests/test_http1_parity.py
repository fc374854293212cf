"""The compiled request reader against its oracle: h11 plus the gate's checks (`http1_py`).

Both readers get the same bytes, cut the same way, and must produce the same trace: every
event (heads field by field, body pieces with their boundaries, END, NEED_DATA, PAUSED,
CLOSED), `buffered` and `in_request` after each, and the same refusal (status, error, detail)
raised again on the next call. The driver behaves like the listener: it drains
`next_event()` after every `feed()`, and after END calls `next_cycle()` now or after more
bytes arrived, as a plan says (threats.md §1: pipelining; h11's rule: any split, same answer).
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgate._core import compiled, compiled_or_none, load, reference

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("http1")
C = compiled_or_none("http1")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if NO_EXTENSIONS else "compiled http1 not built"
needs_c = pytest.mark.skipif(C is None, reason=C_MISSING)
Limits = PY.Limits
HTTPError = PY.HTTPError


def test_compiled_http1_loaded():
    """A silent fallback to the reference would ship the slow parser; fail loudly instead."""
    if NO_EXTENSIONS:
        pytest.skip("FASTGATE_NO_EXTENSIONS is set: only the pure-Python reference is under test")
    try:
        module = compiled("http1")
    except ImportError as exc:
        pytest.fail(f"compiled http1 did not import ({exc}); run `python setup.py build_ext --inplace` "
                    "or set FASTGATE_NO_EXTENSIONS=1 to test the reference alone")
    assert module.__file__ is not None and not module.__file__.endswith(".py")
    assert load("http1") is module
    from fastgate import http1
    assert http1.RequestReader is module.RequestReader and http1.IMPLEMENTATION == "compiled"
    assert http1.ResponseReader is module.ResponseReader
    for name in ("HTTPError", "RequestHead", "Limits", "END", "CLOSED", "NEED_DATA", "PAUSED", "ResponseError",
                 "ResponseHead"):
        assert getattr(module, name) is getattr(PY, name) is getattr(http1, name)


# ---------------------------------------------------------------------------------------------
# The driver


def describe(impl, ev):
    if type(ev) is PY.RequestHead:
        assert type(ev.headers) is list and all(
            type(n) is bytes and type(v) is bytes for n, v in ev.headers)
        assert all(type(x) is bytes for x in (ev.method, ev.target, ev.version, ev.host))
        return ("head", ev.method, ev.target, ev.version, tuple(ev.headers), ev.host, ev.content_length,
                ev.chunked, ev.keep_alive, ev.expect_continue, tuple(sorted(ev.connection_tokens)))
    if type(ev) is bytes:
        assert ev, "empty body events are never produced"
        return ("data", ev)
    for name in ("END", "CLOSED", "NEED_DATA", "PAUSED"):
        if ev is getattr(PY, name):
            return name
    raise AssertionError(f"{impl.__name__} returned {ev!r}")


def trace(impl, raw: bytes, cuts, plan, *, limits: Limits, eof: bool) -> list:
    """Feed `raw` cut at `cuts`; `plan` says, after each END, whether the answer is sent now."""
    reader = impl.RequestReader(limits)
    out: list = []
    plan = list(plan)
    state = {"after_end": False}

    def drain() -> bool:
        while True:
            try:
                ev = reader.next_event()
            except HTTPError as exc:
                out.append(("refused", exc.status, exc.error, exc.detail))
                try:
                    reader.next_event()
                except HTTPError as again:
                    out.append(("again", again.status, again.error, again.detail))
                else:
                    out.append("not sticky")
                return False
            out.append((describe(impl, ev), reader.buffered, reader.in_request))
            if ev is PY.END:
                state["after_end"] = True
            if ev is PY.NEED_DATA or ev is PY.PAUSED or ev is PY.CLOSED:
                if state["after_end"] and (plan.pop() if plan else True):
                    state["after_end"] = False
                    reader.next_cycle()
                    out.append(("cycle", reader.buffered, reader.in_request))
                    continue
                return True

    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(raw))), len(raw)]
    for a, b in zip(bounds, bounds[1:]):
        reader.feed(raw[a:b])
        out.append(("fed", b - a))
        if not drain():
            return out
    if eof:
        reader.feed_eof()
        out.append("eof")
        drain()
    return out


def assert_same(raw: bytes, cuts=(), plan=(), *, limits: Limits | None = None, eof: bool = True) -> list:
    limits = limits or Limits()
    want = trace(PY, raw, cuts, plan, limits=limits, eof=eof)
    if C is not None:
        got = trace(C, raw, cuts, plan, limits=limits, eof=eof)
        assert got == want, f"input {raw!r} cut at {sorted(set(cuts))}"
    return want


# ---------------------------------------------------------------------------------------------
# Fixed corpus, every split point

H = b"Host: gw\r\n"
CH = b"POST /x HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
CORPUS = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /items HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    CH + b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    CH + b"3\r\nabc\r\n0\r\nX-Trailer: evil\r\nX-T2: a\r\n\r\n",
    CH + b"3\r\nabc\r\n0\r\nX-T: a\r\n folded\r\n\r\n",
    CH + b"3\r\nabc\r\n0\r\n folded\r\n\r\n",
    CH + b"3\r\nabc\r\n0\r\nContent-Length: 1, 2\r\n\r\n",
    CH + b"3\r\nabc\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n",
    CH + b"0\n\n",
    CH + b"0\r\n\n",
    CH + b"5\r\nhelloXX0\r\n\r\n",
    CH + b"5 \t\r\nhello\r\n0;a\rb\r\n\r\n",
    CH + b"5 ;x\r\nhello\r\n0\r\n\r\n",
    CH + b"000000000000000000005\r\nhello\r\n0\r\n\r\n",
    CH + b"0000000000000000000005\r\nhello\r\n0\r\n\r\n",
    CH + b"fffffffffffffffffff\r\nhello",
    CH + b"-5\r\nhello\r\n0\r\n\r\n",
    CH + b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nUpgrade: ,\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 \x0b\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length:0005\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\nX-A: a\x0cb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://gw:8080/a?b=1 HTTP/1.1\r\nHost: gw:8080\r\n\r\n",
    b"GET HTTP://GW?b HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET http://evil/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: ,close\r\nConnection: X-Hop\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection:\r\nConnection: close,\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
    b"GET / HTTP/1.1\r\nHost:\ta\t \r\nX-E:\r\nX-F: a \t b\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-\xff: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \xff\xfe\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
]


@pytest.mark.parametrize("raw", CORPUS, ids=[repr(r[:40])[2:-1] for r in CORPUS])
def test_corpus_every_split(raw):
    """One cut at every offset (h11's own discipline), bytewise, and whole; with and without EOF."""
    assert_same(raw)
    assert_same(raw, eof=False)
    assert_same(raw, cuts=range(len(raw)))
    for cut in range(1, len(raw)):
        assert_same(raw, cuts=[cut], plan=[cut % 2 == 0])


SMALL = [Limits(64, 3, 16, 8), Limits(100, 4, 30, 0), Limits(40, 100, 8, 3)]


@pytest.mark.parametrize("limits", SMALL, ids=["64-3-16-8", "100-4-30-0", "40-100-8-3"])
@pytest.mark.parametrize("raw", CORPUS, ids=[repr(r[:40])[2:-1] for r in CORPUS])
def test_corpus_small_limits(raw, limits):
    """Limits bite mid-head, mid-line and mid-body: 414 vs 431 vs 413, same as the oracle."""
    assert_same(raw, limits=limits)
    assert_same(raw, cuts=range(0, len(raw), 3), limits=limits)
    assert_same(raw, cuts=range(len(raw)), limits=limits, eof=False)


def test_limits_in_one_read():
    """threats.md §1: h11 checks its size limit only on an incomplete head; the gate does not."""
    limits = Limits(max_header_bytes=1024, max_header_count=10, max_request_line_bytes=256)
    for raw in (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n",
        b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /" + b"a" * 3000,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000,
    ):
        for cuts in ((), range(0, len(raw), 100), range(0, len(raw), 7)):
            assert_same(raw, cuts=cuts, limits=limits)


def test_chunk_framing_overhead():
    """CVE-2024-22019 class: framing bytes may not dwarf the data (2 x body limit + 64 KiB)."""
    limits = Limits(max_body_bytes=10)
    ext = b";" + b"x" * 70000
    raw = CH + b"1" + ext + b"\r\na\r\n0\r\n\r\n"
    want = assert_same(raw, limits=limits)
    assert ("refused", 413, "payload_too_large", "request body exceeds limits.max_body_bytes") in want
    assert_same(raw, cuts=range(0, len(raw), 4096), limits=limits)
    raw = CH + b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    assert_same(raw, limits=limits)


def test_large_body_zero_copy_and_pipelined_tail():
    body = os.urandom(300_000)
    raw = b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    raw += b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    for cuts in ((), range(0, len(raw), 65536), (100, 150_000)):
        t = assert_same(raw, cuts=cuts, limits=Limits(max_body_bytes=1 << 20))
        assert b"".join(e[0][1] for e in t if type(e) is tuple and e[0][0] == "data") == body


# ---------------------------------------------------------------------------------------------
# Generated requests

# Each part of a generated request is ordinary or hostile; half the requests are all ordinary
# and in the others one part in 2-8 is hostile, so that most examples get past the request line
# and the rarer refusals behind it are reached too.
METHODS = ([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"],
           [b"get", b"Get", b"CONNECT", b"G_T", b"M-SEARCH", b"", b"GE\x00T", b"GET ", b"\xc3\x89"])
TARGETS = ([b"/", b"/items/A1?x=1", b"/" + b"a" * 40, b"/a%20b"],
           [b"*", b"http://gw/x", b"http://evil/x", b"HTTPS://GW", b"https://gw?q", b"/a b", b"/\x7f", b"/\xff",
            b"a", b"", b"/%00", b"http://gw"])
VERSIONS = ([b"HTTP/1.1", b"HTTP/1.0"],
            [b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1", b"HTTP/1.1 ", b"HTTP/1.x", b"HTTP/1.2"])
SPACES = ([b" "], [b"  ", b"\t", b""])
NAMES = ([b"X-A", b"Accept", b"User-Agent", b"Connection", b"Expect", b"Upgrade", b"Host", b"Content-Type",
          b"Authorization"],
         [b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding", b"X-HTTP-Method-Override",
          b"X-Method-Override", b"x-http-method", b"X_Forwarded_For", b"Content Length", b"", b"X-\xff", b"TE",
          b"Keep-Alive", b"Content-Length ", b" Host", b"X-A\x00", b"Trailer", b"Transfer-Encoding"])
VALUES = ([b"gw", b"", b"close", b"keep-alive", b"100-continue", b"h2c", b"*/*", b"a b", b"Bearer x.y.z",
           b"application/json", b"X-Hop, close"],
          [b"0", b"5", b"05", b"+5", b"1_0", b"5, 5", b"5,6", b"1234567890123456789", b"12345678901234567890123",
           b"chunked", b"Chunked", b"gzip, chunked", b"chunked ", b" chunked", b"keep-alive, close",
           b"Close, X-Hop", b",", b"100-Continue", b"200-ok", b"websocket", b"a\x01b", b"a\x00b", b"a\x7fb",
           b"a\x0bb", b"a\rb", b"a\tb", b" a ", b"\xff\xfe", b"a" * 50, b"\t", b"x\x1fy", b"a\r", b", ,"])
SEPS = ([b": ", b":"], [b" : ", b":\t", b":  ", b"::", b" :"])
EOLS = ([b"\r\n"], [b"\n", b"\r\r\n", b"\r", b"\n\r"])
NOISE = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b";", b"0", b"_", b"\x7f", b"\xff", b"a", b"\r\n", b"\n\n",
         b"\r\n\r\n", b" \r\n", b"\r\n ", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n"]


def pick(draw, choices, odds):
    usual, odd = choices
    return draw(st.sampled_from(odd if odds and draw(st.integers(1, odds)) == 1 else usual))


@st.composite
def chunked_body(draw, odds) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=12))
        size = b"%x" % len(data)
        size = pick(draw, ([size, size.upper()], [b"0" + size, b"00000" + size, size + b"g", b"+" + size]), odds)
        ext = pick(draw, ([b"", b";a=b", b";name"], [b";", b" ", b"\t", b";\x00x", b";a\rb", b" ;x", b";a\nb"]), odds)
        footer = pick(draw, ([b"\r\n"], [b"\n", b"XX", b"", b"\r", b"\r\n\r\n"]), odds)
        out += size + ext + b"\r\n" + data + footer
    out += pick(draw, ([b"0"], [b"00", b"0;last", b"0 "]), odds) + b"\r\n"
    if draw(st.integers(1, 4)) == 1:
        out += b"".join(draw(st.lists(st.sampled_from([
            b"X-T: 1\r\n", b"X-T: a b\r\n", b" folded\r\n", b"Content-Length: 2\r\n", b"Content-Length: 1,2\r\n",
            b"Content-Length: 1, 1\r\n", b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n",
            b"Bad Name: x\r\n", b"X:\x00\r\n", b"X-U: 1\n"]), min_size=1, max_size=3)))
    return out + pick(draw, ([b"\r\n"], [b"\n", b"", b"\r"]), odds)


@st.composite
def request(draw) -> bytes:
    odds = draw(st.sampled_from([0, 0, 2, 4, 8]))
    lead = pick(draw, ([b""], [b"\r\n", b"\n", b" "]), odds)
    line = (pick(draw, METHODS, odds) + pick(draw, SPACES, odds) + pick(draw, TARGETS, odds) + pick(draw, SPACES, odds)
            + pick(draw, VERSIONS, odds))
    headers = []
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if draw(st.integers(0, 7)):
        headers.append((b"Host", b"gw"))
    if framing == "length":
        body = draw(st.binary(max_size=20))
        headers.append((b"Content-Length", b"%d" % max(0, len(body) + pick(draw, ([0], [-1, 1, 5]), odds))))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", pick(draw, ([b"chunked"], [b"Chunked", b"chunked, gzip", b" chunked"]), odds)))
        body = draw(chunked_body(odds))
    else:
        body = b""
    for _ in range(draw(st.integers(0, 4))):
        headers.append((pick(draw, NAMES, odds), pick(draw, VALUES, odds)))
    order = draw(st.permutations(range(len(headers))))
    raw = lead + line + pick(draw, EOLS, odds)
    for i in order:
        name, value = headers[i]
        raw += name + pick(draw, SEPS, odds) + value + pick(draw, EOLS, odds)
    return raw + pick(draw, EOLS, odds) + body


@st.composite
def mutated(draw, base) -> bytes:
    raw = draw(base)
    if draw(st.integers(1, 3)) == 1:
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(raw)))
            op = draw(st.sampled_from(["insert", "replace", "delete", "duplicate"]))
            if op == "insert":
                raw = raw[:at] + draw(st.sampled_from(NOISE)) + raw[at:]
            elif op == "replace":
                raw = raw[:at] + draw(st.sampled_from(NOISE)) + raw[at + 1:]
            elif op == "delete":
                raw = raw[:at] + raw[at + 1:]
            else:
                end = draw(st.integers(at, min(len(raw), at + 40)))
                raw = raw[:end] + raw[at:end] + raw[end:]
    return raw


LIMITS = st.one_of(
    st.just(Limits()),
    st.just(Limits()),
    st.builds(Limits, st.integers(8, 400), st.integers(0, 8), st.integers(1, 60), st.integers(0, 40)),
)


@st.composite
def session(draw):
    raw = b"".join(draw(st.lists(mutated(request()), min_size=1, max_size=3)))
    if draw(st.booleans()):
        cuts = draw(st.lists(st.integers(0, len(raw)), max_size=8))
    else:
        step = draw(st.integers(1, 9))
        cuts = list(range(0, len(raw), step))
    plan = draw(st.lists(st.booleans(), max_size=4))
    return raw, cuts, plan


@needs_c
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session(), LIMITS, st.booleans())
def test_generated_requests_agree(s, limits, eof):
    raw, cuts, plan = s
    assert_same(raw, cuts, plan, limits=limits, eof=eof)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6), LIMITS, st.booleans())
def test_arbitrary_bytes_agree(data, cuts, limits, eof):
    assert_same(data, cuts, limits=limits, eof=eof)
    assert_same(CH + data, cuts, limits=limits, eof=eof)
    assert_same(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n" + data, cuts, limits=limits, eof=eof)


@needs_c
@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(CORPUS), min_size=2, max_size=4), st.lists(st.integers(0, 600), max_size=10),
       st.lists(st.booleans(), max_size=5))
def test_pipelined_corpus_agree(parts, cuts, plan):
    """Several requests in one stream: `next_cycle()` early or late, PAUSED, MUST_CLOSE tails."""
    assert_same(b"".join(parts), cuts, plan)


@needs_c
def test_feed_after_eof_is_a_caller_bug_in_both():
    for impl in (PY, C):
        reader = impl.RequestReader(Limits())
        reader.feed(b"GET / HTTP/1.1\r\n")
        reader.feed_eof()
        with pytest.raises(RuntimeError):
            reader.feed(b"Host: a\r\n\r\n")


@needs_c
def test_feeding_views_and_bytearrays():
    raw = b"POST /items HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
    for impl in (PY, C):
        reader = impl.RequestReader(Limits())
        reader.feed(bytearray(raw[:20]))
        reader.feed(memoryview(raw)[20:])
        assert reader.next_event().target == b"/items"
        assert reader.next_event() == b"hello"
        assert reader.next_event() is PY.END
