"""pathnorm: RFC 3986 §6.2.2 normalization plus the refusals of threats.md §2.

Every case runs on the pure-Python reference (`py`) and the compiled core (`c`); hypothesis
checks that the two agree on arbitrary bytes and that accepted output is a fixed point.
"""
from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgate._core import compiled, compiled_or_none, load, reference

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("pathnorm")
PathError = PY.PathError




C = compiled_or_none("pathnorm")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if NO_EXTENSIONS else "compiled pathnorm not built"

IMPLS = [
    pytest.param(PY, id="py"),
    pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING)),
]
needs_c = pytest.mark.skipif(C is None, reason=C_MISSING)


def test_compiled_pathnorm_loaded():
    """A silent fallback to the reference would ship a 20x slower gate; fail loudly instead."""
    if NO_EXTENSIONS:
        pytest.skip("FASTGATE_NO_EXTENSIONS is set: only the pure-Python reference is under test")
    try:
        module = compiled("pathnorm")
    except ImportError as exc:
        pytest.fail(f"compiled pathnorm did not import ({exc}); run `python setup.py build_ext --inplace` "
                    "or set FASTGATE_NO_EXTENSIONS=1 to test the reference alone")
    assert module.__file__ is not None and not module.__file__.endswith(".py")
    assert load("pathnorm") is module
    assert module.PathError is PY.PathError


ACCEPTED = [
    # (target, path, query, why)
    (b"/", "/", "", "root"),
    (b"/refunds/A1?x=1", "/refunds/A1", "x=1", "typical call"),
    (b"/Orders/ABC", "/Orders/ABC", "", "case is preserved; matching is case-sensitive"),
    (b"/a/b/", "/a/b/", "", "trailing slash is significant"),
    (b"/a/./b", "/a/b", "", "RFC 3986 §5.2.4 single dot"),
    (b"/a/b/../c", "/a/c", "", "RFC 3986 §5.2.4 double dot"),
    (b"/a/b/.", "/a/b/", "", "RFC 3986 §5.2.4 final '.' leaves a slash"),
    (b"/a/b/..", "/a/", "", "RFC 3986 §5.2.4 final '..' leaves a slash"),
    (b"/a/..", "/", "", "back to root, not above it"),
    (b"/./", "/", "", "only a dot"),
    (b"/public/../admin", "/admin", "", "Envoy CVE-2019-9901: policy sees what the upstream resolves"),
    (b"/myprefix/%2e%2e/secret", "/secret", "",
     "Traefik CVE-2025-32431 follow-up (traefik#11746): encoded '..' is a dot segment too"),
    (b"/public/.%2e/admin", "/admin", "", "CVE-2021-41773 shape '.%2e' resolved before policy"),
    (b"/a/%2E/b", "/a/b", "", "encoded single dot"),
    (b"/a//b", "/a/b", "", "repeated slashes merged"),
    (b"//a", "/a", "", "leading double slash is a path here, not an authority"),
    (b"///", "/", "", "only slashes"),
    (b"/a/b//", "/a/b/", "", "repeated trailing slash"),
    (b"/%7Euser", "/~user", "", "RFC 3986 §6.2.2.2 unreserved escape decoded"),
    (b"/%41%62%2D%2e%5F%7e%30", "/Ab-._~0", "", "every unreserved class decoded"),
    (b"/caf%c3%a9", "/caf%C3%A9", "", "RFC 3986 §6.2.2.1 kept escapes get uppercase hex"),
    (b"/a%20b", "/a%20b", "", "encoded space stays encoded"),
    (b"/a%3Ab%40c", "/a%3Ab%40c", "", "encoded ':' and '@' stay encoded"),
    (b"/a.", "/a.", "", "trailing dot is just another value"),
    (b"/...", "/...", "", "three dots is not a dot segment"),
    (b"/a%20", "/a%20", "", "trailing encoded space is just another value"),
    (b"/a:b@c!$&'()*+,=-._~", "/a:b@c!$&'()*+,=-._~", "", "RFC 3986 §3.3 pchar without ';'"),
    (b"/a?", "/a", "", "empty query equals no query"),
    (b"/a?b?c", "/a", "b?c", "RFC 3986 §3.4: '?' is a query char"),
    (b"/a?x=%2f&y=%41", "/a", "x=%2f&y=%41", "query kept verbatim, escapes not rewritten"),
    (b"/a?x=1;y=2/z", "/a", "x=1;y=2/z", "';' and '/' are fine in the query"),
    (b"/a?q=%25", "/a", "q=%25", "the query is not decoded, so '%25' there is not double encoding"),
    (b"/" + b"a" * 8191, "/" + "a" * 8191, "", "exactly MAX_PATH_LENGTH"),
    (b"/" + b"a" * 8191 + b"?" + b"q" * 10000, "/" + "a" * 8191, "q" * 10000, "the limit is on the path"),
]

