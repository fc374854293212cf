"""Redaction properties: compiled == reference, split independence, no planted secret
survives, idempotence, and "returns or raises RedactionError, never anything else".

Documents come from the seeded corpus (tests/pii_corpus.py), from a table of adversarial
shapes (escapes and surrogate pairs split, keys split, masked containers, JSON in
strings), and from hypothesis (random JSON with planted PII, escapes, unicode, nested
JSON-in-strings, duplicate keys) under random selectors. threats.md "How the trusted
proxies test": every split point for streaming stages, differential tests on the cores.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastgate import pii
from fastgate._core import compiled_or_none, reference
from fastgate.redaction import RedactionError, Redactor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pii_corpus

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("redact")




C = compiled_or_none("redact")
needs_c = pytest.mark.skipif(C is None, reason="compiled redact not available")
IMPLS = [pytest.param(PY, id="py"),
         pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason="compiled redact not available"))]
ALL = list(pii.DETECTORS)
SELECTOR_SETS = [
    [],
    ["$..ssn", "$..card", "$.result.structuredContent.results[*].env"],
    ["$.*", "$..email"],
    ["$.result.content[*].text.results[0]", "$..iban", "$[*]"],
]
SMALL = {"string_window": 64, "block": 32, "ahead": 96, "behind": 8}
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])


def red(core, selectors=(), detectors=ALL, mask="[REDACTED:{type}]", custom=(), **kw) -> Redactor:
    r = Redactor.build(list(selectors), list(detectors), mask, list(custom), core=core, hash_key=b"k" * 32, **kw)
    if r is None:
        r = Redactor.build(["$.zzz"], list(detectors), mask, list(custom), core=core, hash_key=b"k" * 32, **kw)
    return r


def outcome(r: Redactor, pieces: list[bytes], ctype: str | None = "application/json"):
    """(output, masked, kinds) or ("error", kind); never any other exception."""
    try:
        s = r.stream(ctype)
        out = b"".join(s.feed(p) for p in pieces) + s.close()
    except RedactionError as exc:
        return ("error", exc.kind)
    return out, s.masked, s.kinds


def whole(r: Redactor, data: bytes, ctype: str | None = "application/json"):
    return outcome(r, [data], ctype)


def splits2(data: bytes):
    for k in range(len(data) + 1):
        yield [data[:k], data[k:]]


def splits3(data: bytes):
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            yield [data[:a], data[a:b], data[b:]]


def strings_of(value, out: list[str]) -> list[str]:
    """Every string in a parsed document, and in JSON documents inside its strings."""
    if isinstance(value, dict):
        for k, v in value.items():
            out.append(k)
            strings_of(v, out)
    elif isinstance(value, list):
        for v in value:
            strings_of(v, out)
    elif isinstance(value, str):
        out.append(value)
        if value.lstrip().startswith(("{", "[")):
            try:
                strings_of(json.loads(value), out)
            except ValueError:
                pass
    return out


class _Members(list):
    """An object as its list of members: duplicates kept, order kept."""


def _pairs(data: bytes):
    return json.loads(data.decode("utf-8", "surrogatepass"), object_pairs_hook=_Members)


def same_shape(before, after) -> bool:
    """Same structure; a value may only turn into a string (its mask)."""
    if isinstance(after, str) and not isinstance(before, str):
        return True
    if isinstance(before, _Members):
        return isinstance(after, _Members) and len(before) == len(after) and all(
            same_shape(b, a) for (_, b), (_, a) in zip(before, after))
    if isinstance(before, list):
        return isinstance(after, list) and len(before) == len(after) and all(
            same_shape(b, a) for b, a in zip(before, after))
    return type(before) is type(after) and (isinstance(before, str) or before == after)


CORPUS = pii_corpus.corpus(seed=7, n=8, size=3000) + pii_corpus.corpus(seed=8, n=4, size=3000, pii=False)


# --------------------------------------------------------------------------- corpus


@needs_c
@pytest.mark.parametrize("selectors", SELECTOR_SETS, ids=lambda s: "+".join(s) or "none")
@pytest.mark.parametrize("mask", ["[REDACTED:{type}]", "<{type}:{last4}:{hash}>"])
def test_corpus_compiled_equals_reference(selectors, mask):
    custom = [("order", r"ORD-\d{4}-\d+")] if selectors else []
    rc, rp = red(C, selectors, mask=mask, custom=custom), red(PY, selectors, mask=mask, custom=custom)
    for doc in CORPUS:
        got = whole(rc, doc.data)
        assert got == whole(rp, doc.data)
        assert got[0] != "error"


@needs_c
def test_corpus_small_windows_compiled_equals_reference():
    """Tiny windows push every long string through the streamed paths (LongString, blocks)."""
    rc, rp = red(C, SELECTOR_SETS[1], **SMALL), red(PY, SELECTOR_SETS[1], **SMALL)
    rng = random.Random(3)
    for doc in CORPUS[:6]:
        expected = whole(rp, doc.data)
        assert expected[0] != "error"
        assert whole(rc, doc.data) == expected
        cuts = sorted(rng.randrange(len(doc.data)) for _ in range(30))
        pieces = [doc.data[a:b] for a, b in zip([0] + cuts, cuts + [len(doc.data)])]
        assert outcome(rc, pieces) == expected
        assert outcome(rp, pieces) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_no_planted_secret_survives(impl):
    r = red(impl, ["$..ssn"])
    for doc in CORPUS:
        out = whole(r, doc.data)[0]
        strings = strings_of(json.loads(out), [])
        for secret in pii_corpus.planted_secrets(doc):
            assert not any(secret in s for s in strings), secret
            assert secret.encode() not in out


@pytest.mark.parametrize("impl", IMPLS)
def test_idempotent_on_corpus(impl):
    r = red(impl, SELECTOR_SETS[1])
    for doc in CORPUS[:6]:
        once = whole(r, doc.data)[0]
        assert whole(r, once)[0] == once


@pytest.mark.parametrize("impl", IMPLS)
def test_corpus_random_splits(impl):
    r = red(impl, SELECTOR_SETS[1])
    rng = random.Random(11)
    for doc in CORPUS[:4]:
        expected = whole(r, doc.data)
        for _ in range(8):
            cuts = sorted(rng.randrange(len(doc.data) + 1) for _ in range(rng.randint(1, 40)))
            pieces = [doc.data[a:b] for a, b in zip([0] + cuts, cuts + [len(doc.data)])]
            assert outcome(r, pieces) == expected


# --------------------------------------------------------------------------- adversarial shapes, every split

ADVERSARIAL = [
    b'{"\\u0073sn":"123-45-6789","a":[1,{"ssn":{"x":[true,null]}}],"n":4111111111111111}',
    b'{"k\\u00e9y":"caf\\u00e9 \\ud83d\\ude00 ann@example.com","\\ud83d\\ude00":"\xf0\x9f\x98\x80 x"}',
    b'{"t":"{\\"ssn\\": 1, \\"m\\": \\"ann@example.com\\"}","u":"[1,2]","v":"{x"}',
    b'[4111111111111111,"Bearer 8f14e45fceea167a",{"card":"4111\\u00a01111\\u00a01111\\u00a01111"}]',
    b'{"a":"\\ud800","b":"\\udc00\\ud800x","c":"\\\\u0041","d":"\\"\\\\\\/\\b\\f\\n\\r\\t"}',
    b' [ 1.5e-3 , -0 , "AKIA' + b'IOSFODNN7EXAMPLE" , false ] ',
    b'{"ssn":"a","ssn":{"b":1},"ssn":[2],"x":"-----BEGIN ' + b'PRIVATE KEY-----\\nabc"}',
]
SHORT = [b'{"\\u0073sn":[1,"\xc3\xa9"],"t":"{\\"ssn\\":2}"}', b'["\\ud83d\\ude00 a@b.io",12345]',
         b'{"a":{"ssn":1},"b":"x\\u0040y.com"}']


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("doc", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_every_two_way_split(impl, doc):
    r = red(impl, ["$..ssn", "$.a[0]", "$..card"])
    expected = whole(r, doc)
    assert expected[0] != "error"
    for pieces in splits2(doc):
        assert outcome(r, pieces) == expected, pieces


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("doc", SHORT, ids=range(len(SHORT)))
def test_every_three_way_split(impl, doc):
    r = red(impl, ["$..ssn"])
    expected = whole(r, doc)
    assert expected[0] != "error"
    for pieces in splits3(doc):
        assert outcome(r, pieces) == expected, pieces


@pytest.mark.parametrize("impl", IMPLS)
def test_long_strings_every_two_way_split(impl):
    payload = json.dumps({"ssn": 1, "rows": ["ann@example.com x" * 2] * 4})
    doc = json.dumps({"t": payload, "u": "plain text " * 12 + "4111 1111 1111 1111"}).encode()
    r = red(impl, ["$..ssn"], **SMALL)
    expected = whole(r, doc)
    assert expected[0] != "error" and expected[1] == 10
    for pieces in splits2(doc):
        assert outcome(r, pieces) == expected


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ctype", ["text/event-stream", "application/x-ndjson", "text/plain"])
def test_framing_every_two_way_split(impl, ctype):
    data = (b'data: {"ssn":1,"m":"a\\u0040b.io"}\r\n\r\n: c\ndata: +1 415 555 2671\n\n'
            b'data: {"x":"\xc3\xa9"}\n\n') if ctype == "text/event-stream" else \
        b'{"ssn":1,"m":"a\\u0040b.io"}\n{"x":"\xc3\xa9 4111 1111 1111 1111"}\n'
    r = red(impl, ["$.ssn"], block=16, ahead=48, behind=4)
    expected = whole(r, data, ctype)
    assert expected[0] != "error" and expected[1] == (1 if ctype == "text/plain" else 3)
    for pieces in splits2(data):
        assert outcome(r, pieces, ctype) == expected


# --------------------------------------------------------------------------- hypothesis documents

FRAGMENTS = [
    "ann@example.com", "A.B+x@sub.mail.co.uk", "john%40example.com", "ａ＠", "logo@2x.png", "4111 1111 1111 1111",
    "4111111111111111", "5500-0000-0000-0004", "４１１１　１１１１　１１１１　１１１１", "3782 822463 10005",
    "4\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1\u200b1",
    "123-45-6789", "912-70-1234", "000-12-3456", "+1 415 555 2671", "(415) 555-2671", "020 7946 0958",
    "+44 20 7946 0958", "0044 20 7946 0958", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
    "AKIA" + "IOSFODNN7EXAMPLE", "Bearer 8f14e45fceea167a", "bearer abc", "sk-proj-abc123def456ghi789jkl0",
    "sk_live_abcdefghij0123456789", "ghp_" + "a1" * 18, "github_pat_" + "B2" * 12, "xoxb-123456789012-abc",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIB\n",
    "-----END RSA PRIVATE KEY-----", "v1.2.3", "2024-01-15T10:30:00Z", "978-3-16-148410-0", "ORD-2024-000123",
    "café", "😀", "\u00a0", "\u2013", "-", "_", "@", ".", " ", "(", "+", "%", "A", "J", "e", "s", "x", "0", "9",
    "\t", "\n", '"', "\\", "/", "\u0001", "\u007f", "\ud800",
]
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=10).map("".join)
KEYS = ["a", "ssn", "card", "email", "password", "token", "text", "x y", "é", "ann@example.com", "results", ""]


class Obj:
    """An object as a list of members, so duplicate keys can be generated."""

    def __init__(self, pairs):
        self.pairs = pairs


class Raw(str):
    """A string that holds serialized JSON (MCP content[].text)."""


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
                    st.sampled_from([4111111111111111, 5500000000000004, 1700000000000]),
                    st.floats(allow_nan=False, allow_infinity=False), texts)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.lists(st.tuples(st.sampled_from(KEYS), kids), max_size=4).map(Obj),
                           kids.map(lambda v: Raw(dump(v, False, False, 0)))),
    max_leaves=24)


def dump(v, ascii_only: bool, escape_keys: bool, ws: int) -> str:
    sep = " " * ws
    if isinstance(v, Obj):
        members = []
        for k, x in v.pairs:
            key = json.dumps(k, ensure_ascii=ascii_only)
            if escape_keys and k[:1].isalnum() and k[0].isascii():  # "\u0073sn" for "ssn"
                key = f'"\\u{ord(k[0]):04x}' + key[2:]
            members.append(f"{key}{sep}:{sep}{dump(x, ascii_only, escape_keys, ws)}")
        return "{" + ("," + sep).join(members) + "}"
    if isinstance(v, list):
        return "[" + ("," + sep).join(dump(x, ascii_only, escape_keys, ws) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


@st.composite
def documents(draw):
    v = draw(values)
    text = dump(v, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2)))
    return text.encode("utf-8", "surrogatepass")


selector_lists = st.lists(st.sampled_from(["$.a", "$..ssn", "$.*", "$[*]", "$.a[0]", "$..card", "$.text.token",
                                           "$..password", "$['x y']", "$[1].a", "$..results[*]"]), max_size=3)
masks = st.sampled_from(["[REDACTED:{type}]", "***{last4}", "<{type}:{hash}>"])


@needs_c
@PROPS
@given(doc=documents(), selectors=selector_lists, mask=masks, detectors=st.lists(st.sampled_from(ALL)))
def test_hypothesis_compiled_equals_reference(doc, selectors, mask, detectors):
    assume(selectors or detectors)
    rc, rp = red(C, selectors, detectors, mask), red(PY, selectors, detectors, mask)
    expected = whole(rp, doc)
    assert whole(rc, doc) == expected
    if expected[0] != "error":
        assert same_shape(_pairs(doc), _pairs(expected[0]))
        assert whole(rp, expected[0])[0] == expected[0]  # idempotent


@needs_c
@PROPS
@given(doc=documents(), cuts=st.lists(st.integers(0, 10 ** 6), max_size=6), selectors=selector_lists)
def test_hypothesis_split_independence(doc, cuts, selectors):
    marks = sorted(c % (len(doc) + 1) for c in cuts)
    pieces = [doc[a:b] for a, b in zip([0] + marks, marks + [len(doc)])]
    for core in (C, PY):
        r = red(core, selectors, ALL, **SMALL)
        assert outcome(r, pieces) == whole(r, doc)


@needs_c
@PROPS
@given(data=st.binary(max_size=64) | documents().map(lambda d: d[:len(d) // 2] + b"\x00" + d[len(d) // 2:]))
def test_hypothesis_garbage_never_crashes(data):
    """Returns or raises RedactionError, never anything else; both cores agree on which."""
    rc, rp = red(C, ["$..ssn"]), red(PY, ["$..ssn"])
    for ctype in ("application/json", "text/event-stream", "application/x-ndjson", "text/plain", None):
        got = whole(rc, data, ctype)
        assert got == whole(rp, data, ctype)


# --------------------------------------------------------------------------- detectors directly

detector_texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3),
                                    st.sampled_from("0123456789 -.@%+()AJe_")), max_size=24).map("".join)


@needs_c
@settings(max_examples=1000, deadline=None)
@given(text=detector_texts, enabled=st.integers(1, 63), begin=st.integers(0, 8), pem=st.booleans())
def test_hypothesis_detect_compiled_equals_reference(text, enabled, begin, pem):
    begin = min(begin, len(text))
    plan = reference("redact").Plan(["$.a"], [n for n, bit in pii.DETECTORS.items() if enabled & bit])
    assert C.Engine(plan).find(text, begin, pem) == PY.Engine(plan).find(text, begin, pem)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="ascii").filter(lambda ch: ch not in pii.TRIGGERS), max_size=80))
def test_detectors_need_a_trigger(text):
    """The compiled prefilter skips ASCII strings without TRIGGERS; that must lose nothing."""
    assert pii.detect(text, 63) == ([], False)
