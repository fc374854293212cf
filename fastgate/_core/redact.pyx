# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled twin of redact_py: the same JsonRedactor and detectors, in C loops.

What lives here: the incremental JSON tokenizer (verbatim runs are copied with one memcpy,
unmodified strings are never copied twice), selector automaton on bit sets, unescaping,
canonical re-escaping, and the built-in detectors of `fastgate.pii` ported step for step
(same order of checks, same spans) over ASCII bytes, UCS2 or UCS4 code points. What is
shared with the reference and imported from it: Plan, RedactionError, TextRedactor,
LongString (rare, large, Python is fine), mask rendering for {last4}/{hash}, custom regexes.
The byte tables are copied from `fastgate.pii` at import so the rules live in one place.
"""
cimport cython
from libc.stdint cimport uint16_t, uint32_t, uint64_t, uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from fastgate import pii as _pii
from fastgate._core import redact_py as _ref
from fastgate._core.redact_py import (DEFAULT_MASK, FATAL, MAX_DEPTH, MAX_PASSES, MAX_TOKEN, STRING_WINDOW,
                                      LongString, Plan, RedactionError, TextRedactor, apply, escape,
                                      unescape)

__all__ = ["DEFAULT_MASK", "Engine", "JsonRedactor", "LongString", "MAX_DEPTH", "MAX_TOKEN", "Plan",
           "RedactionError", "STRING_WINDOW", "TextRedactor", "apply", "escape", "unescape"]

cdef extern from "Python.h":
    object PyUnicode_FromKindAndData(int kind, const void* buffer, Py_ssize_t size)
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_1BYTE_KIND
    int PyUnicode_2BYTE_KIND
    int PyUnicode_4BYTE_KIND

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) nogil

ctypedef unsigned char u1
ctypedef uint16_t u2
ctypedef uint32_t u4

ctypedef fused CH:
    u1
    u2
    u4

# --------------------------------------------------------------------------- tables

cdef enum:
    EMAIL = 1
    CARD = 2
    SSN = 4
    PHONE = 8
    IBAN = 16
    SECRET = 32

cdef enum:
    F_DIGIT = 1
    F_UPPER = 2
    F_WORD = 4
    F_LOCAL = 8
    F_LABEL = 16
    F_B64URL = 32
    F_BEARER = 64
    F_ALNUM = 128

cdef enum:
    K_NONE = 0
    K_DIGIT = 1
    K_OPEN = 2
    K_AT = 3
    K_PCT = 4
    K_UPPER = 5
    K_LOWER = 6
    K_DASH = 7

cdef enum:
    T_EMAIL = 0
    T_CARD = 1
    T_SSN = 2
    T_TAX_ID = 3
    T_PHONE = 4
    T_IBAN = 5
    T_SECRET = 6
    NTYPES = 7

cdef enum:
    NWMAX = 8           # selector states: 8 x 64 bits (redact_py.MAX_STATES)
    MAX_SEP = 3
    FULLWIDTH_ZERO = 0xFF10
    FULLWIDTH_AT = 0xFF20
    LABEL_MAX = 64

cdef unsigned char AFLAGS[128]
cdef unsigned char AKINDS[128]
cdef unsigned char SEPMAP[8192]
cdef unsigned char IBANLEN[676]
cdef char EXTS[128][8]
cdef int NEXTS = 0
cdef char AWS[16][4]
cdef int NAWS = 0

if (_pii.EMAIL, _pii.CARD, _pii.SSN, _pii.PHONE, _pii.IBAN, _pii.SECRET) != (1, 2, 4, 8, 16, 32) \
        or (_pii.F_DIGIT, _pii.F_UPPER, _pii.F_WORD, _pii.F_LOCAL, _pii.F_LABEL, _pii.F_B64URL,
            _pii.F_BEARER, _pii.F_ALNUM) != (1, 2, 4, 8, 16, 32, 64, 128) \
        or (_pii.K_DIGIT, _pii.K_OPEN, _pii.K_AT, _pii.K_PCT, _pii.K_UPPER, _pii.K_LOWER, _pii.K_DASH) \
        != (1, 2, 3, 4, 5, 6, 7) or len(_pii.TYPES) != NTYPES or _pii.MAX_SEP_RUN != MAX_SEP \
        or _pii.PEM_LABEL_MAX != LABEL_MAX or _ref.MAX_STATES > NWMAX * 64:
    raise ImportError("fastgate._core.redact is out of date with fastgate.pii / redact_py; rebuild it")

cdef Py_ssize_t _k
for _k in range(128):
    AFLAGS[_k] = _pii.ASCII_FLAGS[_k]
    AKINDS[_k] = _pii.ASCII_KINDS[_k]
memset(SEPMAP, 0, sizeof(SEPMAP))
for _c in _pii.SEPARATORS:
    if _c >= 65536:
        raise ImportError("separator outside the BMP")
    SEPMAP[_c >> 3] |= 1 << (_c & 7)
memset(IBANLEN, 0, sizeof(IBANLEN))
for _cc, _len in _pii.IBAN_LENGTHS.items():
    IBANLEN[(ord(_cc[0]) - 65) * 26 + ord(_cc[1]) - 65] = _len
for _ext in sorted(_pii.FILE_EXTENSIONS):
    if len(_ext) > 7 or NEXTS >= 128:
        raise ImportError("file extension table too large")
    memset(EXTS[NEXTS], 0, 8)
    _b = _ext.encode("ascii")
    memcpy(EXTS[NEXTS], <char*>_b, len(_b))
    NEXTS += 1
for _ext in sorted(_pii.AWS_PREFIXES):
    _b = _ext.encode("ascii")
    memcpy(AWS[NAWS], <char*>_b, 4)
    NAWS += 1
cdef bytes PEM_BEGIN = _pii.PEM_BEGIN.encode("ascii")
cdef bytes PEM_END = _pii.PEM_END.encode("ascii")
cdef int JWT_PART_MIN = _pii.JWT_PART_MIN
cdef int BEARER_MIN = _pii.BEARER_MIN
cdef int SK_DASH_MIN = _pii.SK_DASH_MIN
cdef int SK_LIVE_MIN = _pii.SK_LIVE_MIN
cdef int GH_MIN = _pii.GH_MIN
cdef int GH_PAT_MIN = _pii.GH_PAT_MIN
cdef int SLACK_MIN = _pii.SLACK_MIN

# --------------------------------------------------------------------------- buffers


cdef struct Buf:
    unsigned char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 256
    while cap < need:
        cap *= 2
    cdef unsigned char* p = <unsigned char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_put(Buf* b, const unsigned char* s, Py_ssize_t k) except -1:
    if b.n + k > b.cap:
        buf_grow(b, b.n + k)
    if k:
        memcpy(b.p + b.n, s, k)
    b.n += k
    return 0


cdef inline int buf_byte(Buf* b, unsigned char c) except -1:
    if b.n + 1 > b.cap:
        buf_grow(b, b.n + 1)
    b.p[b.n] = c
    b.n += 1
    return 0


cdef inline int buf_bytes(Buf* b, bytes data) except -1:
    return buf_put(b, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef struct UBuf:
    u4* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int ubuf_room(UBuf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef u4* p
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 64
    while cap < b.n + extra:
        cap *= 2
    p = <u4*>realloc(b.p, cap * sizeof(u4))
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef struct Work:
    Py_ssize_t* sp        # spans: start, end, type
    Py_ssize_t nsp
    Py_ssize_t capsp
    Py_ssize_t* gs        # digit groups of the current chain
    Py_ssize_t* ge
    unsigned char* gap
    Py_ssize_t capg


cdef int add_span(Work* w, Py_ssize_t a, Py_ssize_t b, Py_ssize_t t) except -1:
    cdef Py_ssize_t cap
    cdef Py_ssize_t* p
    if w.nsp + 1 > w.capsp:
        cap = w.capsp * 2 if w.capsp else 16
        p = <Py_ssize_t*>realloc(w.sp, cap * 3 * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        w.sp = p
        w.capsp = cap
    w.sp[3 * w.nsp] = a
    w.sp[3 * w.nsp + 1] = b
    w.sp[3 * w.nsp + 2] = t
    w.nsp += 1
    return 0


cdef inline int add_group(Work* w, Py_ssize_t m, Py_ssize_t a, Py_ssize_t b) except -1:
    cdef Py_ssize_t cap
    if m + 1 > w.capg:
        cap = w.capg * 2 if w.capg else 32
        w.gs = <Py_ssize_t*>realloc(w.gs, cap * sizeof(Py_ssize_t))
        w.ge = <Py_ssize_t*>realloc(w.ge, cap * sizeof(Py_ssize_t))
        w.gap = <unsigned char*>realloc(w.gap, cap)
        if w.gs == NULL or w.ge == NULL or w.gap == NULL:
            raise MemoryError()
        w.capg = cap
    w.gs[m] = a
    w.ge[m] = b
    w.gap[m] = 0
    return 0


cdef void work_free(Work* w) noexcept:
    free(w.sp)
    free(w.gs)
    free(w.ge)
    free(w.gap)
    memset(w, 0, sizeof(Work))

# --------------------------------------------------------------------------- character classes


cdef inline bint is_digit(u4 c) noexcept nogil:
    return <u4>(c - 48) <= 9 or <u4>(c - FULLWIDTH_ZERO) <= 9


cdef inline int dval(u4 c) noexcept nogil:
    return <int>(c - 48) if c < 128 else <int>(c - FULLWIDTH_ZERO)


cdef inline bint flag(u4 c, int f) noexcept nogil:
    return c < 128 and (AFLAGS[c] & f) != 0


cdef inline bint is_word(u4 c) noexcept nogil:
    return flag(c, F_WORD) or <u4>(c - FULLWIDTH_ZERO) <= 9


cdef inline bint is_tight(u4 c) noexcept nogil:
    return is_word(c) or c == 45


cdef inline bint is_sep(u4 c) noexcept nogil:
    return c < 65536 and (SEPMAP[c >> 3] >> (c & 7)) & 1


cdef inline bint upper_or_digit(u4 c) noexcept nogil:
    return flag(c, F_UPPER) or flag(c, F_DIGIT)


cdef inline bint lit_at(const CH* s, Py_ssize_t n, Py_ssize_t i, const char* lit, Py_ssize_t L) noexcept nogil:
    cdef Py_ssize_t k
    if i < 0 or i + L > n:
        return False
    for k in range(L):
        if s[i + k] != <unsigned char>lit[k]:
            return False
    return True


cdef inline Py_ssize_t run_of(const CH* s, Py_ssize_t j, Py_ssize_t n, int f) noexcept nogil:
    while j < n and flag(s[j], f):
        j += 1
    return j


cdef inline bint has_flag(const CH* s, Py_ssize_t a, Py_ssize_t b, int f) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(a, b):
        if flag(s[p], f):
            return True
    return False


cdef inline bint has_letter(const CH* s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(a, b):
        if flag(s[p], F_ALNUM) and not flag(s[p], F_DIGIT):
            return True
    return False

# --------------------------------------------------------------------------- validators


cdef bint luhn(const int* d, int n) noexcept nogil:
    cdef int total = 0, k, x
    for k in range(n):
        x = d[n - 1 - k]
        if k & 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


cdef bint card_prefix_ok(const int* d, int n) noexcept nogil:
    if n < 13 or n > 19:
        return False
    cdef int p1 = d[0]
    cdef int p2 = d[0] * 10 + d[1]
    cdef int p3 = p2 * 10 + d[2]
    cdef int p4 = p3 * 10 + d[3]
    if p1 == 4:
        return n == 16 or n == 19
    if p1 == 5:
        if 51 <= p2 <= 55:
            return n == 16
        return (p2 == 50 or 56 <= p2 <= 58) and n >= 16
    if p1 == 2:
        if 2221 <= p4 <= 2720:
            return n == 16
        return 2200 <= p4 <= 2204 and n >= 16
    if p1 == 3:
        if p2 == 34 or p2 == 37:
            return n == 15
        if 300 <= p3 <= 305 or p2 == 36 or p2 == 38 or p2 == 39 or p4 == 3095:
            return n >= 14
        return 3528 <= p4 <= 3589 and n >= 16
    if p1 == 6:
        return (p2 == 60 or p2 == 62 or p2 == 63 or p2 == 64 or p2 == 65 or p2 == 67) and n >= 16
    return False


cdef inline bint card_ok(const int* d, int n) noexcept nogil:
    return card_prefix_ok(d, n) and luhn(d, n)


cdef int ssn_type(const int* d) noexcept nogil:
    cdef int area = d[0] * 100 + d[1] * 10 + d[2]
    cdef int group = d[3] * 10 + d[4]
    cdef int serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8]
    if group == 0 or serial == 0:
        return -1
    if area >= 900:
        if 50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or 94 <= group <= 99:
            return T_TAX_ID
        return -1
    if area == 0 or area == 666:
        return -1
    return T_SSN


cdef bint iban_ok(const u4* chars, int n) noexcept nogil:
    cdef int rem = 0, k
    cdef u4 c
    for k in range(n):
        c = chars[(k + 4) % n]
        if c <= 57:
            rem = (rem * 10 + <int>(c - 48)) % 97
        else:
            rem = (rem * 100 + <int>(c - 55)) % 97
    return rem == 1

# --------------------------------------------------------------------------- detectors


cdef int collect_digits(const CH* s, Work* w, Py_ssize_t x, Py_ssize_t y, int* d) noexcept nogil:
    cdef int k = 0
    cdef Py_ssize_t g, p
    for g in range(x, y):
        for p in range(w.gs[g], w.ge[g]):
            d[k] = dval(s[p])
            k += 1
    return k


cdef Py_ssize_t span_digits(Work* w, Py_ssize_t x, Py_ssize_t m, int skip, int lo, int hi) noexcept nogil:
    cdef Py_ssize_t tot = -skip, best = -1, y
    for y in range(x, m):
        tot += w.ge[y] - w.gs[y]
        if tot > hi:
            break
        if tot >= lo:
            best = y
    return best


cdef Py_ssize_t phone_at(const CH* s, Work* w, Py_ssize_t x, Py_ssize_t m, bint plus) noexcept nogil:
    cdef int first = dval(s[w.gs[x]])
    cdef Py_ssize_t best, y, tot
    if x == 0 and plus and first != 0:
        best = span_digits(w, 0, m, 0, 8, 15)
        if best >= 0:
            return best
    if x == 0 and first == 0 and w.ge[x] - w.gs[x] >= 2 and dval(s[w.gs[x] + 1]) == 0:
        best = span_digits(w, x, m, 2, 8, 15)
        if best >= 0:
            return best
    y = x
    if w.ge[y] - w.gs[y] == 1 and first == 1:
        y += 1
    if y + 2 < m and w.ge[y] - w.gs[y] == 3 and w.ge[y + 1] - w.gs[y + 1] == 3 \
            and w.ge[y + 2] - w.gs[y + 2] == 4 and dval(s[w.gs[y]]) >= 2 and dval(s[w.gs[y + 1]]) >= 2:
        return y + 2
    if x == 0 and first == 0 and w.ge[x] - w.gs[x] >= 2:
        tot = 0
        best = -1
        y = x
        while y < m and y < x + 5 and 2 <= w.ge[y] - w.gs[y] <= 8:
            tot += w.ge[y] - w.gs[y]
            if tot > 11:
                break
            if tot >= 10 and y > x:
                best = y
            y += 1
        return best
    return -1


cdef Py_ssize_t chain_at(const CH* s, Py_ssize_t n, Py_ssize_t i, int enabled, Work* w) except -2:
    """Parse the digit chain at i, add the PII inside it, return where it ends."""
    cdef bint plus = s[i] == 43
    cdef Py_ssize_t j = i + 1 if (s[i] == 43 or s[i] == 40) else i
    cdef Py_ssize_t m = 0, st, k, run, x, y, e, end, tot
    cdef int simple, t, nd
    cdef int d[19]
    while True:
        st = j
        while j < n and is_digit(s[j]):
            j += 1
        add_group(w, m, st, j)
        m += 1
        k = j
        run = 0
        simple = 1
        while k < n and run < MAX_SEP and is_sep(s[k]):
            if s[k] == 40 or s[k] == 41:
                simple = 0
            k += 1
            run += 1
        if run and k < n and is_digit(s[k]):
            w.gap[m - 1] = simple if run == 1 else 0
            j = k
            continue
        break
    end = j
    if end < n and is_word(s[end]):
        return end
    x = 0
    while x < m:
        e = -1
        t = -1
        if enabled & CARD:
            tot = 0
            y = x
            while y < m and tot + (w.ge[y] - w.gs[y]) <= 19:
                tot += w.ge[y] - w.gs[y]
                y += 1
            while y > x and tot >= 13:
                nd = collect_digits(s, w, x, y, d)
                if card_ok(d, nd):
                    e = y - 1
                    t = T_CARD
                    break
                y -= 1
                tot -= w.ge[y] - w.gs[y]
        if e < 0 and enabled & SSN and x + 2 < m and w.ge[x] - w.gs[x] == 3 \
                and w.ge[x + 1] - w.gs[x + 1] == 2 and w.ge[x + 2] - w.gs[x + 2] == 4 \
                and w.gap[x] and w.gap[x + 1]:
            collect_digits(s, w, x, x + 3, d)
            t = ssn_type(d)
            if t >= 0:
                e = x + 2
        if e < 0 and enabled & PHONE:
            e = phone_at(s, w, x, m, plus)
            t = T_PHONE
        if e >= 0:
            add_span(w, i if x == 0 else w.gs[x], w.ge[e], t)
            x = e + 1
        else:
            x += 1
    return end


cdef bint email_at(const CH* s, Py_ssize_t i, Py_ssize_t at_len, Py_ssize_t n, Py_ssize_t last,
                   Py_ssize_t* start, Py_ssize_t* stop) noexcept nogil:
    cdef Py_ssize_t j = i, d, k, ls, tl, te, p, L, m = 0, t
    cdef Py_ssize_t starts[130]
    cdef Py_ssize_t ends[130]
    cdef int x
    cdef bint alpha
    cdef char low[8]
    while j > last and flag(s[j - 1], F_LOCAL):
        j -= 1
    while j < i and s[j] == 46:
        j += 1
    if not (1 <= i - j <= 64):
        return False
    d = i + at_len
    k = d
    while True:
        ls = k
        while k < n and flag(s[k], F_LABEL):
            k += 1
        if k == ls or k - ls > 63 or s[ls] == 45 or s[k - 1] == 45:
            return False
        starts[m] = ls
        ends[m] = k
        m += 1
        if k + 1 < n and s[k] == 46 and flag(s[k + 1], F_LABEL) and k + 1 - d <= 253:
            k += 1
            continue
        break
    t = m - 1
    while t >= 1:
        tl = starts[t]
        te = ends[t]
        L = te - tl
        alpha = 2 <= L <= 24
        if alpha:
            for p in range(tl, te):
                if flag(s[p], F_DIGIT) or s[p] == 45:
                    alpha = False
                    break
        if alpha:
            if te - d > 253:
                return False
            if L <= 7:
                memset(low, 0, 8)
                for p in range(L):
                    low[p] = <char>(s[tl + p] | 32)
                for x in range(NEXTS):
                    if memcmp(low, EXTS[x], 8) == 0:
                        return False
            start[0] = j
            stop[0] = te
            return True
        t -= 1
    return False


cdef Py_ssize_t secret_at(const CH* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """End of a secret token whose span starts at i (Bearer: see bearer_at), or -1."""
    cdef u4 c = s[i]
    cdef Py_ssize_t e, e1, e2, p
    cdef int parts, x
    if c == 101:  # e: JWT / JWE
        if not lit_at(s, n, i, "eyJ", 3):
            return -1
        e1 = run_of(s, i, n, F_B64URL)
        if e1 - i < JWT_PART_MIN or not (e1 < n and s[e1] == 46) or not lit_at(s, n, e1 + 1, "eyJ", 3):
            return -1
        e2 = run_of(s, e1 + 1, n, F_B64URL)
        if e2 - e1 - 1 < JWT_PART_MIN or not (e2 < n and s[e2] == 46):
            return -1
        e = run_of(s, e2 + 1, n, F_B64URL)
        parts = 3
        while parts < 5 and e + 1 < n and s[e] == 46 and flag(s[e + 1], F_B64URL):
            e = run_of(s, e + 1, n, F_B64URL)
            parts += 1
        return e
    if c == 115 or c == 114:  # s r
        if c == 115 and lit_at(s, n, i, "sk-", 3):
            e = run_of(s, i + 3, n, F_B64URL)
            if e - i - 3 >= SK_DASH_MIN and has_flag(s, i + 3, e, F_DIGIT):
                return e
            return -1
        if lit_at(s, n, i + 1, "k_live_", 7) or lit_at(s, n, i + 1, "k_test_", 7):
            e = run_of(s, i + 8, n, F_ALNUM)
            if e - i - 8 >= SK_LIVE_MIN:
                return e
        return -1
    if c == 103:  # g: GitHub
        if lit_at(s, n, i, "github_pat_", 11):
            e = run_of(s, i + 11, n, F_WORD)
            if e - i - 11 >= GH_PAT_MIN:
                return e
            return -1
        if i + 3 < n and s[i + 1] == 104 and (s[i + 2] == 112 or s[i + 2] == 111 or s[i + 2] == 117
                                              or s[i + 2] == 115 or s[i + 2] == 114) and s[i + 3] == 95:
            e = run_of(s, i + 4, n, F_ALNUM)
            if e - i - 4 >= GH_MIN:
                return e
        return -1
    if c == 120:  # x: Slack
        if i + 4 < n and lit_at(s, n, i, "xox", 3) and (s[i + 3] == 98 or s[i + 3] == 97 or s[i + 3] == 112
                                                       or s[i + 3] == 114 or s[i + 3] == 115) and s[i + 4] == 45:
            e = run_of(s, i + 5, n, F_LABEL)
            if e - i - 5 >= SLACK_MIN:
                return e
        return -1
    if c == 65 and i + 20 <= n:  # A: AWS access key id
        for x in range(NAWS):
            if s[i + 1] == <unsigned char>AWS[x][1] and s[i + 2] == <unsigned char>AWS[x][2] \
                    and s[i + 3] == <unsigned char>AWS[x][3]:
                for p in range(i + 4, i + 20):
                    if not upper_or_digit(s[p]):
                        return -1
                if i + 20 < n and is_word(s[i + 20]):
                    return -1
                return i + 20
    return -1


cdef bint bearer_at(const CH* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* stop) noexcept nogil:
    cdef Py_ssize_t j, k, e
    if not (lit_at(s, n, i, "Bearer", 6) or lit_at(s, n, i, "bearer", 6) or lit_at(s, n, i, "BEARER", 6)):
        return False
    j = i + 6
    k = j
    while k < n and k - j < 8 and (s[k] == 32 or s[k] == 9):
        k += 1
    if k == j:
        return False
    e = run_of(s, k, n, F_BEARER)
    while e > k and s[e - 1] == 46:
        e -= 1
    if e - k >= BEARER_MIN and has_flag(s, k, e, F_DIGIT) and has_letter(s, k, e):
        start[0] = k
        stop[0] = e
        return True
    return False


cdef Py_ssize_t iban_at(const CH* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef u4 chars[40]
    cdef int want, count = 0
    cdef Py_ssize_t j
    cdef u4 c
    if i + 4 > n or not (flag(s[i + 1], F_UPPER) and flag(s[i + 2], F_DIGIT) and flag(s[i + 3], F_DIGIT)):
        return -1
    want = IBANLEN[(s[i] - 65) * 26 + (s[i + 1] - 65)]
    if want == 0:
        return -1
    j = i
    while j < n and count < want:
        c = s[j]
        if upper_or_digit(c):
            chars[count] = c
            count += 1
            j += 1
        elif (c == 32 or c == 0xA0) and count % 4 == 0 and j + 1 < n and upper_or_digit(s[j + 1]):
            j += 1
        else:
            break
    if count != want or (j < n and is_word(s[j])) or not iban_ok(chars, count):
        return -1
    return j


cdef inline bint label_char(u4 c) noexcept nogil:
    return flag(c, F_UPPER) or flag(c, F_DIGIT) or c == 32


cdef Py_ssize_t pem_header(const CH* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j = i + 11, k, p
    cdef bint found = False
    k = j
    while k < n and k - j < LABEL_MAX and label_char(s[k]):
        k += 1
    if not lit_at(s, n, k, "-----", 5):
        return -1
    for p in range(j, k - 10):
        if lit_at(s, n, p, "PRIVATE KEY", 11):
            found = True
            break
    if not found:
        return -1
    return k + 5


cdef Py_ssize_t pem_end(const CH* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t e = i, j, k
    while e + 9 <= n:
        if s[e] == 45 and lit_at(s, n, e, "-----END ", 9):
            k = j = e + 9
            while k < n and k - j < LABEL_MAX and label_char(s[k]):
                k += 1
            if lit_at(s, n, k, "-----", 5):
                k += 5
            return k
        e += 1
    return -1


cdef inline Py_ssize_t next_pos(const CH* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Where scanning resumes after nothing matched at i. After a word character only
    '@', '%' and '-' can start anything (digits, '+', '(' and letters need a non-word
    character before them), so the rest of an ASCII word is skipped in one loop."""
    if not is_word(s[i]):
        return i + 1
    i += 1
    while i < n and s[i] < 128 and (AFLAGS[s[i]] & F_WORD):
        i += 1
    return i