REFUSED = [
    # (target, reason, why)
    (b"", "not origin-form", "empty target"),
    (b"*", "not origin-form", "asterisk-form (OPTIONS *) is not ours"),
    (b"http://evil.example/admin", "not origin-form", "absolute-form is the listener's job"),
    (b"a/b", "not origin-form", "relative path"),
    (b"?x=1", "not origin-form", "query without a path"),
    (b"/" + b"a" * 8192, "path too long", "over MAX_PATH_LENGTH"),
    (b"/" + b"%41" * 2731, "path too long", "the limit is on the raw bytes, before decoding"),
    (b"/..", "dot segment above root", "refused, not clamped"),
    (b"/a/../..", "dot segment above root", "climbs out after a valid step"),
    (b"/a/../../b", "dot segment above root", "climbs out in the middle"),
    (b"/%2e%2e/", "dot segment above root", "encoded '..' climbing out"),
    (b"/cgi-bin/.%2e/.%2e/.%2e/.%2e/etc/passwd", "dot segment above root", "CVE-2021-41773"),
    (b"/a%2fb", "encoded slash (%2F)", "Envoy CVE-2021-29492 escaped slash"),
    (b"/admin%2F", "encoded slash (%2F)", "Traefik GHSA-gm3x-23wp-hc2c"),
    (b"/a%5cb", "encoded backslash (%5C)", "Traefik GHSA-gm3x-23wp-hc2c"),
    (b"/a%00", "encoded NUL (%00)", "Traefik GHSA-gm3x-23wp-hc2c; C strings end here"),
    (b"/admin/%3bpage", "encoded path parameter (%3B)", "Shiro CVE-2020-13933; Traefik GHSA-gm3x-23wp-hc2c"),
    (b"/a%3fb", "encoded '?' (%3F)", "Traefik GHSA-gm3x-23wp-hc2c: decoding backends split here"),
    (b"/a%23b", "encoded '#' (%23)", "Traefik GHSA-gm3x-23wp-hc2c"),
    (b"/a%252Fb", "double encoding (%25)", "Shiro CVE-2020-11989 double-encoded slash"),
    (b"/a%2500", "double encoding (%25)", "double-encoded NUL"),
    (b"/a%25", "double encoding (%25)", "any %25 in the path is refused"),
    (b"/.%%32%65/", "malformed percent-escape", "CVE-2021-42013 '%%32%65'"),
    (b"/a%", "malformed percent-escape", "truncated at end"),
    (b"/a%2", "malformed percent-escape", "one hex digit"),
    (b"/a%G1", "malformed percent-escape", "not hex"),
    (b"/a%+f", "malformed percent-escape", "int('+f', 16) would accept it"),
    (b"/a%-1", "malformed percent-escape", "int('-1', 16) would accept it"),
    (b"/a% f", "malformed percent-escape", "int(' f', 16) would accept it"),
    (b"/a\\b", "backslash in path", "IIS/Windows read '\\' as '/'"),
    (b"/..\\admin", "backslash in path", "backslash traversal"),
    (b"/admin;/x", "path parameter (;)", "Shiro CVE-2020-1957 ';' path parameters"),
    (b"/..;/admin", "path parameter (;)", "Tomcat '..;/' (Orange Tsai, Black Hat 2018)"),
    (b"/a#frag", "fragment (#)", "fragments are never sent"),
    (b"/a?x=1#frag", "fragment (#)", "fragment after the query"),
    (b"/a b", "control byte or space in path", "space"),
    (b"/a\tb", "control byte or space in path", "tab"),
    (b"/a\x00", "control byte or space in path", "raw NUL"),
    (b"/a\r\nX: y", "control byte or space in path", "CR/LF injection"),
    (b"/a\x7f", "control byte or space in path", "DEL"),
    (b"/caf\xc3\xa9", "non-ASCII byte in path", "raw UTF-8"),
    (b"/a\xff", "non-ASCII byte in path", "raw high byte"),
    (b"/a<b>", "character not allowed in path", "outside pchar"),
    (b"/a{b}", "character not allowed in path", "braces"),
    (b"/a|b", "character not allowed in path", "pipe"),
    (b'/a"b', "character not allowed in path", "quote"),
    (b"/a[0]", "character not allowed in path", "brackets"),
    (b"/a?x=\\", "character not allowed in query", "backslash in query"),
    (b"/a?x=1 2", "control byte or space in query", "space in query"),
    (b"/a?x=\xc3\xa9", "non-ASCII byte in query", "raw UTF-8 in query"),
    (b"/a?x=%zz", "malformed percent-escape in query", "bad escape in query"),
    (b"/a?x=%2", "malformed percent-escape in query", "truncated escape in query"),
    (b"/../\\", "backslash in path", "byte errors are reported before dot segments"),
    (b"/a\\?#", "backslash in path", "path bytes are checked before the query"),
    (b"/..?#", "fragment (#)", "query bytes are checked before dot segments"),
    (b"/%41%2f%00", "encoded slash (%2F)", "first problem from the left wins"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("target", "path", "query", "why"), ACCEPTED, ids=[c[3] for c in ACCEPTED])
def test_accepted(impl, target, path, query, why):
    assert impl.normalize_target(target) == (path, query)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("target", "reason", "why"), REFUSED, ids=[c[2] for c in REFUSED])
