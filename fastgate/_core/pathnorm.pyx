# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled twin of pathnorm_py: same tables, same results, same PathError and messages.

The byte classes and reasons are copied from the reference at import, so the rules live in
one place; this file only owns the loops. Check order matches the reference exactly:
origin-form, length, path bytes left to right, query bytes, dot segments.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr, memmove

from fastgate._core import pathnorm_py as _ref
from fastgate._core.pathnorm_py import MAX_PATH_LENGTH, PathError

__all__ = ["MAX_PATH_LENGTH", "PathError", "normalize_target"]

cdef enum:
    BUF_SIZE = 8192

cdef unsigned char PATH_CLASS[256]
cdef unsigned char QUERY_CLASS[256]
cdef unsigned char ESCAPE_CLASS[256]
cdef unsigned char HEX_VALUE[256]
cdef unsigned char HEX_DIGITS[16]
cdef tuple REASONS = _ref.REASONS
cdef int NOT_ORIGIN_FORM = _ref.NOT_ORIGIN_FORM
cdef int PATH_TOO_LONG = _ref.PATH_TOO_LONG
cdef int MALFORMED_ESCAPE = _ref.MALFORMED_ESCAPE
cdef int QUERY_MALFORMED_ESCAPE = _ref.QUERY_MALFORMED_ESCAPE
cdef int ABOVE_ROOT = _ref.ABOVE_ROOT

# The loops below hard-code the table conventions and the buffer size; refuse to load if the
# reference ever changes them, rather than silently disagree with it.
if (_ref.ACCEPT, _ref.PERCENT, _ref.KEEP, _ref.DECODE) != (0, 1, 0, 1) or MAX_PATH_LENGTH != BUF_SIZE:
    raise ImportError("fastgate._core.pathnorm is out of date with pathnorm_py; rebuild it")

cdef Py_ssize_t _i
for _i in range(256):
    PATH_CLASS[_i] = _ref.PATH_CLASS[_i]
    QUERY_CLASS[_i] = _ref.QUERY_CLASS[_i]
    ESCAPE_CLASS[_i] = _ref.ESCAPE_CLASS[_i]
    HEX_VALUE[_i] = _ref.HEX_VALUE[_i]
for _i in range(16):
    HEX_DIGITS[_i] = _ref.HEX_DIGITS[_i]


cdef int _fail(int code) except -1:
    raise PathError(REASONS[code])


def normalize_target(target):
    """Split an origin-form request-target into (normalized path, verbatim query)."""
    if not isinstance(target, bytes):
        raise TypeError("target must be bytes")
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(target)
    cdef const unsigned char* qmark = <const unsigned char*>memchr(s, b'?', <size_t>n)
    cdef Py_ssize_t plen = n if qmark == NULL else qmark - s
    cdef Py_ssize_t qstart = n if qmark == NULL else plen + 1
    cdef unsigned char buf[BUF_SIZE]
    cdef Py_ssize_t i = 0, m = 0, r, w, e, k
    cdef unsigned char c, cls, hi, lo, action

    if plen == 0 or s[0] != b'/':
        _fail(NOT_ORIGIN_FORM)
    if plen > BUF_SIZE:
        _fail(PATH_TOO_LONG)

    # Path bytes: validate, uppercase kept escapes, decode unreserved ones (never grows).
    while i < plen:
        c = s[i]
        cls = PATH_CLASS[c]
        if cls == 0:
            buf[m] = c
            m += 1
            i += 1
            continue
        if cls != 1:
            _fail(cls)
        if i + 2 >= plen:
            _fail(MALFORMED_ESCAPE)
        hi = HEX_VALUE[s[i + 1]]
        lo = HEX_VALUE[s[i + 2]]
        if hi > 15 or lo > 15:
            _fail(MALFORMED_ESCAPE)
        c = (hi << 4) | lo
        action = ESCAPE_CLASS[c]
        if action == 1:
            buf[m] = c
            m += 1
        elif action == 0:
            buf[m] = b'%'
            buf[m + 1] = HEX_DIGITS[hi]
            buf[m + 2] = HEX_DIGITS[lo]
            m += 3
        else:
            _fail(action)
        i += 3

    i = qstart
    while i < n:
        cls = QUERY_CLASS[s[i]]
        if cls == 0:
            i += 1
            continue
        if cls != 1:
            _fail(cls)
        if i + 2 >= n or HEX_VALUE[s[i + 1]] > 15 or HEX_VALUE[s[i + 2]] > 15:
            _fail(QUERY_MALFORMED_ESCAPE)
        i += 3

    # Dot segments and empty segments, in place. Invariant: buf[0:w] is the output so far
    # and ends with '/', and w <= r, so a segment is only ever moved leftwards.
    r = 1
    w = 1
    while r < m:
        e = r
        while e < m and buf[e] != b'/':
            e += 1
        if e == r or (e - r == 1 and buf[r] == b'.'):
            pass
        elif e - r == 2 and buf[r] == b'.' and buf[r + 1] == b'.':
            if w == 1:
                _fail(ABOVE_ROOT)
            k = w - 2
            while buf[k] != b'/':
                k -= 1
            w = k + 1
        else:
            if w != r:
                memmove(&buf[w], &buf[r], <size_t>(e - r))
            w += e - r
            if e < m:
                buf[w] = b'/'
                w += 1
        r = e + 1

    path = PyUnicode_DecodeASCII(<const char*>buf, w, NULL)
    if qstart >= n:
        return path, ""
    return path, PyUnicode_DecodeASCII(<const char*>s + qstart, n - qstart, NULL)