cdef int detect(const CH* s, Py_ssize_t n, int enabled, Py_ssize_t begin, bint pem_open, Work* w) except -1:
    """Port of pii.detect: spans into w, returns 1 when the text ends inside a key block."""
    cdef Py_ssize_t i = begin, last = begin, e, e2, a = 0, b = 0
    cdef u4 c, prev
    cdef int k, at_len
    cdef int chains = enabled & (CARD | SSN | PHONE)
    w.nsp = 0
    if pem_open:
        e = pem_end(s, begin, n)
        if e < 0:
            add_span(w, begin, n, T_SECRET)
            return 1
        add_span(w, begin, e, T_SECRET)
        i = last = e
    while i < n:
        c = s[i]
        if c < 128:
            k = AKINDS[c]
            if k == K_NONE:
                i = next_pos(s, i, n)
                continue
        elif <u4>(c - FULLWIDTH_ZERO) <= 9:
            k = K_DIGIT
        elif c == FULLWIDTH_AT:
            k = K_AT
        else:
            i += 1
            continue
        prev = s[i - 1] if i > 0 else 32
        if k == K_DIGIT or k == K_OPEN:
            if not chains or is_word(prev) or (k == K_OPEN and not (i + 1 < n and is_digit(s[i + 1]))):
                i = next_pos(s, i, n)
                continue
            i = chain_at(s, n, i, enabled, w)
            if w.nsp and w.sp[3 * w.nsp - 2] > last:
                last = w.sp[3 * w.nsp - 2]
            continue
        if k == K_AT or k == K_PCT:
            at_len = 1
            if k == K_PCT:
                if not (i + 2 < n and s[i + 1] == 52 and s[i + 2] == 48):
                    i += 1
                    continue
                at_len = 3
            if enabled & EMAIL and email_at(s, i, at_len, n, last, &a, &b):
                add_span(w, a, b, T_EMAIL)
                i = last = b
                continue
            i += 1
            continue
        if k == K_DASH:
            if enabled & SECRET and lit_at(s, n, i, "-----BEGIN ", 11):
                e2 = pem_header(s, i, n)
                if e2 >= 0:
                    e = pem_end(s, e2, n)
                    if e < 0:
                        add_span(w, i, n, T_SECRET)
                        return 1
                    add_span(w, i, e, T_SECRET)
                    i = last = e
                    continue
            i += 1
            continue
        if is_tight(prev):
            i = next_pos(s, i, n)
            continue
        if enabled & SECRET:
            if c == 66 or c == 98:
                if bearer_at(s, i, n, &a, &b):
                    add_span(w, a, b, T_SECRET)
                    i = last = b
                    continue
            else:
                e = secret_at(s, i, n)
                if e >= 0:
                    add_span(w, i, e, T_SECRET)
                    i = last = e
                    continue
        if k == K_UPPER and enabled & IBAN:
            e = iban_at(s, i, n)
            if e >= 0:
                add_span(w, i, e, T_IBAN)
                i = last = e
                continue
        i = next_pos(s, i, n)
    return 0

