"""Reading upstream answers: what `ResponseReader` accepts, refuses and when a connection is reused.

threats.md §1 "malformed upstream responses (502, connection not reused)". Every case runs on
the h11-based reference (`py`) and on the compiled reader (`c`); the hypothesis tests at the
end check that the two agree on generated and mutated answers cut at random points.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgate._core import compiled_or_none, reference

PY = reference("http1")
C = compiled_or_none("http1")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if os.environ.get("FASTGATE_NO_EXTENSIONS") else "compiled http1 not built"
IMPLS = [
    pytest.param(PY, id="py"),
    pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING)),
]
needs_c = pytest.mark.skipif(C is None, reason=C_MISSING)
ResponseError = PY.ResponseError


def rtrace(impl, method: bytes, raw: bytes, cuts=(), *, eof: bool = True) -> list:
    """Feed `raw` cut at `cuts` the way upstream.py does; the trace of what came out."""
    reader = impl.ResponseReader(method)
    out: list = []

    def drain() -> bool:
        while True:
            try:
                ev = reader.next_event()
            except ResponseError as exc:
                out.append(("refused", str(exc)))
                with pytest.raises(ResponseError) as again:
                    reader.next_event()
                out.append(("again", str(again.value)))
                return False
            if type(ev) is PY.ResponseHead:
                assert type(ev.reason) is bytes and all(type(n) is bytes and type(v) is bytes
                                                         for n, v in ev.headers)
                out.append(("head", ev.status, ev.reason, tuple(ev.headers), ev.content_length, ev.has_body))
            elif type(ev) is bytes:
                assert ev
                out.append(("data", ev))
            elif ev is PY.END:
                out.append(("END", reader.reusable))
            elif ev is PY.NEED_DATA or ev is PY.PAUSED:
                out.append(ev.__name__)
                return True
            else:
                raise AssertionError(ev)

    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(raw))), len(raw)]
    for a, b in zip(bounds, bounds[1:]):
        reader.feed(raw[a:b])
        if not drain():
            return out
    if eof:
        reader.feed_eof()
        out.append("eof")
        drain()
    return out


def same(method: bytes, raw: bytes, cuts=(), *, eof: bool = True) -> list:
    want = rtrace(PY, method, raw, cuts, eof=eof)
    if C is not None:
        assert rtrace(C, method, raw, cuts, eof=eof) == want, f"{method!r} {raw!r} cut at {sorted(set(cuts))}"
    return want


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize("impl", IMPLS)
def test_keep_alive_answer_is_reusable(impl):
    t = rtrace(impl, b"GET", OK, eof=False)
    assert t[0] == ("head", 200, b"OK", ((b"content-type", b"application/json"), (b"content-length", b"2")), 2, True)
    assert t[1:] == [("data", b"{}"), ("END", True), "PAUSED"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("raw,method,why", [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", b"GET", "Connection: close"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", b"GET", "HTTP/1.0"),
    (OK + b"HTTP/1.1 200 OK\r\n", b"GET", "bytes after the answer: a smuggled second response"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc", b"GET", "204 has no body: 'abc' is extra"),
])
def test_answers_that_end_the_connection(impl, raw, method, why):
    t = rtrace(impl, method, raw, eof=False)
    assert ("END", False) in t, why


@pytest.mark.parametrize("impl", IMPLS)
def test_close_delimited_body_runs_to_eof_and_is_not_reusable(impl):
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc"
    t = rtrace(impl, b"GET", raw, [len(raw) - 1])
    assert [e for e in t if e[0] == "data"] == [("data", b"ab"), ("data", b"c")]
    assert t[-2:] == [("END", False), "PAUSED"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_and_head(impl, status):
    raw = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    assert rtrace(impl, b"GET", raw, eof=False)[0][-2:] == (10, False)
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    t = rtrace(impl, b"HEAD", raw, eof=False)
    assert t[0][-2:] == (10, False) and t[1] == ("END", True)


@pytest.mark.parametrize("impl", IMPLS)
def test_interim_answers_are_skipped(impl):
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: 1\r\n\r\n" + OK
    t = rtrace(impl, b"POST", raw, eof=False)
    assert t[0][:2] == ("head", 200) and t[-2:] == [("END", True), "PAUSED"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("raw,detail", [
    # RFC 9112 §6.1 / desync: both framings in one answer.
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "_SWITCH_UPGRADE"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "conflicting Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Only Transfer-Encoding: chunked"),
    (b"garbage\r\n\r\n", "illegal status line"),
    (b"HTTP/1.1 099 Odd\r\n\r\n", "should be in range"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "continuation line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", "malformed chunk footer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "received 2 bytes, expected 5"),
    (b"", "ConnectionClosed"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 17000, "Receive buffer too long"),
])
def test_malformed_answers(impl, raw, detail):
    t = rtrace(impl, b"GET", raw)
    assert t[-2][0] == "refused" and detail in t[-2][1], t
    assert t[-1] == ("again", t[-2][1])


@pytest.mark.parametrize("impl", IMPLS)
def test_obs_fold_and_content_length_list_are_normalized_like_h11(impl):
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nX-A: a\r\n \t b\r\nContent-Length: 5\r\n\r\nhello"
    t = rtrace(impl, b"GET", raw, eof=False)
    assert t[0] == ("head", 200, b"OK", ((b"content-length", b"5"), (b"x-a", b"a b")), 5, True)


# ---------------------------------------------------------------------------------------------
# Parity on generated answers

STATUS = ([b"HTTP/1.1 200 OK", b"HTTP/1.1 201 Created", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 204 No Content",
           b"HTTP/1.1 304 Not Modified", b"HTTP/1.0 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 500 "],
          [b"HTTP/1.1 101 Switching", b"HTTP/1.1 099 x", b"HTTP/2 200 OK", b"HTTP/1.1 2000", b"http/1.1 200 OK",
           b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 \xff\x01", b"HTTP/1.1  200 OK", b" HTTP/1.1 200 OK", b"",
           b"HTTP/1.1 999 Big", b"HTTP/1.1 200 OK\x0b"])
INTERIM = [b"", b"", b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
NAMES = ([b"Content-Type", b"X-A", b"Connection", b"Set-Cookie", b"Cache-Control"],
         [b"content-length", b"Transfer-Encoding", b"X_A", b"", b"X A", b" X", b"X-\xff"])
VALUES = ([b"application/json", b"a", b"", b"keep-alive", b"close", b"a=b; Path=/"],
          [b"5", b"5, 5", b"5,6", b"+5", b"chunked", b"Chunked", b"gzip", b"a\x00b", b"a\x01b", b"a\rb",
           b"a\x0bb", b"\xff", b" a\t", b"close, x", b"12345678901234567890", b"123456789012345678901"])
EOLS = ([b"\r\n"], [b"\n", b"\r\r\n", b"\r"])


def pick(draw, choices, odds):
    usual, odd = choices
    return draw(st.sampled_from(odd if odds and draw(st.integers(1, odds)) == 1 else usual))


@st.composite
def answer(draw) -> bytes:
    odds = draw(st.sampled_from([0, 0, 2, 4, 8]))
    raw = draw(st.sampled_from(INTERIM)) + pick(draw, STATUS, odds) + pick(draw, EOLS, odds)
    framing = draw(st.sampled_from(["length", "chunked", "close", "none"]))
    headers = []
    body = draw(st.binary(max_size=16))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % max(0, len(body) + pick(draw, ([0], [-1, 2]), odds))))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        pieces = [body[:3], body[3:]] if body else []
        body = b"".join(b"%x" % len(p) + pick(draw, ([b""], [b";x", b" ", b";\n"]), odds) + b"\r\n" + p
                        + pick(draw, ([b"\r\n"], [b"\n", b"XX"]), odds) for p in pieces if p)
        body += b"0\r\n" + pick(draw, ([b""], [b"X-T: 1\r\n", b" f\r\n", b"Transfer-Encoding: gzip\r\n"]), odds)
        body += b"\r\n"
    for _ in range(draw(st.integers(0, 3))):
        headers.append((pick(draw, NAMES, odds), pick(draw, VALUES, odds)))
    for i in draw(st.permutations(range(len(headers)))):
        name, value = headers[i]
        raw += name + pick(draw, ([b": ", b":"], [b" : ", b"::"]), odds) + value + pick(draw, EOLS, odds)
        if odds and draw(st.integers(1, 6)) == 1:
            raw += draw(st.sampled_from([b" folded", b"\tmore", b"  "])) + pick(draw, EOLS, odds)
    raw += pick(draw, EOLS, odds) + body
    if odds and draw(st.integers(1, 4)) == 1:
        raw += draw(st.sampled_from([b"x", b"HTTP/1.1 200 OK\r\n\r\n", b"\r\n"]))
    return raw


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer(), st.sampled_from([b"GET", b"HEAD", b"POST"]), st.lists(st.integers(0, 120), max_size=6),
       st.booleans())
def test_generated_answers_agree(raw, method, cuts, eof):
    same(method, raw, cuts, eof=eof)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.lists(st.integers(0, 120), max_size=4), st.booleans())
def test_arbitrary_bytes_agree(data, cuts, eof):
    same(b"GET", data, cuts, eof=eof)
    same(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + data, cuts, eof=eof)
    same(b"GET", b"HTTP/1.1 200 OK\r\n" + data, cuts, eof=eof)


@needs_c
@pytest.mark.parametrize("raw", [
    OK,
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nX: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\nclose-delimited",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabcHTTP/1.1",
])
def test_every_split_agrees(raw):
    for cut in range(len(raw) + 1):
        same(b"GET", raw, [cut])
        same(b"GET", raw, [cut], eof=False)
    same(b"GET", raw, range(len(raw)))
