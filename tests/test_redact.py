"""Redaction: selectors, detectors, JSON inside strings, limits, framing, content codings.

Every behaviour runs on the pure-Python reference (`py`) and the compiled core (`c`).
Cases cite threats.md §4 (JSON tricks) and §5 (PII) where they come from; the parity and
split-independence properties live in test_redact_parity.py.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib

import pytest

from fastgate import pii
from fastgate._core import compiled, compiled_or_none, load, reference
from fastgate.redaction import RedactionError, Redactor, Stream

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("redact")




C = compiled_or_none("redact")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if NO_EXTENSIONS else "compiled redact not built"
IMPLS = [pytest.param(PY, id="py"),
         pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING))]
ALL = list(pii.DETECTORS)
CARD = "4111 1111 1111 1111"


def test_compiled_redact_loaded():
    """A silent fallback to the reference would ship a gate many times slower; fail loudly."""
    if NO_EXTENSIONS:
        pytest.skip("FASTGATE_NO_EXTENSIONS is set: only the pure-Python reference is under test")
    try:
        module = compiled("redact")
    except ImportError as exc:
        pytest.fail(f"compiled redact did not import ({exc}); run `python setup.py build_ext --inplace` "
                    "or set FASTGATE_NO_EXTENSIONS=1 to test the reference alone")
    assert module.__file__ is not None and not module.__file__.endswith(".py")
    assert load("redact") is module
    assert module.RedactionError is PY.RedactionError
    red = Redactor.build(["$.a"], [])
    assert red is not None and red.impl == "compiled"


def build(core, selectors=(), detectors=ALL, mask="[REDACTED:{type}]", custom=(), **kw) -> Redactor:
    red = Redactor.build(list(selectors), list(detectors), mask, list(custom), core=core, **kw)
    assert red is not None
    return red


def run(red: Redactor, data: bytes | list[bytes], content_type: str | None = "application/json",
        encoding: str | None = None) -> tuple[bytes, Stream]:
    stream = red.stream(content_type, encoding)
    pieces = [data] if isinstance(data, bytes) else data
    out = b"".join(stream.feed(p) for p in pieces) + stream.close()
    return out, stream


def redact_json(core, doc: bytes, selectors=(), detectors=ALL, **kw) -> bytes:
    out, _ = run(build(core, selectors, detectors, **kw), doc)
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize("impl", IMPLS)
def test_build_nothing_to_do(impl):
    assert Redactor.build([], [], core=impl) is None


@pytest.mark.parametrize(("args", "match"), [
    ((["$.a"], ["nonsense"]), "unknown detector"),
    ((["a.b"], []), "starts with"),
    ((["$.a"], [], "{kind}"), "mask may use only"),
    ((["$.a"], [], "x\ny"), "control"),
    ((["$.a"], [], "[{type}]", [("bad", "(")]), "invalid regular expression"),
])
def test_build_refuses_bad_config(args, match):
    with pytest.raises(ValueError, match=match):
        Redactor.build(*args)


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("selector", "doc", "expected"), [
    ("$.a.b", b'{"a":{"b":1,"c":2}}', b'{"a":{"b":"[REDACTED:field]","c":2}}'),
    ("$.a[*].b", b'{"a":[{"b":1},{"b":{"x":[1]}},{"c":3}]}',
     b'{"a":[{"b":"[REDACTED:field]"},{"b":"[REDACTED:field]"},{"c":3}]}'),
    ("$..ssn", b'{"ssn":1,"x":[{"y":{"ssn":[1,2]}}]}', b'{"ssn":"[REDACTED:field]","x":[{"y":{"ssn":"[REDACTED:field]"}}]}'),
    ("$.a[1]", b'{"a":[0,1,2]}', b'{"a":[0,"[REDACTED:field]",2]}'),
    ("$.*", b'{"a":1,"b":[2]}', b'{"a":"[REDACTED:field]","b":"[REDACTED:field]"}'),
    ("$[*]", b'[1,"x",{"a":1}]', b'["[REDACTED:field]","[REDACTED:field]","[REDACTED:field]"]'),
    ("$.a", b'{"a":true,"b":null}', b'{"a":"[REDACTED:field]","b":null}'),
    ("$.a", b'{"a":null}', b'{"a":"[REDACTED:field]"}'),
    ("$.a", b'{"a":-1.5e3}', b'{"a":"[REDACTED:field]"}'),
    ("$.a", b' { "a" : [ 1 , 2 ] , "b" : 1 } ', b' { "a" : "[REDACTED:field]" , "b" : 1 } '),
    ("$['my key']", b'{"my key":1}', b'{"my key":"[REDACTED:field]"}'),
    ("$.a.b", b'{"a":[{"b":1}]}', b'{"a":[{"b":1}]}'),
], ids=lambda v: v if isinstance(v, str) else None)
def test_selectors(impl, selector, doc, expected):
    assert redact_json(impl, doc, [selector], []) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_escaped_key_matches_after_unescaping(impl):
    """threats.md §4: "\\u0073sn" is ssn; a byte matcher would miss it."""
    out = redact_json(impl, b'{"\\u0073sn":"123","s\\u0073n":"456","ssn ":"7"}', ["$.ssn"], [])
    assert out == b'{"\\u0073sn":"[REDACTED:field]","s\\u0073n":"[REDACTED:field]","ssn ":"7"}'


@pytest.mark.parametrize("impl", IMPLS)
def test_duplicate_keys_all_masked(impl):
    """threats.md §4: parsers disagree on which duplicate wins; mask every one."""
    out, stream = run(build(impl, ["$.ssn"], []), b'{"ssn":"1","ssn":"2","a":{"ssn":3},"ssn":[4]}')
    assert out == b'{"ssn":"[REDACTED:field]","ssn":"[REDACTED:field]","a":{"ssn":3},"ssn":"[REDACTED:field]"}'
    assert stream.masked == 3 and stream.kinds == {"$.ssn": 3}


@pytest.mark.parametrize("impl", IMPLS)
def test_fullwidth_key_is_a_different_key(impl):
    """Keys compare after JSON unescaping only; a full-width 'ｓｓｎ' is another key (no
    Unicode folding), which is what every JSON consumer downstream will also see."""
    assert redact_json(impl, '{"ｓｓｎ":1}'.encode(), ["$.ssn"], []) == '{"ｓｓｎ":1}'.encode()


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_container_is_still_validated(impl):
    with pytest.raises(RedactionError):
        redact_json(impl, b'{"a":{"b":[1,}],"c":1}', ["$.a"], [])
    with pytest.raises(RedactionError):
        redact_json(impl, b'{"a":{"b":"\xff"}}', ["$.a"], [])


@pytest.mark.parametrize("impl", IMPLS)
def test_counts(impl):
    out, stream = run(build(impl, ["$.a", "$..b"]), b'{"a":1,"b":2,"c":"mail ann@example.com and 123-45-6789"}')
    assert stream.masked == 4
    assert stream.kinds == {"$.a": 1, "$..b": 1, "email": 1, "us_ssn": 1}
    assert json.loads(out) == {"a": "[REDACTED:field]", "b": "[REDACTED:field]",
                               "c": "mail [REDACTED:email] and [REDACTED:us_ssn]"}


# --------------------------------------------------------------------------- detectors in JSON


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("value", "masked"), [
    ("ann@example.com", "[REDACTED:email]"),
    ("ann\\u0040example.com", "[REDACTED:email]"),                     # §5: escaped form
    ("pay 4111\\u00a01111\\u00a01111\\u00a01111 now", "pay [REDACTED:credit_card] now"),
    ("4111111111111112", "4111111111111112"),                           # Luhn fails
    ("ssn 078-05-1120", "ssn [REDACTED:us_ssn]"),
    ("itin 912-70-1234", "itin [REDACTED:tax_id]"),
    ("not 000-12-3456 or 666-12-3456", "not 000-12-3456 or 666-12-3456"),
    ("call +1 415 555 2671", "call [REDACTED:phone]"),
    ("DE89 3704 0044 0532 0130 00", "[REDACTED:iban]"),
    ("Authorization: Bearer 8f14e45fceea167a", "Authorization: Bearer [REDACTED:secret_token]"),
    ("AKIA" + "IOSFODNN7EXAMPLE", "[REDACTED:secret_token]"),
    ("v1.2.3 logo@2x.png 2024-01-15T10:30:00Z", "v1.2.3 logo@2x.png 2024-01-15T10:30:00Z"),
    ("caf\\u00e9 \\ud83d\\ude00 ann@example.com", "café 😀 [REDACTED:email]"),
    ("lone \\ud800 ann@example.com", "lone \ud800 [REDACTED:email]"),
])
def test_detectors_in_strings(impl, value, masked):
    out = redact_json(impl, b'{"v":"' + value.encode() + b'"}')
    assert json.loads(out) == {"v": masked}


@pytest.mark.parametrize("impl", IMPLS)
def test_unmodified_strings_are_byte_identical(impl):
    doc = b'{"a":"caf\\u00e9 \\/ \\n","b":"x\\"y"}'
    assert redact_json(impl, doc) == doc


@pytest.mark.parametrize("impl", IMPLS)
def test_modified_strings_are_reserialized_canonically(impl):
    out = redact_json(impl, b'{"a":"\\u00e9\\/\\u0001\\t ann@example.com \\ud800"}')
    assert out == '{"a":"é/\\u0001\\t [REDACTED:email] \\ud800"}'.encode()


@pytest.mark.parametrize("impl", IMPLS)
def test_keys_are_scanned(impl):
    """A map keyed by address leaks the address through its keys."""
    out = redact_json(impl, b'{"ann@example.com":{"n":1}}')
    assert out == b'{"[REDACTED:email]":{"n":1}}'


@pytest.mark.parametrize("impl", IMPLS)
def test_card_numbers_as_json_numbers(impl):
    out = redact_json(impl, b'[4111111111111111, 4111111111111112, 1700000000000, -4111111111111111, 4.1e15]')
    assert out == b'["[REDACTED:credit_card]", 4111111111111112, 1700000000000, -4111111111111111, 4.1e15]'


@pytest.mark.parametrize("impl", IMPLS)
def test_custom_detectors(impl):
    red = build(impl, [], ["email"], custom=[("order_id", r"ORD-\d{6}"), ("word", "secret")])
    out, stream = run(red, b'{"a":"ORD-123456 ann@example.com secret","b":"ORD-12"}')
    assert json.loads(out) == {"a": "[REDACTED:order_id] [REDACTED:email] [REDACTED:word]", "b": "ORD-12"}
    assert stream.kinds == {"order_id": 1, "email": 1, "word": 1}


@pytest.mark.parametrize("impl", IMPLS)
def test_custom_span_overlapping_builtin_fuses(impl):
    red = build(impl, [], ["email"], custom=[("corp", r"example\.com and more")])
    out, _ = run(red, b'{"a":"ann@example.com and more text"}')
    assert json.loads(out) == {"a": "[REDACTED:email] text"}


# --------------------------------------------------------------------------- mask formats


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_last4(impl):
    red = build(impl, ["$.ssn", "$.m"], ALL, mask="****{last4}")
    out, _ = run(red, b'{"ssn":"123-45-6789","n":"card 4111-1111-1111-1111 ok","m":[1]}')
    assert json.loads(out) == {"ssn": "****6789", "n": "card ****1111 ok", "m": "****"}


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_keyed_hash_correlates(impl):
    red = build(impl, ["$.id"], ["email"], mask="<{type}:{hash}>", hash_key=b"k" * 32)
    out, _ = run(red, b'{"id":"42","a":"ann@example.com","b":"ANN@example.com","c":"bob@example.com"}')
    got = json.loads(out)
    assert got["a"] == got["b"] != got["c"]
    assert got["a"].startswith("<email:") and len(got["a"]) == len("<email:>") + 12
    assert got["id"].startswith("<field:")
    other = build(impl, [], ["email"], mask="<{type}:{hash}>", hash_key=b"j" * 32)
    assert json.loads(run(other, b'{"a":"ann@example.com"}')[0])["a"] != got["a"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mask", ["[REDACTED:{type}]", "****{last4}", "<{type}:{hash}>", "x{{y}}"])
def test_idempotent_on_masked_output(impl, mask):
    red = build(impl, ["$.s", "$.o"], ALL, mask=mask, hash_key=b"k" * 32)
    doc = b'{"s":"123-45-6789","o":{"x":1},"t":"mail ann@example.com card 4111 1111 1111 1111"}'
    once = run(red, doc)[0]
    assert run(red, once)[0] == once


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("text", "expected"), [
    # found by hypothesis: masking one entity changed its neighbour's boundary, so a second
    # pass found more; the masked text is now scanned until nothing new is found
    ("ann@example.com.DE89 3704 0044 0532 0130 00", "[REDACTED:email].[REDACTED:iban]"),
    ("ann@example.comann@example.comann@example.com+44 20 7946 0958",
     "[REDACTED:email]@[REDACTED:email][REDACTED:phone]"),
    ("+44 20 7946 0958ann@x.com", "[REDACTED:phone] [REDACTED:email]"),
])
def test_glued_entities_reach_a_fixed_point(impl, text, expected):
    red = build(impl, [], ALL)
    once = run(red, json.dumps({"t": text}).encode())[0]
    assert run(red, once)[0] == once
    assert json.loads(once)["t"] == expected


# --------------------------------------------------------------------------- JSON inside strings


def mcp(payload, *, ensure_ascii=True) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "result": {
        "content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=ensure_ascii)}],
        "structuredContent": payload}}).encode()


@pytest.mark.parametrize("impl", IMPLS)
def test_selectors_apply_inside_json_strings(impl):
    """mcp.md: tool results carry JSON serialized inside result.content[].text."""
    payload = {"customer": {"ssn": "123-45-6789", "name": "Ann"}, "mail": "ann@example.com"}
    out, stream = run(build(impl, ["$.customer.ssn", "$.result.structuredContent.customer.ssn"], ["email"]),
                      mcp(payload))
    got = json.loads(out)
    inner = json.loads(got["result"]["content"][0]["text"])
    expected = {"customer": {"ssn": "[REDACTED:field]", "name": "Ann"}, "mail": "[REDACTED:email]"}
    assert inner == expected
    assert got["result"]["structuredContent"] == expected
    assert stream.masked == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_outer_path_continues_into_json_string(impl):
    doc = b'{"result":{"content":[{"text":"{\\"token\\":\\"t1\\",\\"other\\":1}"}]}}'
    out = redact_json(impl, doc, ["$.result.content[*].text.token"], [])
    assert json.loads(json.loads(out)["result"]["content"][0]["text"]) == {"token": "[REDACTED:field]", "other": 1}


@pytest.mark.parametrize("impl", IMPLS)
def test_json_string_without_masks_is_kept_verbatim(impl):
    doc = b'{"t":"{\\"a\\": 1,  \\"b\\": [\\"x\\"]}"}'
    assert redact_json(impl, doc, ["$.zzz"]) == doc


@pytest.mark.parametrize("impl", IMPLS)
def test_nested_json_strings(impl):
    level2 = json.dumps({"ssn": 5, "mail": "ann@example.com"})
    level1 = json.dumps({"inner": level2})
    out = redact_json(impl, json.dumps({"outer": level1}).encode(), ["$..ssn"])
    got = json.loads(json.loads(json.loads(out)["outer"])["inner"])
    assert got == {"ssn": "[REDACTED:field]", "mail": "[REDACTED:email]"}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("text", ["[INFO] ann@example.com logged in", "{not json} ann@example.com",
                                  '{"a": 1} trailing ann@example.com', "[1, 2"])
def test_json_looking_text_falls_back_to_text(impl, text):
    out = redact_json(impl, json.dumps({"t": text}).encode(), ["$..a"])
    assert json.loads(out)["t"] == text.replace("ann@example.com", "[REDACTED:email]")


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_inside_json_string_is_fatal(impl):
    inner = "[" * 40 + "]" * 40
    with pytest.raises(RedactionError) as info:
        redact_json(impl, json.dumps({"t": inner}).encode(), ["$.a"], max_depth=32)
    assert info.value.kind == "depth"


# --------------------------------------------------------------------------- invalid JSON


INVALID = [
    b"", b"{", b"[1,2", b'{"a":1,}', b"[1,]", b"{'a':1}", b"[NaN]", b"[Infinity]", b"[01]", b"[1.]", b"[.5]",
    b"[1e]", b"[-]", b"[+1]", b'["a\x01"]', b'["\\x"]', b'["\\u12G4"]', b'["\xff"]', b'["\xc0\x80"]',
    b'["\xed\xa0\x80"]', b'["\xe2\x82"]', b'["\xf4\x90\x80\x80"]', b"[1] [2]", b"[1]x", b"\xef\xbb\xbf[1]",
    b"[tru]", b"[nul]", b"[truex]", b'{"a" 1}', b'{1:2}', b"}", b"]", b'"abc', b'{"a":1}}', b"[1 2]",
    b'{"a":}', b"[,1]", b"\x00", b"[1,\n", b'"\\', b'"\\u00',
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("doc", INVALID, ids=[repr(d)[:30] for d in INVALID])
def test_invalid_json_is_refused(impl, doc):
    """A body that claims JSON but is not is never passed on unscanned (fail closed)."""
    if doc == b"":
        assert run(build(impl, ["$.a"]), doc)[0] == b""  # nothing in it, nothing to leak
        return
    for pieces in ([doc], bytewise(doc)):
        with pytest.raises(RedactionError) as info:
            run(build(impl, ["$.a"]), pieces)
        assert info.value.status_hint == 502


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("doc", [b"  ", b"1", b'"x"', b"null", b" [] ", b"{}", b"-0.0e+0", b'"\\ud800\\udc00"'])
def test_valid_edge_documents(impl, doc):
    assert redact_json(impl, doc, ["$.a"]) == doc


@pytest.mark.parametrize("impl", IMPLS)
def test_truncated_document_raises_on_close(impl):
    stream = build(impl, ["$.a"]).stream("application/json")
    assert stream.feed(b'{"a":1,"b":[1,2') == b'{"a":"[REDACTED:field]","b":[1,'
    with pytest.raises(RedactionError) as info:
        stream.close()
    assert info.value.kind == "truncated"
    with pytest.raises(RedactionError):
        stream.feed(b"]}")


@pytest.mark.parametrize("impl", IMPLS)
def test_depth_bomb(impl):
    with pytest.raises(RedactionError) as info:
        redact_json(impl, b"[" * 200_000, ["$.a"])
    assert info.value.kind == "depth"
    assert redact_json(impl, b"[" * 128 + b"]" * 128, ["$.a"]) == b"[" * 128 + b"]" * 128
    with pytest.raises(RedactionError):
        redact_json(impl, b"[" * 129 + b"]" * 129, ["$.a"])


@pytest.mark.parametrize("impl", IMPLS)
def test_token_bounds(impl):
    with pytest.raises(RedactionError) as info:
        run(build(impl, ["$.a"], max_token=100), [b'{"' + b"k" * 60, b"k" * 60 + b'":1}'])
    assert info.value.kind == "size"
    with pytest.raises(RedactionError) as info:
        run(build(impl, ["$.a"], max_token=100), [b"[" + b"1" * 60, b"1" * 60 + b"]"])
    assert info.value.kind == "size"


# --------------------------------------------------------------------------- long strings (streamed)


# Tiny windows so short documents exercise the streamed paths. `ahead` must cover the
# longest match that has to be seen whole (an email, a PEM header): 96 here, 16 Ki live.
SMALL = {"string_window": 64, "block": 32, "ahead": 96, "behind": 8}


@pytest.mark.parametrize("impl", IMPLS)
def test_long_text_string_is_streamed_through_detectors(impl):
    text = ("lorem ipsum " * 20 + "ann@example.com " + "dolor " * 20) * 3
    doc = json.dumps({"t": text, "ssn": 1}).encode()
    for pieces in ([doc], [doc[i:i + 7] for i in range(0, len(doc), 7)]):
        out, stream = run(build(impl, ["$.ssn"], ALL, **SMALL), pieces)
        assert json.loads(out) == {"t": text.replace("ann@example.com", "[REDACTED:email]"),
                                   "ssn": "[REDACTED:field]"}
        assert stream.kinds == {"email": 3, "$.ssn": 1}


@pytest.mark.parametrize("impl", IMPLS)
def test_long_json_string_is_streamed_as_json(impl):
    payload = {"rows": [{"ssn": k, "note": f"row {k} ann@example.com"} for k in range(20)]}
    doc = json.dumps({"text": json.dumps(payload)}).encode()
    out, stream = run(build(impl, ["$..ssn"], ALL, **SMALL), [doc[i:i + 50] for i in range(0, len(doc), 50)])
    inner = json.loads(json.loads(out)["text"])
    assert inner == {"rows": [{"ssn": "[REDACTED:field]", "note": f"row {k} [REDACTED:email]"} for k in range(20)]}
    assert stream.kinds == {"$..ssn": 20, "email": 20}


@pytest.mark.parametrize("impl", IMPLS)
def test_long_json_looking_string_that_fails_early_is_text(impl):
    text = "[INFO] " + "ann@example.com " * 30
    out = redact_json(impl, json.dumps({"t": text}).encode(), ["$.x"], **SMALL)
    assert json.loads(out)["t"] == text.replace("ann@example.com", "[REDACTED:email]")


@pytest.mark.parametrize("impl", IMPLS)
def test_long_json_string_that_fails_late_is_refused(impl):
    """Past the speculative window the start has been emitted: refuse rather than guess."""
    text = json.dumps({"rows": list(range(100))})[:-1] + " trailing garbage"
    with pytest.raises(RedactionError):
        redact_json(impl, json.dumps({"t": text}).encode(), ["$.x"], **SMALL)


@pytest.mark.parametrize("impl", IMPLS)
def test_long_string_private_key_across_blocks(impl):
    body = "\n".join(["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"] * 12)
    key = "-----BEGIN " + f"PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    doc = json.dumps({"t": "cfg " * 30 + key + " done"}).encode()
    out = json.loads(redact_json(impl, doc, ["$.x"], **SMALL))["t"]
    assert "MIIE" not in out and out.endswith("[REDACTED:secret_token] done")


# --------------------------------------------------------------------------- redact_value / redact_text


@pytest.mark.parametrize("impl", IMPLS)
def test_redact_value(impl):
    red = build(impl, ["$.card.number"])
    value = {"card": {"number": 4111111111111111, "exp": "12/27"}, "note": "ann@example.com",
             "big": 2 ** 80, "text": '{"card": {"number": 1}}'}
    masked, n = red.redact_value(value)
    assert n == 3  # the JSON inside "text" is redacted too
    assert masked["card"] == {"number": "[REDACTED:field]", "exp": "12/27"}
    assert masked["note"] == "[REDACTED:email]" and masked["big"] == 2 ** 80
    assert json.loads(masked["text"]) == {"card": {"number": "[REDACTED:field]"}}
    assert value["card"]["number"] == 4111111111111111  # the input is not modified
    clean = {"a": [1, "x"]}
    assert red.redact_value(clean) == (clean, 0) and red.redact_value(clean)[0] is clean
    with pytest.raises(RedactionError):
        red.redact_value({"a": object()})


@pytest.mark.parametrize("impl", IMPLS)
def test_redact_text(impl):
    red = build(impl, [], ["secret_token"])
    assert red.redact_text("Bearer abc123def456") == ("Bearer [REDACTED:secret_token]", 1)


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8",
                                   "application/problem+json", "APPLICATION/JSON"])
def test_json_content_types(impl, ctype):
    out, stream = run(build(impl, ["$.a"]), b'{"a":1}', ctype)
    assert out == b'{"a":"[REDACTED:field]"}' and stream.kind == "json"


@pytest.mark.parametrize("impl", IMPLS)
def test_json_other_charset_refused(impl):
    with pytest.raises(RedactionError) as info:
        build(impl, ["$.a"]).stream("application/json; charset=utf-16")
    assert info.value.kind == "encoding"


SSE = (b": ping\r\n\r\n"
       b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata:  \"result\":{\"ssn\":\"1\","
       b"\"mail\":\"ann@example.com\"}}\r\nretry: 100\r\n\r\n"
       b"data: [DONE] call +1 415 555 2671\n\n"
       b"event: x\rdata: plain\r\r"
       b"data: no mask here\n\n")


@pytest.mark.parametrize("impl", IMPLS)
def test_sse(impl):
    red = build(impl, ["$..ssn"])
    out, stream = run(red, SSE, "text/event-stream")
    assert out == (b": ping\r\n\r\n"
                   b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata:  \"result\":{\"ssn\":"
                   b"\"[REDACTED:field]\",\"mail\":\"[REDACTED:email]\"}}\r\nretry: 100\r\n\r\n"
                   b"data: [DONE] call [REDACTED:phone]\n\n"
                   b"event: x\rdata: plain\r\r"
                   b"data: no mask here\n\n")
    assert stream.kinds == {"$..ssn": 1, "email": 1, "phone": 1}
    for k in range(len(SSE) + 1):
        assert run(red, [SSE[:k], SSE[k:]], "text/event-stream")[0] == out, k
    assert run(red, bytewise(SSE), "text/event-stream")[0] == out


@pytest.mark.parametrize("impl", IMPLS)
def test_sse_unterminated_last_event_and_bom(impl):
    red = build(impl, [], ["email"])
    out, _ = run(red, [b"\xef\xbb", b"\xbfdata: ann@example.com\r"], "text/event-stream")
    assert out == b"\xef\xbb\xbfdata: [REDACTED:email]\r"


@pytest.mark.parametrize("impl", IMPLS)
def test_sse_masked_container_across_data_lines(impl):
    red = build(impl, ["$.a"], [])
    out, _ = run(red, b'data: {"a": {\ndata: "x": 1}, "b": 2}\n\n', "text/event-stream")
    assert out == b'data: {"a": "[REDACTED:field]", "b": 2}\n\n'


@pytest.mark.parametrize("impl", IMPLS)
def test_sse_event_size_bound(impl):
    red = build(impl, [], ["email"], max_token=100)
    with pytest.raises(RedactionError) as info:
        run(red, [b"data: " + b"x" * 60 + b"\n", b"data: " + b"x" * 60 + b"\n"], "text/event-stream")
    assert info.value.kind == "size"


@pytest.mark.parametrize("impl", IMPLS)
def test_ndjson(impl):
    red = build(impl, ["$.ssn"])
    data = b'{"ssn":1}\n\n{"m":"ann@example.com"}\r\n{"x":2}'
    out, stream = run(red, data, "application/x-ndjson")
    assert out == b'{"ssn":"[REDACTED:field]"}\n\n{"m":"[REDACTED:email]"}\r\n{"x":2}'
    assert stream.masked == 2
    assert run(red, bytewise(data), "application/jsonl")[0] == out
    with pytest.raises(RedactionError):
        run(red, b'{"a":1}\nnot json\n', "application/x-ndjson")


@pytest.mark.parametrize("impl", IMPLS)
def test_text_overlap_window(impl):
    """A match split across chunks and across block boundaries is still caught."""
    red = build(impl, [], ALL, block=32, ahead=40, behind=8)
    text = ("x" * 29 + " ann@example.com " + "y" * 30 + " 4111 1111 1111 1111 ") * 4
    expected = text.replace("ann@example.com", "[REDACTED:email]").replace(CARD, "[REDACTED:credit_card]")
    data = text.encode()
    for k in range(len(data) + 1):
        assert run(red, [data[:k], data[k:]], "text/plain")[0] == expected.encode(), k


@pytest.mark.parametrize("impl", IMPLS)
def test_text_keeps_undecodable_bytes(impl):
    red = build(impl, [], ["email"])
    data = b"caf\xe9 \xff ann@example.com \xe2\x82\xac"
    out, _ = run(red, bytewise(data), "text/plain; charset=latin-1")
    assert out == b"caf\xe9 \xff [REDACTED:email] \xe2\x82\xac"
    with pytest.raises(RedactionError):
        red.stream("text/plain; charset=utf-16le")


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_content_type_is_sniffed(impl):
    red = build(impl, ["$.a"], ["email"])
    assert run(red, [b"  ", b'{"a":1}'], None)[0] == b'  {"a":"[REDACTED:field]"}'
    assert run(red, b"hi ann@example.com", None)[0] == b"hi [REDACTED:email]"
    assert run(red, b" \n", None)[0] == b" \n"
    with pytest.raises(RedactionError):
        run(red, b"{oops", None)


@pytest.mark.parametrize("impl", IMPLS)
def test_binary_types(impl):
    """Selectors alone: binary passes untouched. Detectors on: refused, we cannot read it."""
    data = b"\x89PNG\r\n\x1a\nann@example.com"
    assert run(build(impl, ["$.a"], []), data, "image/png")[0] == data
    assert run(build(impl, ["$.a"], []), data, "text/plain")[0] == data
    with pytest.raises(RedactionError) as info:
        build(impl, ["$.a"], ["email"]).stream("application/octet-stream")
    assert info.value.kind == "type"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "deflate-raw", "gzip-multi", "identity"])
def test_content_encoding(impl, coding):
    doc = json.dumps({"ssn": 1, "rows": ["ann@example.com"] * 50}).encode()
    if coding in ("gzip", "x-gzip"):
        body, header = gzip.compress(doc), coding
    elif coding == "gzip-multi":
        body, header = gzip.compress(doc[:100]) + gzip.compress(doc[100:]), "gzip"
    elif coding == "deflate":
        body, header = zlib.compress(doc), "deflate"
    elif coding == "deflate-raw":
        c = zlib.compressobj(wbits=-15)
        body, header = c.compress(doc) + c.flush(), "deflate"
    else:
        body, header = doc, "identity"
    red = build(impl, ["$.ssn"])
    out, stream = run(red, [body[i:i + 13] for i in range(0, len(body), 13)], "application/json", header)
    assert json.loads(out)["ssn"] == "[REDACTED:field]" and stream.masked == 51
    assert stream.decoded == (coding != "identity")


@pytest.mark.parametrize("impl", IMPLS)
def test_content_encoding_failures(impl):
    red = build(impl, ["$.ssn"], max_decoded=10_000)
    with pytest.raises(RedactionError) as info:
        red.stream("application/json", "br")
    assert info.value.kind == "encoding"
    bomb = gzip.compress(b"[" + b"0," * 1_000_000 + b"0]")
    with pytest.raises(RedactionError) as info:
        run(red, bomb, "application/json", "gzip")
    assert info.value.kind == "size"
    good = gzip.compress(b'{"ssn":1}')
    with pytest.raises(RedactionError):
        run(red, good[:-4], "application/json", "gzip")
    with pytest.raises(RedactionError):
        run(red, good + b"junk", "application/json", "gzip")
    with pytest.raises(RedactionError):
        run(red, b"not gzip at all", "application/json", "gzip")
    assert run(red, b"", "application/json", "gzip")[0] == b""


@pytest.mark.parametrize("impl", IMPLS)
def test_stream_refuses_after_failure_and_close(impl):
    stream = build(impl, ["$.a"]).stream("application/json")
    with pytest.raises(RedactionError):
        stream.feed(b"[1,,")
    with pytest.raises(RedactionError):
        stream.feed(b"2]")
    with pytest.raises(RedactionError):
        stream.close()
    done = build(impl, ["$.a"]).stream("application/json")
    done.feed(b"[]")
    done.close()
    with pytest.raises(RedactionError):
        done.feed(b"[]")