# --------------------------------------------------------------------------- escapes

cdef uint64_t ONES = 0x0101010101010101
cdef uint64_t HIGHS = 0x8080808080808080
cdef uint64_t SPACES = 0x2020202020202020
cdef uint64_t QUOTES = 0x2222222222222222
cdef uint64_t BACKSLASHES = 0x5C5C5C5C5C5C5C5C


cdef inline uint64_t special8(const unsigned char* p) noexcept nogil:
    """High bits marking quote, backslash, control and non-ASCII bytes among 8. Only the
    lowest marked byte is exact (borrows run upwards), which is all the callers use."""
    cdef uint64_t v, q, b
    memcpy(&v, p, 8)
    q = v ^ QUOTES
    b = v ^ BACKSLASHES
    return (v & HIGHS) | ((v - SPACES) & ~v & HIGHS) | ((q - ONES) & ~q & HIGHS) | ((b - ONES) & ~b & HIGHS)


cdef unsigned char ESC[128]   # 0: copy; else the escape letter ('u' for \u00xx)
cdef unsigned char STRPLAIN[256]  # plain string byte: no quote, backslash, control or non-ASCII
cdef unsigned char TRIG[256]      # bytes without which no built-in detector can match
cdef unsigned char SIMPLE_ESC[256]  # the letters of the two-byte escapes
cdef unsigned char NUMCH[256]
cdef unsigned char HEXV[256]  # hex value + 1, 0 if not hex
cdef const char* HEXD = "0123456789abcdef"
memset(ESC, 0, sizeof(ESC))
for _k in range(32):
    ESC[_k] = ord("u")