def test_refused(impl, target, reason, why):
    with pytest.raises(PathError) as info:
        impl.normalize_target(target)
    assert type(info.value) is PathError
    assert str(info.value) == reason
    assert info.value.status_hint == 400


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("target", ["/a", bytearray(b"/a"), memoryview(b"/a"), None])
def test_only_bytes(impl, target):
    """h11 hands us bytes; anything else is a caller bug, not a request to normalize."""
    with pytest.raises(TypeError, match="target must be bytes"):
        impl.normalize_target(target)


def _outcome(impl, target: bytes):
    try:
        return impl.normalize_target(target)
    except PathError as exc:
        return ("PathError", str(exc))


SEGMENT_TOKENS = [".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%25", "%41", "%7e", "%c3", "%3B", "%5c",
                  "%00", "%20", "a", "B", "0", "f", "F", "/", "//", ";", "\\", "?", "#", "~", "-", " ",
                  "..;", "%%32%65", "\x00", "\xff"]
structured_targets = st.lists(st.sampled_from(SEGMENT_TOKENS), max_size=24).map(
    lambda parts: ("/" + "".join(parts)).encode("latin-1"))
random_targets = st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: b"/" + b))
DIFFERENTIAL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_c
@DIFFERENTIAL
@given(target=random_targets)
def test_differential_random_bytes(target):
    """Both implementations give the same result or the same PathError message, never another error."""
    assert _outcome(C, target) == _outcome(PY, target)


@needs_c
@DIFFERENTIAL
@given(target=structured_targets)
def test_differential_structured(target):
    assert _outcome(C, target) == _outcome(PY, target)


LONG_TOKENS = ["a", "B", "~", "%41", "%c3", "%2e", ".", "..", "/", "//", "/./", "/../"]
long_targets = st.tuples(st.lists(st.sampled_from(LONG_TOKENS), min_size=1, max_size=12),
                         st.integers(min_value=100, max_value=1500)).map(
    lambda t: ("/" + "".join(t[0]) * t[1]).encode("ascii"))


@needs_c
@settings(max_examples=100, deadline=None)
@given(target=long_targets)
def test_differential_long(target):
    """Inputs near 8 KB exercise the length limit and the in-place dot-segment pass."""
    assert _outcome(C, target) == _outcome(PY, target)


UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
ESCAPE = re.compile(r"%(..)")


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=300, deadline=None)
@given(target=st.one_of(structured_targets, random_targets))
def test_output_is_canonical(impl, target):
    """Accepted output is a fixed point with no dot segments, merged slashes and canonical escapes."""
    try:
        path, _ = impl.normalize_target(target)
    except PathError:
        return
    assert impl.normalize_target(path.encode("ascii")) == (path, "")
    assert path.startswith("/")
    assert "//" not in path and "/./" not in path and "/../" not in path
    assert not path.endswith(("/.", "/.."))
    for hexpair in ESCAPE.findall(path):
        assert hexpair == hexpair.upper()
        assert chr(int(hexpair, 16)) not in UNRESERVED
    assert len(path) <= len(target)