ESC[8] = ord("b")
ESC[9] = ord("t")
ESC[10] = ord("n")
ESC[12] = ord("f")
ESC[13] = ord("r")
ESC[34] = 34
ESC[92] = 92
for _k in range(256):
    STRPLAIN[_k] = 1 if (0x20 <= _k < 0x80 and _k != 34 and _k != 92) else 0
    NUMCH[_k] = 1 if chr(_k) in "0123456789+-.eE" else 0
    TRIG[_k] = 1 if (_k >= 128 or chr(_k) in _pii.TRIGGERS) else 0
    SIMPLE_ESC[_k] = 1 if chr(_k) in '"\\/bfnrt' else 0
    HEXV[_k] = ("0123456789abcdef".index(chr(_k).lower()) + 1) if chr(_k) in "0123456789abcdefABCDEF" else 0


cdef int put_escaped_bytes(Buf* b, const unsigned char* s, Py_ssize_t n) except -1:
    """Canonical escape of UTF-8 text without surrogates (bytes >= 0x80 copied)."""
    cdef Py_ssize_t i = 0, k
    cdef unsigned char c, e
    cdef unsigned char* p
    cdef uint64_t v, q, bs, m
    if b.n + 6 * n + 8 > b.cap:
        buf_grow(b, b.n + 6 * n + 8)
    p = b.p + b.n
    while i < n:
        if i + 8 <= n:
            memcpy(&v, s + i, 8)
            q = v ^ QUOTES
            bs = v ^ BACKSLASHES
            m = ((v - SPACES) & ~v & HIGHS) | ((q - ONES) & ~q & HIGHS) | ((bs - ONES) & ~bs & HIGHS)
            memcpy(p, &v, 8)  # room for 6n bytes is reserved: copy first, keep what is clean
            if m == 0:
                p += 8
                i += 8
                continue
            k = __builtin_ctzll(m) >> 3
            p += k
            i += k
        c = s[i]
        i += 1
        e = ESC[c] if c < 128 else 0
        if e == 0:
            p[0] = c
            p += 1
        elif e == 117:
            p[0] = 92
            p[1] = 117
            p[2] = 48
            p[3] = 48
            p[4] = HEXD[c >> 4]
            p[5] = HEXD[c & 15]
            p += 6
        else:
            p[0] = 92
            p[1] = e
            p += 2
    b.n = p - b.p
    return 0


cdef int put_cp(Buf* b, u4 c) except -1:
    """One code point, canonically escaped, as UTF-8."""
    cdef unsigned char e
    if b.n + 6 > b.cap:
        buf_grow(b, b.n + 6)
    if c < 128:
        e = ESC[c]
        if e == 0:
            b.p[b.n] = <unsigned char>c
            b.n += 1
        elif e == 117:
            memcpy(b.p + b.n, "\\u00", 4)
            b.p[b.n + 4] = HEXD[c >> 4]
            b.p[b.n + 5] = HEXD[c & 15]
            b.n += 6
        else:
            b.p[b.n] = 92
            b.p[b.n + 1] = e
            b.n += 2
    elif c < 0x800:
        b.p[b.n] = 0xC0 | (c >> 6)
        b.p[b.n + 1] = 0x80 | (c & 0x3F)
        b.n += 2
    elif 0xD800 <= c <= 0xDFFF:
        memcpy(b.p + b.n, "\\u", 2)
        b.p[b.n + 2] = HEXD[(c >> 12) & 15]
        b.p[b.n + 3] = HEXD[(c >> 8) & 15]
        b.p[b.n + 4] = HEXD[(c >> 4) & 15]
        b.p[b.n + 5] = HEXD[c & 15]
        b.n += 6
    elif c < 0x10000:
        b.p[b.n] = 0xE0 | (c >> 12)
        b.p[b.n + 1] = 0x80 | ((c >> 6) & 0x3F)
        b.p[b.n + 2] = 0x80 | (c & 0x3F)
        b.n += 3
    else:
        b.p[b.n] = 0xF0 | (c >> 18)
        b.p[b.n + 1] = 0x80 | ((c >> 12) & 0x3F)
        b.p[b.n + 2] = 0x80 | ((c >> 6) & 0x3F)
        b.p[b.n + 3] = 0x80 | (c & 0x3F)
        b.n += 4
    return 0


cdef int put_escaped_ucs4(Buf* b, const u4* s, Py_ssize_t n) except -1:
    """Canonical escape of code points as UTF-8 (put_cp for a whole run)."""
    cdef Py_ssize_t k
    cdef u4 c
    if b.n + 6 * n > b.cap:
        buf_grow(b, b.n + 6 * n)
    for k in range(n):
        c = s[k]
        if c < 128 and ESC[c] == 0:
            b.p[b.n] = <unsigned char>c
            b.n += 1
        else:
            put_cp(b, c)
    return 0


cdef inline int hex4(const unsigned char* p) noexcept nogil:
    return ((HEXV[p[0]] - 1) << 12) | ((HEXV[p[1]] - 1) << 8) | ((HEXV[p[2]] - 1) << 4) | (HEXV[p[3]] - 1)


cdef inline void put_utf8(Buf* b, u4 c) noexcept nogil:
    """WTF-8: surrogates get their 3-byte form (the buffer has room for 4 bytes)."""
    if c < 0x80:
        b.p[b.n] = <unsigned char>c
        b.n += 1
    elif c < 0x800:
        b.p[b.n] = 0xC0 | (c >> 6)
        b.p[b.n + 1] = 0x80 | (c & 0x3F)
        b.n += 2
    elif c < 0x10000:
        b.p[b.n] = 0xE0 | (c >> 12)
        b.p[b.n + 1] = 0x80 | ((c >> 6) & 0x3F)
        b.p[b.n + 2] = 0x80 | (c & 0x3F)
        b.n += 3
    else:
        b.p[b.n] = 0xF0 | (c >> 18)
        b.p[b.n + 1] = 0x80 | ((c >> 12) & 0x3F)
        b.p[b.n + 2] = 0x80 | ((c >> 6) & 0x3F)
        b.p[b.n + 3] = 0x80 | (c & 0x3F)
        b.n += 4


cdef int unescape_utf8(const unsigned char* s, Py_ssize_t n, Buf* b) except -1:
    """Validated string content -> WTF-8 text; returns 1 if any byte >= 0x80 was written."""
    cdef Py_ssize_t i = 0
    cdef unsigned char e, c8
    cdef u4 c, lo
    cdef int wide = 0
    cdef uint64_t v, x
    cdef unsigned char* p
    b.n = 0
    if n > b.cap:
        buf_grow(b, n)
    p = b.p
    while i < n:
        if i + 8 <= n:
            memcpy(&v, s + i, 8)
            x = v ^ BACKSLASHES
            if ((x - ONES) & ~x & HIGHS) == 0:
                memcpy(p, &v, 8)
                wide |= (v & HIGHS) != 0
                p += 8
                i += 8
                continue
        c8 = s[i]
        if c8 != 92:
            p[0] = c8
            p += 1
            wide |= c8 >= 0x80
            i += 1
            continue
        e = s[i + 1]
        if e == 117:
            c = hex4(s + i + 2)
            i += 6
            if 0xD800 <= c <= 0xDBFF and i + 6 <= n and s[i] == 92 and s[i + 1] == 117:
                lo = hex4(s + i + 2)
                if 0xDC00 <= lo <= 0xDFFF:
                    c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00)
                    i += 6
            if c >= 0x80:
                wide = 1
            b.n = p - b.p
            put_utf8(b, c)
            p = b.p + b.n
        else:
            if e == 98:
                p[0] = 8
            elif e == 102:
                p[0] = 12
            elif e == 110:
                p[0] = 10
            elif e == 114:
                p[0] = 13
            elif e == 116:
                p[0] = 9
            else:
                p[0] = e
            p += 1
            i += 2
    b.n = p - b.p
    return wide


cdef Py_ssize_t decode_ucs4(const unsigned char* s, Py_ssize_t n, u4* out) noexcept nogil:
    """Validated UTF-8 (or WTF-8) -> code points."""
    cdef Py_ssize_t i = 0, k = 0
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c < 0x80:
            out[k] = c
            i += 1
        elif c < 0xE0:
            out[k] = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F)
            i += 2
        elif c < 0xF0:
            out[k] = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
            i += 3
        else:
            out[k] = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F)
            i += 4
        k += 1
    return k


cdef bint valid_number(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0, d
    if i < n and p[i] == 45:
        i += 1
    if i >= n:
        return False
    if p[i] == 48:
        i += 1
    elif 49 <= p[i] <= 57:
        while i < n and 48 <= p[i] <= 57:
            i += 1
    else:
        return False
    if i < n and p[i] == 46:
        i += 1
        d = i
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i == d:
            return False
    if i < n and (p[i] == 101 or p[i] == 69):
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            i += 1
        d = i
        while i < n and 48 <= p[i] <= 57:
            i += 1
        if i == d:
            return False
    return i == n

# --------------------------------------------------------------------------- engine

cdef enum:
    S_START = 0
    S_VALUE = 1
    S_VALUE_OR_END = 2
    S_KEY_OR_END = 3
    S_KEY = 4
    S_COLON = 5
    S_AFTER = 6
    S_DONE = 7

cdef enum:
    TK_NONE = 0
    TK_STRING = 1
    TK_NUMBER = 2
    TK_LITERAL = 3

cdef enum:
    OBJ = 0
    ARR = 1

cdef enum:
    ST_ACCEPT = 0
    ST_KEY = 1
    ST_INDEX = 2
    ST_WILD = 3
    ST_DESCEND = 4

cdef enum:
    SF_ESC = 1
    SF_WIDE = 2

if (_ref.ACCEPT, _ref.KEY, _ref.INDEX, _ref.WILDCARD, _ref.DESCEND) != (0, 1, 2, 3, 4):
    raise ImportError("fastgate._core.redact is out of date with redact_py; rebuild it")


@cython.final
cdef class Engine:
    """Compiled engine for one Plan: selector tables, masks, and the C detectors."""

    cdef readonly object plan
    cdef readonly str impl
    cdef int nstates, nw, enabled, ntypes, nsel, max_depth
    cdef Py_ssize_t max_token, window
    cdef bint detecting, has_custom, simple
    cdef int skind[NWMAX * 64]
    cdef Py_ssize_t snum[NWMAX * 64]
    cdef int sowner[NWMAX * 64]
    cdef uint64_t roots[NWMAX]
    cdef uint64_t accept[NWMAX]
    cdef uint64_t wild[NWMAX]      # steps that advance on any member or element
    cdef uint64_t desc[NWMAX]      # descendant steps: stay active below
    cdef uint64_t named[NWMAX]     # key and descendant steps: advance on their name
    cdef uint64_t indexed[NWMAX]   # index steps
    cdef list _names          # bytes per state (UTF-8, surrogatepass) or None; keeps sname alive
    cdef const char* sname[NWMAX * 64]
    cdef Py_ssize_t slen[NWMAX * 64]
    cdef list _masks          # escaped mask per type code (simple masks)
    cdef list _masks32        # the same masks as UTF-32 code points
    cdef bytes _field_mask
    cdef object _slots        # kind name -> count slot
    cdef list _slot_names
    cdef object _custom

    def __cinit__(self, plan):
        cdef int k
        cdef uint64_t bit
        self.plan = plan
        self.impl = "compiled"
        self.nstates = plan.nstates
        self.nw = (plan.nstates + 63) // 64
        self.enabled = plan.enabled
        self.detecting = plan.detecting
        self.has_custom = bool(plan.custom_patterns)
        self._custom = plan.custom_patterns
        self.simple = plan.mask.simple
        self.max_depth = plan.max_depth
        self.max_token = plan.max_token
        self.window = plan.string_window
        memset(self.roots, 0, sizeof(self.roots))
        memset(self.accept, 0, sizeof(self.accept))
        memset(self.wild, 0, sizeof(self.wild))
        memset(self.desc, 0, sizeof(self.desc))
        memset(self.named, 0, sizeof(self.named))
        memset(self.indexed, 0, sizeof(self.indexed))
        self._names = []
        for k in range(self.nstates):
            self.skind[k] = plan.step_kind[k]
            self.snum[k] = plan.step_num[k]
            self.sowner[k] = plan.step_owner[k]
            name = plan.step_name[k]
            encoded = b"" if name is None else name.encode("utf-8", "surrogatepass")
            self._names.append(encoded)
            self.sname[k] = PyBytes_AS_STRING(encoded)
            self.slen[k] = PyBytes_GET_SIZE(encoded)
            bit = (<uint64_t>1) << (k & 63)
            if self.skind[k] == ST_WILD:
                self.wild[k >> 6] |= bit
            elif self.skind[k] == ST_DESCEND:
                self.desc[k >> 6] |= bit
                self.named[k >> 6] |= bit
            elif self.skind[k] == ST_KEY:
                self.named[k >> 6] |= bit
            elif self.skind[k] == ST_INDEX:
                self.indexed[k >> 6] |= bit
            if (plan.roots >> k) & 1:
                self.roots[k >> 6] |= (<uint64_t>1) << (k & 63)
            if (plan.accept >> k) & 1:
                self.accept[k >> 6] |= (<uint64_t>1) << (k & 63)
        self.ntypes = len(plan.type_names)
        self.nsel = len(plan.selectors)
        self._masks = [escape(plan.mask.render(t)).encode("utf-8") for t in plan.type_names]
        self._masks32 = [plan.mask.render(t).encode("utf-32-le", "surrogatepass") for t in plan.type_names]
        self._field_mask = escape(plan.mask.render(_pii.FIELD)).encode("utf-8")
        self._slot_names = list(plan.type_names) + list(plan.selectors)
        self._slots = {name: k for k, name in enumerate(self._slot_names)}

    def find(self, str text, Py_ssize_t begin=0, bint pem_open=False):
        """Spans of PII in text[begin:] (text[:begin] is context) and the open-key flag."""
        cdef Work w
        cdef int kind = PyUnicode_KIND(text)
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
        cdef int opened = 0
        memset(&w, 0, sizeof(Work))
        try:
            if self.enabled:
                if kind == PyUnicode_1BYTE_KIND:
                    opened = detect(<const unsigned char*>PyUnicode_DATA(text), n, self.enabled, begin,
                                    pem_open, &w)
                elif kind == PyUnicode_2BYTE_KIND:
                    opened = detect(<const u2*>PyUnicode_DATA(text), n, self.enabled, begin, pem_open, &w)
                else:
                    opened = detect(<const u4*>PyUnicode_DATA(text), n, self.enabled, begin, pem_open, &w)
            spans = [(w.sp[3 * k], w.sp[3 * k + 1], w.sp[3 * k + 2]) for k in range(w.nsp)]
        finally:
            work_free(&w)
        if self.has_custom:
            spans = _pii.merge(spans, _pii.custom_spans(self._custom, text, begin, len(_pii.TYPES)))
        return spans, bool(opened)

    def json(self, int depth0=0, roots=None):
        return JsonRedactor(self, depth0, roots)

    def text(self):
        return TextRedactor(self)

    def unescape_bytes(self, bytes raw):
        """Validated string content -> its text as WTF-8."""
        cdef Buf b
        memset(&b, 0, sizeof(Buf))
        try:
            unescape_utf8(<const unsigned char*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), &b)
            return PyBytes_FromStringAndSize(<char*>b.p, b.n)
        finally:
            free(b.p)

    def escape_bytes(self, bytes body):
        """UTF-8 text (no lone surrogates) -> canonical JSON string content."""
        cdef Buf b
        memset(&b, 0, sizeof(Buf))
        try:
            put_escaped_bytes(&b, <const unsigned char*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
            return PyBytes_FromStringAndSize(<char*>b.p, b.n)
        finally:
            free(b.p)

    cdef void child_states(self, const uint64_t* parent, const unsigned char* key, Py_ssize_t klen,
                           Py_ssize_t index, uint64_t* out) noexcept:
        """States of a member (key) or element (key NULL, index) of a value in `parent`."""
        cdef int wd, sid, kind
        cdef uint64_t bits, low, carry = 0, p
        for wd in range(self.nw):
            p = parent[wd]
            # wildcard steps advance, descend steps stay (and may advance below)
            out[wd] = ((p & self.wild[wd]) << 1) | carry | (p & self.desc[wd])
            carry = (p & self.wild[wd]) >> 63
            bits = p & (self.named[wd] if key != NULL else self.indexed[wd])
            while bits:
                low = bits & (~bits + 1)
                sid = wd * 64 + __builtin_ctzll(bits)
                bits ^= low
                if key != NULL:
                    if self.slen[sid] != klen or memcmp(self.sname[sid], key, klen) != 0:
                        continue
                elif index != self.snum[sid]:
                    continue
                if sid & 63 == 63:
                    carry |= 1
                else:
                    out[wd] |= low << 1
        for wd in range(self.nw, NWMAX):
            out[wd] = 0
        if carry and self.nw < NWMAX:
            out[self.nw] |= 1

    cdef int accepted(self, const uint64_t* states) noexcept:
        cdef int wd
        cdef uint64_t a
        for wd in range(self.nw):
            a = states[wd] & self.accept[wd]
            if a:
                return self.sowner[wd * 64 + __builtin_ctzll(a)]
        return -1

    cdef object states_int(self, const uint64_t* states):
        out = 0
        cdef int wd
        for wd in range(self.nw):
            out |= (<object>states[wd]) << (64 * wd)
        return out


cdef inline bint any_bits(const uint64_t* s, int nw) noexcept nogil:
    cdef int k
    for k in range(nw):
        if s[k]:
            return True
    return False


cdef const unsigned char* EMPTY = <const unsigned char*>""
cdef bytes LIT_TRUE = b"true"
cdef bytes LIT_FALSE = b"false"
cdef bytes LIT_NULL = b"null"


@cython.final
cdef class JsonRedactor:
    """Compiled incremental redactor for one JSON document (semantics: redact_py)."""

    cdef Engine eng
    cdef int nw, depth0, depth, st, tok, skip, vsel
    cdef int esc, u8, u8lo, u8hi, unit, sflags, litpos, litlen
    cdef bint key, accum, vlong, spanning, closed
    cdef unsigned char* ckind
    cdef uint64_t* cstates
    cdef Py_ssize_t* cindex
    cdef uint64_t child[NWMAX]
    cdef uint64_t rootset[NWMAX]
    cdef uint64_t vstates[NWMAX]
    cdef Buf raw
    cdef Buf out
    cdef Buf sc
    cdef u4* ub
    cdef Py_ssize_t ucap
    cdef Work w
    cdef UBuf fa
    cdef UBuf fb
    cdef object longstr
    cdef const char* lit
    cdef const unsigned char* cur
    cdef Py_ssize_t run, tokstart, tokend
    cdef Py_ssize_t _masked
    cdef Py_ssize_t* counts
    cdef JsonRedactor inner

    def __cinit__(self, Engine engine, int depth0=0, roots=None):
        cdef int cap = engine.max_depth + 2
        self.eng = engine
        self.nw = engine.nw
        memset(&self.raw, 0, sizeof(Buf))
        memset(&self.out, 0, sizeof(Buf))
        memset(&self.sc, 0, sizeof(Buf))
        memset(&self.w, 0, sizeof(Work))
        memset(&self.fa, 0, sizeof(UBuf))
        memset(&self.fb, 0, sizeof(UBuf))
        self.ub = NULL
        self.ucap = 0
        self.ckind = <unsigned char*>malloc(cap)
        self.cstates = <uint64_t*>malloc(cap * NWMAX * sizeof(uint64_t))
        self.cindex = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
        self.counts = <Py_ssize_t*>malloc((engine.ntypes + engine.nsel + 1) * sizeof(Py_ssize_t))
        if self.ckind == NULL or self.cstates == NULL or self.cindex == NULL or self.counts == NULL:
            raise MemoryError()
        self.reset(depth0, roots)

    def __dealloc__(self):
        free(self.raw.p)
        free(self.out.p)
        free(self.sc.p)
        free(self.ub)
        free(self.fa.p)
        free(self.fb.p)
        work_free(&self.w)
        free(self.ckind)
        free(self.cstates)
        free(self.cindex)
        free(self.counts)

    cdef int reset(self, int depth0, roots) except -1:
        cdef int k
        self.depth0 = depth0
        self.depth = 0
        self.st = S_START
        self.tok = TK_NONE
        self.skip = -1
        self.vsel = -1
        self.esc = self.u8 = self.unit = self.sflags = 0
        self.key = self.accum = self.vlong = self.spanning = self.closed = False
        self.raw.n = 0
        self.out.n = 0
        self.longstr = None
        self._masked = 0
        memset(self.counts, 0, (self.eng.ntypes + self.eng.nsel + 1) * sizeof(Py_ssize_t))
        memset(self.child, 0, sizeof(self.child))
        memset(self.vstates, 0, sizeof(self.vstates))
        if roots is None:
            memcpy(self.rootset, self.eng.roots, sizeof(self.rootset))
        else:
            memset(self.rootset, 0, sizeof(self.rootset))
            for k in range(self.nw):
                self.rootset[k] = <uint64_t>((roots >> (64 * k)) & 0xFFFFFFFFFFFFFFFF)
        return 0

    @property
    def masked(self):
        return self._masked

    @property
    def kinds(self):
        cdef int k
        return {self.eng._slot_names[k]: self.counts[k]
                for k in range(self.eng.ntypes + self.eng.nsel) if self.counts[k]}

    # ------------------------------------------------------------------ driver

    def feed(self, data):
        cdef bytes b = data if type(data) is bytes else bytes(data)
        if self.closed:
            raise RedactionError("feed after close", "syntax")
        self.out.n = 0
        self._run(<const unsigned char*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        return PyBytes_FromStringAndSize(<char*>self.out.p, self.out.n)

    def close(self):
        if self.closed:
            return b""
        self.out.n = 0
        self._close()
        return PyBytes_FromStringAndSize(<char*>self.out.p, self.out.n)

    cdef int _close(self) except -1:
        self.cur = EMPTY
        self.run = 0 if self.skip < 0 else -1
        if self.tok == TK_NUMBER:
            self._number_end(EMPTY, 0)
        elif self.tok != TK_NONE:
            raise RedactionError("the JSON document ends inside a token", "truncated")
        if self.st != S_START and self.st != S_DONE:
            raise RedactionError("the JSON document is incomplete", "truncated")
        self.closed = True
        return 0

    cdef int _run(self, const unsigned char* s, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = 0, hold, cut
        self.cur = s
        self.run = 0 if self.skip < 0 else -1
        while i < n:
            if self.tok == TK_NONE:
                i = self._structure(s, n, i)
            elif self.tok == TK_STRING:
                i = self._string(s, n, i)
            elif self.tok == TK_NUMBER:
                i = self._number(s, n, i)
            else:
                i = self._literal(s, n, i)
        hold = n
        if self.tok != TK_NONE:
            hold = 0 if self.spanning else self.tokstart
            if self.tok == TK_STRING:
                if self.accum:
                    cut = hold if self.spanning else hold + 1
                    buf_put(&self.raw, s + cut, n - cut)
                    if self.key:
                        if self.raw.n > self.eng.max_token:
                            raise RedactionError(
                                f"a JSON member name is longer than {self.eng.max_token} bytes", "size")
                    elif self.vsel >= 0 and self.raw.n > self.eng.window:
                        self.accum = False
                        self.vlong = True
                        self.raw.n = 0
            elif self.tok == TK_NUMBER:
                buf_put(&self.raw, s + hold, n - hold)
                if self.raw.n > self.eng.max_token:
                    raise RedactionError(f"a JSON number is longer than {self.eng.max_token} bytes", "size")
            self.spanning = True
        self._flush(hold)
        if self.tok == TK_STRING and not self.key and self.accum and self.vsel < 0 \
                and (self.longstr is not None or self.raw.n > self.eng.window):
            self._spill()
        return 0

    cdef inline int _flush(self, Py_ssize_t upto) except -1:
        if self.run >= 0 and upto > self.run:
            buf_put(&self.out, self.cur + self.run, upto - self.run)
            self.run = upto
        return 0

    cdef inline int _replace_start(self) except -1:
        """Flush the verbatim run up to the current token; its replacement follows."""
        self._flush(0 if self.spanning else self.tokstart)
        return 0

    cdef inline void _replace_end(self, Py_ssize_t after) noexcept:
        if self.skip < 0:
            self.run = after

    cdef int _count(self, int slot, Py_ssize_t n) except -1:
        self._masked += n
        self.counts[slot] += n
        return 0

    cdef int _add_counts(self, JsonRedactor other) except -1:
        cdef int k
        for k in range(self.eng.ntypes + self.eng.nsel):
            self.counts[k] += other.counts[k]
        self._masked += other._masked
        return 0

    cdef int _add_py_counts(self, Py_ssize_t masked, dict kinds) except -1:
        self._masked += masked
        for name, v in kinds.items():
            self.counts[<int>self.eng._slots[name]] += v
        return 0

    cdef int _put_mask(self, str kind, value) except -1:
        """The mask for `kind` as a JSON string (value: the masked text or None)."""
        buf_byte(&self.out, 34)
        buf_bytes(&self.out, escape(self.eng.plan.mask.render(kind, value)).encode("utf-8"))
        buf_byte(&self.out, 34)
        return 0

    cdef int _field_mask(self, value) except -1:
        cdef int sel = self.vsel
        if self.eng.simple:
            buf_byte(&self.out, 34)
            buf_bytes(&self.out, self.eng._field_mask)
            buf_byte(&self.out, 34)
        elif value is not None and self.eng.plan.mask.is_mask(value):
            buf_byte(&self.out, 34)
            buf_bytes(&self.out, escape(value).encode("utf-8"))
            buf_byte(&self.out, 34)
        else:
            self._put_mask(_pii.FIELD, value)
        self._count(self.eng.ntypes + sel, 1)
        return 0

    # ------------------------------------------------------------------ structure

    cdef Py_ssize_t _structure(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t i) except -1:
        cdef unsigned char c
        cdef int st
        while i < n:
            c = s[i]
            if c == 32 or c == 10 or c == 13 or c == 9:
                i += 1
                continue
            st = self.st
            if st == S_AFTER:
                if c == 44:
                    self.st = S_KEY if self.ckind[self.depth - 1] == OBJ else S_VALUE
                    i += 1
                    continue
                if (c == 125 and self.ckind[self.depth - 1] == OBJ) or (c == 93 and self.ckind[self.depth - 1] == ARR):
                    self._close_container(i)
                    i += 1
                    continue
                raise RedactionError(f"expected ',' or a closing bracket, got {chr(c)!r}")
            if st == S_KEY or st == S_KEY_OR_END:
                if c == 34:
                    self.tok = TK_STRING
                    self.key = True
                    self.accum = self.skip < 0
                    self.vlong = False
                    self.spanning = False
                    self.tokstart = i
                    self.esc = self.u8 = self.unit = self.sflags = 0
                    i = self._string(s, n, i + 1)
                    if self.tok != TK_NONE:
                        return i
                    continue
                if c == 125 and st == S_KEY_OR_END:
                    self._close_container(i)
                    i += 1
                    continue
                raise RedactionError(f"expected a member name, got {chr(c)!r}")
            if st == S_COLON:
                if c != 58:
                    raise RedactionError(f"expected ':', got {chr(c)!r}")
                self.st = S_VALUE
                i += 1
                continue
            if st == S_DONE:
                raise RedactionError("data after the JSON document")
            if c == 93 and st == S_VALUE_OR_END:
                self._close_container(i)
                i += 1
                continue
            i = self._begin_value(s, n, i)
            if self.tok == TK_STRING:
                i = self._string(s, n, i)
            elif self.tok == TK_NUMBER:
                i = self._number(s, n, i)
            elif self.tok == TK_LITERAL:
                i = self._literal(s, n, i)
            if self.tok != TK_NONE:
                return i
        return i

    cdef Py_ssize_t _begin_value(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t i) except -1:
        cdef unsigned char c = s[i]
        cdef bint skipping = self.skip >= 0
        cdef int sel = -1
        cdef uint64_t* states = self.vstates
        cdef Py_ssize_t idx
        cdef Engine e = self.eng
        if e.nstates == 0:
            pass  # vstates stays all zero
        elif skipping:
            memset(states, 0, self.nw * sizeof(uint64_t))
        elif self.depth == 0:
            memcpy(states, self.rootset, self.nw * sizeof(uint64_t))
        elif self.ckind[self.depth - 1] == ARR:
            idx = self.cindex[self.depth - 1]
            self.cindex[self.depth - 1] = idx + 1
            if any_bits(self.cstates + (self.depth - 1) * NWMAX, self.nw):
                e.child_states(self.cstates + (self.depth - 1) * NWMAX, NULL, 0, idx, states)
            else:
                memset(states, 0, self.nw * sizeof(uint64_t))
        else:
            memcpy(states, self.child, self.nw * sizeof(uint64_t))
        if not skipping and e.nstates and any_bits(states, self.nw):
            sel = e.accepted(states)
        if c == 123 or c == 91:
            if self.depth0 + self.depth + 1 > e.max_depth:
                raise RedactionError(f"JSON nested deeper than {e.max_depth} levels", "depth")
            if sel >= 0:
                self._flush(i)
                self.vsel = sel
                self._field_mask(None)
                self.vsel = -1
                self.skip = self.depth
                self.run = -1
            self.ckind[self.depth] = OBJ if c == 123 else ARR
            memcpy(self.cstates + self.depth * NWMAX, states, self.nw * sizeof(uint64_t))
            self.cindex[self.depth] = 0
            self.depth += 1
            self.st = S_KEY_OR_END if c == 123 else S_VALUE_OR_END
            return i + 1
        self.vsel = sel
        self.spanning = False
        self.tokstart = i
        if c == 34:
            self.tok = TK_STRING
            self.key = False
            self.accum = not skipping and (sel < 0 or not e.simple)
            self.vlong = False
            self.esc = self.u8 = self.unit = self.sflags = 0
            return i + 1
        if c == 45 or 48 <= c <= 57:
            self.tok = TK_NUMBER
            return i
        if c == 116:
            self.lit = "true"
            self.litlen = 4
        elif c == 102:
            self.lit = "false"
            self.litlen = 5
        elif c == 110:
            self.lit = "null"
            self.litlen = 4
        else:
            raise RedactionError(f"expected a JSON value, got {chr(c)!r}")
        self.tok = TK_LITERAL
        self.litpos = 0
        return i

    cdef int _close_container(self, Py_ssize_t i) except -1:
        self.depth -= 1
        if self.skip >= 0 and self.skip == self.depth:
            self.skip = -1
            self.run = i + 1
        self._value_done()
        return 0

    cdef inline void _value_done(self) noexcept:
        self.vsel = -1
        self.st = S_AFTER if self.depth else S_DONE

    # ------------------------------------------------------------------ strings

    cdef Py_ssize_t _string(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t i) except -1:
        cdef int esc = self.esc, u8 = self.u8, unit = self.unit, flags = self.sflags
        cdef unsigned char c
        cdef uint64_t m
        while i < n:
            if esc == 0 and u8 == 0:
                while i + 8 <= n:
                    m = special8(s + i)
                    if m:
                        i += __builtin_ctzll(m) >> 3
                        break
                    i += 8
                else:
                    while i < n and STRPLAIN[s[i]]:
                        i += 1
                if i >= n:
                    break
                c = s[i]
                if c == 34:
                    self.esc = self.u8 = self.unit = 0
                    self.sflags = flags
                    self._string_end(s, i)
                    return i + 1
                if c == 92:
                    flags |= SF_ESC
                    # whole escapes inside the chunk skip the state machine
                    if i + 1 < n and SIMPLE_ESC[s[i + 1]]:
                        i += 2
                        continue
                    if i + 5 < n and s[i + 1] == 117 and HEXV[s[i + 2]] and HEXV[s[i + 3]] \
                            and HEXV[s[i + 4]] and HEXV[s[i + 5]]:
                        i += 6
                        continue
                    esc = 1
                    unit = 1
                elif c < 0x20:
                    raise RedactionError("control character in a JSON string")
                else:
                    flags |= SF_WIDE
                    unit = 1
                    if 0xC2 <= c <= 0xDF:
                        u8 = 1
                        self.u8lo = 0x80
                        self.u8hi = 0xBF
                    elif c == 0xE0:
                        u8 = 2
                        self.u8lo = 0xA0
                        self.u8hi = 0xBF
                    elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
                        u8 = 2
                        self.u8lo = 0x80
                        self.u8hi = 0xBF
                    elif c == 0xED:
                        u8 = 2
                        self.u8lo = 0x80
                        self.u8hi = 0x9F
                    elif c == 0xF0:
                        u8 = 3
                        self.u8lo = 0x90
                        self.u8hi = 0xBF
                    elif 0xF1 <= c <= 0xF3:
                        u8 = 3
                        self.u8lo = 0x80
                        self.u8hi = 0xBF
                    elif c == 0xF4:
                        u8 = 3
                        self.u8lo = 0x80
                        self.u8hi = 0x8F
                    else:
                        raise RedactionError("invalid UTF-8 in a JSON string")
                i += 1
                continue
            c = s[i]
            if esc == 1:
                if c == 117:
                    esc = 5
                elif c == 34 or c == 92 or c == 47 or c == 98 or c == 102 or c == 110 or c == 114 or c == 116:
                    esc = 0
                else:
                    raise RedactionError("invalid escape in a JSON string")
            elif esc:
                if HEXV[c] == 0:
                    raise RedactionError("invalid \\u escape in a JSON string")
                esc = esc - 1 if esc > 2 else 0
            else:
                if c < self.u8lo or c > self.u8hi:
                    raise RedactionError("invalid UTF-8 in a JSON string")
                self.u8lo = 0x80
                self.u8hi = 0xBF
                u8 -= 1
            unit = unit + 1 if (esc or u8) else 0
            i += 1
        self.esc = esc
        self.u8 = u8
        self.unit = unit
        self.sflags = flags
        return i

    cdef int _spill(self) except -1:
        cdef Py_ssize_t cut = self.raw.n - self.unit
        piece = PyBytes_FromStringAndSize(<char*>self.raw.p, cut)
        memmove(self.raw.p, self.raw.p + cut, self.raw.n - cut)
        self.raw.n -= cut
        if self.longstr is None:
            self.longstr = LongString(self.eng, self.depth0 + self.depth + 1, self._inner_roots())
        buf_bytes(&self.out, self.longstr.feed(piece))
        return 0

    cdef object _inner_roots(self):
        cdef uint64_t r[NWMAX]
        cdef int k
        for k in range(NWMAX):
            r[k] = self.eng.roots[k] | (self.vstates[k] & ~self.eng.accept[k])
        return self.eng.states_int(r)

    cdef int _string_end(self, const unsigned char* s, Py_ssize_t j) except -1:
        cdef const unsigned char* content
        cdef Py_ssize_t clen, k
        cdef Engine e = self.eng
        self.tok = TK_NONE
        self.tokend = j + 1
        if self.spanning:
            if self.accum:
                buf_put(&self.raw, s, j)
            content = self.raw.p
            clen = self.raw.n
        else:
            content = s + self.tokstart + 1
            clen = j - self.tokstart - 1
            if self.sflags == 0 and self.skip < 0 and self.vsel < 0 and clen <= e.window and not e.has_custom:
                # the common case: a plain ASCII string inside this chunk; unless it opens
                # like JSON or holds a trigger byte it stays part of the verbatim run
                if self.key:
                    self.st = S_COLON
                    if e.nstates:
                        if any_bits(self.cstates + (self.depth - 1) * NWMAX, self.nw):
                            e.child_states(self.cstates + (self.depth - 1) * NWMAX, content, clen, -1, self.child)
                        else:
                            memset(self.child, 0, self.nw * sizeof(uint64_t))
                elif clen and (content[0] == 123 or content[0] == 91 or content[0] <= 32):
                    self._short_value(content, clen)
                    self._value_done()
                    return 0
                if e.enabled:
                    k = 0
                    while k < clen and not TRIG[content[k]]:
                        k += 1
                    if k < clen:
                        self._text_value(content, clen, content, clen, 0)
                if not self.key:
                    self._value_done()
                return 0
        if self.key:
            self.st = S_COLON
            if self.skip < 0:
                if clen > e.max_token:
                    raise RedactionError(f"a JSON member name is longer than {e.max_token} bytes", "size")
                self._key_end(content, clen)
            self.raw.n = 0
            return 0
        if self.longstr is not None:
            ls = self.longstr
            self.longstr = None
            piece = PyBytes_FromStringAndSize(<char*>content, clen)
            out = ls.feed(piece) + ls.close()
            self._replace_start()
            buf_bytes(&self.out, out)
            self._replace_end(j + 1)
            self._add_py_counts(ls.masked, ls.kinds)
        elif self.skip >= 0:
            pass
        elif self.vsel >= 0:
            value = None
            if not e.simple and not self.vlong and clen <= e.window:
                value = unescape(PyBytes_FromStringAndSize(<char*>content, clen))
            self._replace_start()
            self._field_mask(value)
            self._replace_end(j + 1)
        elif clen > e.window:
            ls = LongString(e, self.depth0 + self.depth + 1, self._inner_roots())
            out = ls.feed(PyBytes_FromStringAndSize(<char*>content, clen)) + ls.close()
            self._replace_start()
            buf_bytes(&self.out, out)
            self._replace_end(j + 1)
            self._add_py_counts(ls.masked, ls.kinds)
        else:
            self._short_value(content, clen)
        self.raw.n = 0
        self._value_done()
        return 0

    cdef int _verbatim(self, const unsigned char* content, Py_ssize_t clen) except -1:
        """The string is unchanged: inside this chunk it is already part of the run."""
        if self.spanning:
            self._flush(0)
            buf_byte(&self.out, 34)
            buf_put(&self.out, content, clen)
            buf_byte(&self.out, 34)
            self._replace_end(self.tokend)
        return 0

    cdef int _key_end(self, const unsigned char* content, Py_ssize_t clen) except -1:
        cdef const unsigned char* u = content
        cdef Py_ssize_t ulen = clen
        cdef int wide = self.sflags & SF_WIDE
        cdef Engine e = self.eng
        if self.sflags & SF_ESC:
            wide = unescape_utf8(content, clen, &self.sc)
            u = self.sc.p
            ulen = self.sc.n
        if e.nstates and any_bits(self.cstates + (self.depth - 1) * NWMAX, self.nw):
            e.child_states(self.cstates + (self.depth - 1) * NWMAX, u, ulen, -1, self.child)
        else:
            memset(self.child, 0, sizeof(self.child))
        return self._text_value(content, clen, u, ulen, wide)

    cdef int _short_value(self, const unsigned char* content, Py_ssize_t clen) except -1:
        cdef const unsigned char* u = content
        cdef Py_ssize_t ulen = clen, k
        cdef int wide = self.sflags & SF_WIDE
        if self.sflags & SF_ESC:
            wide = unescape_utf8(content, clen, &self.sc)
            u = self.sc.p
            ulen = self.sc.n
        k = 0
        while k < ulen and (u[k] == 32 or u[k] == 9 or u[k] == 10 or u[k] == 13):
            k += 1
        if k < ulen and (u[k] == 123 or u[k] == 91):
            if self._inner_json(content, clen, u, ulen):
                return 0
        return self._text_value(content, clen, u, ulen, wide)

    cdef int _inner_json(self, const unsigned char* content, Py_ssize_t clen,
                         const unsigned char* u, Py_ssize_t ulen) except -1:
        """1 if the string parsed as JSON (output written), 0 to treat it as text."""
        cdef JsonRedactor inner = self.inner
        roots = self._inner_roots()
        if inner is None:
            inner = self.inner = JsonRedactor(self.eng, self.depth0 + self.depth + 1, roots)
        else:
            inner.reset(self.depth0 + self.depth + 1, roots)
        try:
            inner._run(u, ulen)
            inner._close()
        except RedactionError as exc:
            if exc.kind in FATAL:
                raise
            return 0
        if inner._masked == 0:
            self._verbatim(content, clen)
            return 1
        self._replace_start()
        buf_byte(&self.out, 34)
        put_escaped_bytes(&self.out, inner.out.p, inner.out.n)
        buf_byte(&self.out, 34)
        self._replace_end(self.tokend)
        self._add_counts(inner)
        return 1

    cdef int _text_value(self, const unsigned char* content, Py_ssize_t clen,
                         const unsigned char* u, Py_ssize_t ulen, int wide) except -1:
        """Detectors over a key or string value; writes the masked string or keeps it."""
        cdef Engine e = self.eng
        cdef Py_ssize_t n = ulen, k
        cdef int passes
        cdef UBuf* cur
        cdef UBuf* nxt
        cdef UBuf* tmp
        if not e.detecting or ulen == 0:
            return self._verbatim(content, clen)
        if wide:
            if self.ucap < ulen:
                free(self.ub)
                self.ub = <u4*>malloc(ulen * sizeof(u4))
                if self.ub == NULL:
                    self.ucap = 0
                    raise MemoryError()
                self.ucap = ulen
            n = decode_ucs4(u, ulen, self.ub)
        self.w.nsp = 0
        if e.enabled:
            if wide:
                detect(<const u4*>self.ub, n, e.enabled, 0, False, &self.w)
            else:
                k = 0
                while k < n and not TRIG[u[k]]:
                    k += 1
                if k < n:
                    detect(u, n, e.enabled, 0, False, &self.w)
        if e.has_custom:
            self._custom_spans(self.ub if wide else NULL, u, n)
        if self.w.nsp == 0:
            return self._verbatim(content, clen)
        # mask, then detect again on the masked text until nothing new (redact_py.fixpoint)
        cur = &self.fa
        nxt = &self.fb
        if wide:
            self._apply(<const u4*>self.ub, n, cur)
        else:
            self._apply(u, n, cur)
        for passes in range(MAX_PASSES - 1):
            self.w.nsp = 0
            if e.enabled:
                detect(<const u4*>cur.p, cur.n, e.enabled, 0, False, &self.w)
            if e.has_custom:
                self._custom_spans(cur.p, NULL, cur.n)
            if self.w.nsp == 0:
                break
            self._apply(<const u4*>cur.p, cur.n, nxt)
            tmp = cur
            cur = nxt
            nxt = tmp
        self._replace_start()
        buf_byte(&self.out, 34)
        put_escaped_ucs4(&self.out, cur.p, cur.n)
        buf_byte(&self.out, 34)
        self._replace_end(self.tokend)
        return 0

    cdef int _custom_spans(self, const u4* s32, const unsigned char* s8, Py_ssize_t n) except -1:
        cdef Py_ssize_t k
        if s32 != NULL:
            text = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s32, n)
        else:
            text = PyUnicode_DecodeASCII(<const char*>s8, n, NULL)
        builtin = [(self.w.sp[3 * k], self.w.sp[3 * k + 1], self.w.sp[3 * k + 2]) for k in range(self.w.nsp)]
        spans = _pii.merge(builtin, _pii.custom_spans(self.eng._custom, text, 0, len(_pii.TYPES)))
        self.w.nsp = 0
        for a, b, t in spans:
            add_span(&self.w, a, b, t)
        return 0

    cdef int _apply(self, const CH* s, Py_ssize_t n, UBuf* out) except -1:
        """s with the spans of self.w replaced by their masks, as code points, counted."""
        cdef Py_ssize_t pos = 0, k, a, b, p
        cdef int t
        cdef Engine e = self.eng
        cdef bytes m
        out.n = 0
        for k in range(self.w.nsp):
            a = self.w.sp[3 * k]
            b = self.w.sp[3 * k + 1]
            t = <int>self.w.sp[3 * k + 2]
            ubuf_room(out, a - pos)
            for p in range(pos, a):
                out.p[out.n] = s[p]
                out.n += 1
            if e.simple:
                m = <bytes>e._masks32[t]
            else:
                if CH is u1:
                    value = PyUnicode_DecodeASCII(<const char*>(s + a), b - a, NULL)
                elif CH is u2:
                    value = PyUnicode_FromKindAndData(PyUnicode_2BYTE_KIND, s + a, b - a)
                else:
                    value = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, s + a, b - a)
                m = e.plan.mask.render(e.plan.type_names[t], value).encode("utf-32-le", "surrogatepass")
            ubuf_room(out, PyBytes_GET_SIZE(m) // 4)
            memcpy(out.p + out.n, PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m))
            out.n += PyBytes_GET_SIZE(m) // 4
            self._count(t, 1)
            pos = b
        ubuf_room(out, n - pos)
        for p in range(pos, n):
            out.p[out.n] = s[p]
            out.n += 1
        return 0

    # ------------------------------------------------------------------ numbers and literals

    cdef Py_ssize_t _number(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t i) except -1:
        while i < n and NUMCH[s[i]]:
            i += 1
        if i < n:
            self._number_end(s, i)
        return i

    cdef int _number_end(self, const unsigned char* s, Py_ssize_t j) except -1:
        cdef const unsigned char* p
        cdef Py_ssize_t L, k
        cdef Engine e = self.eng
        cdef int d[19]
        cdef bint digits = False
        self.tok = TK_NONE
        if self.spanning:
            buf_put(&self.raw, s, j)
            p = self.raw.p
            L = self.raw.n
        else:
            p = s + self.tokstart
            L = j - self.tokstart
        if L > e.max_token:
            raise RedactionError(f"a JSON number is longer than {e.max_token} bytes", "size")
        if not valid_number(p, L):
            raise RedactionError("invalid JSON number")
        if self.skip < 0:
            if self.vsel >= 0:
                value = PyBytes_FromStringAndSize(<char*>p, L).decode("ascii")
                self._replace_start()
                self._field_mask(value)
                self._replace_end(j)
            else:
                if (e.enabled & CARD) != 0 and 13 <= L <= 19:
                    digits = True
                    for k in range(L):
                        if not (48 <= p[k] <= 57):
                            digits = False
                            break
                        d[k] = p[k] - 48
                if digits and card_ok(d, <int>L):
                    self._replace_start()
                    if e.simple:
                        buf_byte(&self.out, 34)
                        buf_bytes(&self.out, <bytes>e._masks[T_CARD])
                        buf_byte(&self.out, 34)
                    else:
                        self._put_mask("credit_card", PyBytes_FromStringAndSize(<char*>p, L).decode("ascii"))
                    self._count(T_CARD, 1)
                    self._replace_end(j)
                elif self.spanning:
                    self._flush(0)
                    buf_put(&self.out, p, L)
                    self._replace_end(j)
        self.raw.n = 0
        self._value_done()
        return 0

    cdef Py_ssize_t _literal(self, const unsigned char* s, Py_ssize_t n, Py_ssize_t i) except -1:
        while i < n and self.litpos < self.litlen:
            if s[i] != <unsigned char>self.lit[self.litpos]:
                raise RedactionError("invalid JSON literal")
            self.litpos += 1
            i += 1
        if self.litpos == self.litlen:
            self.tok = TK_NONE
            if self.skip < 0:
                if self.vsel >= 0:
                    self._replace_start()
                    self._field_mask(self.lit[:self.litlen].decode("ascii"))
                    self._replace_end(i)
                elif self.spanning:
                    self._flush(0)
                    buf_put(&self.out, <const unsigned char*>self.lit, self.litlen)
                    self._replace_end(i)
            self._value_done()
        return i
