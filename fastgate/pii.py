"""PII detectors: one definition of what fastgate masks, shared by both redaction cores.

`detect(text, enabled)` is the reference scanner. The compiled core (`_core/redact.pyx`)
implements the same algorithm in C loops, reads its byte tables from this module, and is
held to it by the parity tests: change a rule here, rebuild, and the tests say whether the
C side still agrees. The scanner is hand-written rather than a regex alternation so that
the two implementations can follow the same steps and give the same spans.

One left-to-right pass. At each position a cheap class decides whether anything can start
there; matches never overlap and the scan resumes after each one. What is recognised
(documented subsets, chosen for precision on tool results; threats.md §5):

* email: local part `[A-Za-z0-9._%+-]{1,64}` (leading dots dropped), `@` (also `%40` and
  full-width `＠`), two or more labels `[A-Za-z0-9-]{1,63}` not starting or ending with `-`
  up to the last alphabetic label of 2-24 letters (the TLD) that is not a file extension
  (`logo@2x.png` is not an address), domain at most 253 characters. Quoted local parts, IP literals and IDNs are
  out of the subset.
* digit chains: digits (ASCII or full-width) in groups joined by runs of up to three
  separators (space, `-`, `.`, NBSP, ZWSP and other invisible or dash-like code points,
  parentheses). A chain touching a letter, digit or `_` is part of an identifier and is
  ignored. Inside a chain, from the left, the first of these that fits wins:
  - credit_card: the longest run of whole groups with 13-19 digits whose issuer prefix
    and length fit a card network (Visa 16/19, Mastercard incl. 2-series, Amex 15,
    Discover, Diners 14-19, JCB, UnionPay, Maestro 16-19, Mir) and whose Luhn check
    passes. 13-digit Visa and short Maestro numbers are no longer issued and collide
    with EAN-13 barcodes and account numbers, so they are not matched;
  - us_ssn / tax_id: groups of 3-2-4 digits joined by single separators, SSA rules (area
    not 000/666, group not 00, serial not 0000); area 9xx is an ITIN when the group is
    50-65, 70-88, 90-92 or 94-99 (masked as `tax_id`), otherwise nothing. Bare 9-digit
    numbers are not masked (use a selector for such fields);
  - phone: `+` and 8-15 digits (E.164), or `00` and 8-15 more; North American 3-3-4
    (optionally after a `1`) with area and exchange starting 2-9; or, at the start of a
    chain, a trunk-0 national number of 2-5 groups of 2-8 digits, 10-11 digits in all. Ungrouped national numbers
    are not masked (order ids look the same).
* iban: country code with a known length, two check digits, uppercase BBAN, optionally in
  groups of four, ISO 7064 mod-97 == 1.
* secret_token: AWS access key ids (`AKIA`, `ASIA`, ... + 16), JWT/JWE (`eyJ...` parts),
  the token after `Bearer ` (8+ characters with a letter and a digit), `sk-` (20+ with a
  digit), `sk_/rk_live_/test_`, GitHub `ghp_/gho_/ghu_/ghs_/ghr_/github_pat_`, Slack
  `xox?-`, and PEM private key blocks from `-----BEGIN ... PRIVATE KEY-----` to the END
  line (to the end of the text when there is no END line: fail closed).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import string
from collections.abc import Iterable

EMAIL, CARD, SSN, PHONE, IBAN, SECRET = 1, 2, 4, 8, 16, 32
DETECTORS: dict[str, int] = {"email": EMAIL, "credit_card": CARD, "us_ssn": SSN, "phone": PHONE,
                             "iban": IBAN, "secret_token": SECRET}
# Mask types, in the order of their type codes; custom detectors follow at len(TYPES) + i.
TYPES = ("email", "credit_card", "us_ssn", "tax_id", "phone", "iban", "secret_token")
T_EMAIL, T_CARD, T_SSN, T_TAX_ID, T_PHONE, T_IBAN, T_SECRET = range(7)
FIELD = "field"  # the {type} of a value masked because a selector named it

Span = tuple[int, int, int]  # (start, end, type code), code-point offsets


def enabled_bits(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r} (known: {', '.join(DETECTORS)})")
        bits |= DETECTORS[name]
    return bits


# --------------------------------------------------------------------------- character tables
# ASCII flags (the compiled core copies these tables at import).
F_DIGIT, F_UPPER, F_WORD, F_LOCAL, F_LABEL, F_B64URL, F_BEARER, F_ALNUM = 1, 2, 4, 8, 16, 32, 64, 128


def _ascii_flags() -> bytes:
    out = bytearray(128)
    for c in range(128):
        ch = chr(c)
        f = 0
        if ch.isdigit():
            f |= F_DIGIT
        if "A" <= ch <= "Z":
            f |= F_UPPER
        if ch.isalnum():
            f |= F_ALNUM
        if ch.isalnum() or ch == "_":
            f |= F_WORD
        if ch.isalnum() or ch in "._%+-":
            f |= F_LOCAL
        if ch.isalnum() or ch == "-":
            f |= F_LABEL
        if ch.isalnum() or ch in "_-":
            f |= F_B64URL
        if ch.isalnum() or ch in "._~+/=-":
            f |= F_BEARER
        out[c] = f
    return bytes(out)


ASCII_FLAGS = _ascii_flags()

# Dispatch: what may start at a code point.
K_NONE, K_DIGIT, K_OPEN, K_AT, K_PCT, K_UPPER, K_LOWER, K_DASH = range(8)


def _ascii_kinds() -> bytes:
    out = bytearray(128)
    for c in range(128):
        ch = chr(c)
        if ch.isdigit():
            out[c] = K_DIGIT
        elif ch in "+(":
            out[c] = K_OPEN
        elif ch == "@":
            out[c] = K_AT
        elif ch == "%":
            out[c] = K_PCT
        elif "A" <= ch <= "Z":
            out[c] = K_UPPER
        elif ch in "esrgxb":
            out[c] = K_LOWER
        elif ch == "-":
            out[c] = K_DASH
    return bytes(out)


ASCII_KINDS = _ascii_kinds()
FULLWIDTH_ZERO = 0xFF10
FULLWIDTH_AT = 0xFF20
# Code points that may join digit groups: ASCII space, '-', '.', parentheses, and the
# invisible, space-like and dash-like code points used to defeat naive scanners.
SEPARATORS = frozenset([
    0x20, 0x2D, 0x2E, 0x28, 0x29,
    0xA0, 0xAD, 0x2007, 0x2009, 0x200A, 0x202F, 0x3000,          # spaces, soft hyphen
    0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF,                        # zero-width
    0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2212, 0xFE63, 0xFF0D,  # dashes, minus
    0xFF0E,                                                        # full-width full stop
])
MAX_SEP_RUN = 3
# File extensions that look like TLDs after an '@' (`icon@2x.png`, `pkg@1.2.tgz`).
FILE_EXTENSIONS = frozenset(["png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "avif", "heic", "pdf", "css", "js", "mjs", "cjs", "ts", "tsx", "jsx", "json", "xml", "html", "htm", "txt", "md", "csv", "zip", "gz", "tgz", "tar", "bz", "xz", "rar", "mp", "mp3", "mp4", "wav", "mov", "webm", "ogg", "woff", "woff2", "ttf", "otf", "eot", "map", "py", "rb", "go", "rs", "java", "kt", "c", "h", "cpp", "hpp", "cs", "sh", "yaml", "yml", "toml", "lock", "log", "ini", "cfg", "conf", "bak", "tmp", "exe", "dll", "so", "dylib", "wasm"])
AWS_PREFIXES = frozenset(["AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA",
                          "AROA", "APKA"])
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25,
    "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
PEM_BEGIN = "-----BEGIN "
PEM_END = "-----END "
PEM_DASHES = "-----"
PEM_LABEL_MAX = 64

# Every built-in detector needs one of these (or a non-ASCII code point) in the text:
# digits (chains, IBAN, Bearer tokens), '@'/'%' (email), '-' (PEM, sk-, xox?-), '_'
# (sk_live_, ghp_, github_pat_), 'A' (AWS key ids), 'J' (eyJ). The compiled core skips
# strings without any; a test checks the claim against detect().
TRIGGERS = frozenset("0123456789@%-_AJ")

# Minimum lengths of the secret token bodies.
JWT_PART_MIN = 10       # "eyJ" + 7: the shortest real header is longer
BEARER_MIN = 8
SK_DASH_MIN = 20
SK_LIVE_MIN = 16
GH_MIN = 30
GH_PAT_MIN = 22
SLACK_MIN = 10


# --------------------------------------------------------------------------- validators

def is_digit(c: int) -> bool:
    return 48 <= c <= 57 or FULLWIDTH_ZERO <= c <= FULLWIDTH_ZERO + 9


def digit_value(c: int) -> int:
    return c - 48 if c < 128 else c - FULLWIDTH_ZERO


def _flag(c: int, f: int) -> bool:
    return c < 128 and bool(ASCII_FLAGS[c] & f)


def is_word(c: int) -> bool:
    """Part of an identifier: a chain or token touching one of these is not PII."""
    return _flag(c, F_WORD) or FULLWIDTH_ZERO <= c <= FULLWIDTH_ZERO + 9


def is_tight(c: int) -> bool:
    """Before a secret or IBAN: a word character or '-' means we are inside a longer token."""
    return is_word(c) or c == 45


def luhn(digits: list[int]) -> bool:
    total = 0
    for k, d in enumerate(reversed(digits)):
        if k & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_prefix_ok(d: list[int]) -> bool:
    """Issuer prefix and length fit a card network (ISO/IEC 7812 IIN ranges in use)."""
    n = len(d)
    if not 13 <= n <= 19:
        return False
    p1 = d[0]
    p2 = d[0] * 10 + d[1]
    p3 = p2 * 10 + d[2]
    p4 = p3 * 10 + d[3]
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
        if p2 in (34, 37):
            return n == 15
        if 300 <= p3 <= 305 or p2 in (36, 38, 39) or p4 == 3095:
            return n >= 14
        return 3528 <= p4 <= 3589 and n >= 16
    if p1 == 6:
        return p2 in (60, 62, 63, 64, 65, 67) and n >= 16
    return False


def card_ok(d: list[int]) -> bool:
    return card_prefix_ok(d) and luhn(d)


def ssn_type(d: list[int]) -> int:
    """T_SSN, T_TAX_ID or -1 for nine digits AAA GG SSSS."""
    area = d[0] * 100 + d[1] * 10 + d[2]
    group = d[3] * 10 + d[4]
    serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8]
    if group == 0 or serial == 0:
        return -1
    if area >= 900:
        if 50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or 94 <= group <= 99:
            return T_TAX_ID
        return -1
    if area == 0 or area == 666:
        return -1
    return T_SSN


def iban_ok(chars: list[int]) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10 over ASCII [A-Z0-9] code points."""
    rem = 0
    for c in chars[4:] + chars[:4]:
        if c <= 57:
            rem = (rem * 10 + (c - 48)) % 97
        else:
            rem = (rem * 100 + (c - 55)) % 97
    return rem == 1


# --------------------------------------------------------------------------- the scanner

_INTERESTING = re.compile("[0-9+(@%A-Zesrgxb\\-\uff10-\uff19\uff20]")


def _cps(s: str) -> list[int]:
    return list(memoryview(s.encode("utf-32-le", "surrogatepass")).cast("I"))


def detect(text: str, enabled: int, begin: int = 0, pem_open: bool = False) -> tuple[list[Span], bool]:
    """Spans of built-in PII in `text[begin:]`; `text[:begin]` is context only.

    `pem_open`: the text continues a private key block whose END line has not been seen.
    Returns (spans, open): sorted non-overlapping spans, and whether the text ended inside
    a private key block.
    """
    s = _cps(text)
    n = len(s)
    spans: list[Span] = []
    last = begin
    i = begin
    if pem_open:
        e = _pem_end(text, s, begin, n)
        if e < 0:
            return [(begin, n, T_SECRET)], True
        spans.append((begin, e, T_SECRET))
        i = last = e
    chains = enabled & (CARD | SSN | PHONE)
    while i < n:
        m = _INTERESTING.search(text, i)
        if m is None:
            break
        i = m.start()
        c = s[i]
        k = ASCII_KINDS[c] if c < 128 else (K_DIGIT if is_digit(c) else K_AT)
        prev = s[i - 1] if i > 0 else 32
        if k == K_DIGIT or k == K_OPEN:
            if not chains or is_word(prev) or (k == K_OPEN and not (i + 1 < n and is_digit(s[i + 1]))):
                i += 1
                continue
            i = _chain(s, i, n, enabled, spans)
            if spans:
                last = max(last, spans[-1][1])
            continue
        if k == K_AT or k == K_PCT:
            at_len = 1
            if k == K_PCT:
                if not (i + 2 < n and s[i + 1] == 52 and s[i + 2] == 48):  # "%40"
                    i += 1
                    continue
                at_len = 3
            em = _email(s, i, at_len, n, last) if enabled & EMAIL else None
            if em is None:
                i += 1
                continue
            spans.append(em)
            i = last = em[1]
            continue
        if k == K_DASH:
            if enabled & SECRET and _startswith(s, i, PEM_BEGIN):
                e2 = _pem_header(s, i, n)
                if e2 >= 0:
                    end = _pem_end(text, s, e2, n)
                    if end < 0:
                        spans.append((i, n, T_SECRET))
                        return spans, True
                    spans.append((i, end, T_SECRET))
                    i = last = end
                    continue
            i += 1
            continue
        # K_UPPER / K_LOWER: secrets and IBANs start a token.
        if is_tight(prev):
            i += 1
            continue
        sp = None
        if enabled & SECRET:
            sp = _secret(s, i, n)
        if sp is None and k == K_UPPER and enabled & IBAN:
            sp = _iban(s, i, n)
        if sp is None:
            i += 1
            continue
        spans.append(sp)
        i = last = sp[1]
    return spans, False


def _startswith(s: list[int], i: int, lit: str) -> bool:
    if i + len(lit) > len(s):
        return False
    for k, ch in enumerate(lit):
        if s[i + k] != ord(ch):
            return False
    return True


def _chain(s: list[int], i: int, n: int, enabled: int, spans: list[Span]) -> int:
    """Parse the digit chain at i, append the PII inside it, return where it ends."""
    plus = s[i] == 43
    j = i + 1 if s[i] in (43, 40) else i
    gs: list[int] = []
    ge: list[int] = []
    gap: list[int] = []  # after group x: 1 for one separator that is not a parenthesis, else 0
    while True:
        st = j
        while j < n and is_digit(s[j]):
            j += 1
        gs.append(st)
        ge.append(j)
        k = j
        run = 0
        simple = 1
        while k < n and run < MAX_SEP_RUN and s[k] in SEPARATORS:
            if s[k] in (40, 41):
                simple = 0
            k += 1
            run += 1
        if run and k < n and is_digit(s[k]):
            gap.append(simple if run == 1 else 0)
            j = k
            continue
        break
    end = j
    if end < n and is_word(s[end]):
        return end
    m = len(gs)
    gd = [ge[x] - gs[x] for x in range(m)]
    x = 0
    while x < m:
        e = -1
        t = -1
        if enabled & CARD:
            tot = 0
            y = x
            while y < m and tot + gd[y] <= 19:
                tot += gd[y]
                y += 1
            # groups x..y-1 hold tot <= 19 digits; try the longest first
            while y > x and tot >= 13:
                if card_ok(_digits(s, gs, ge, x, y)):
                    e, t = y - 1, T_CARD
                    break
                y -= 1
                tot -= gd[y]
        if e < 0 and enabled & SSN and x + 2 < m and gd[x] == 3 and gd[x + 1] == 2 and gd[x + 2] == 4 \
                and gap[x] and gap[x + 1]:
            t = ssn_type(_digits(s, gs, ge, x, x + 3))
            if t >= 0:
                e = x + 2
        if e < 0 and enabled & PHONE:
            e = _phone(s, gs, gd, x, m, plus)
            t = T_PHONE
        if e >= 0:
            spans.append((i if x == 0 else gs[x], ge[e], t))
            x = e + 1
        else:
            x += 1
    return end


def _digits(s: list[int], gs: list[int], ge: list[int], x: int, y: int) -> list[int]:
    out = []
    for g in range(x, y):
        for p in range(gs[g], ge[g]):
            out.append(digit_value(s[p]))
    return out


def _phone(s: list[int], gs: list[int], gd: list[int], x: int, m: int, plus: bool) -> int:
    """Index of the last group of a phone number starting at group x, or -1."""
    first = digit_value(s[gs[x]])
    if x == 0 and plus and first != 0:
        best = _span_digits(gd, 0, m, 0, 8, 15)
        if best >= 0:
            return best
    if x == 0 and first == 0 and gd[x] >= 2 and digit_value(s[gs[x] + 1]) == 0:
        best = _span_digits(gd, x, m, 2, 8, 15)  # 00 + 8..15
        if best >= 0:
            return best
    y = x
    if gd[y] == 1 and first == 1:
        y += 1
    if y + 2 < m and gd[y] == 3 and gd[y + 1] == 3 and gd[y + 2] == 4 \
            and digit_value(s[gs[y]]) >= 2 and digit_value(s[gs[y + 1]]) >= 2:
        return y + 2
    if x == 0 and first == 0 and gd[x] >= 2:  # mid-chain zeros are parts of longer numbers
        tot = 0
        best = -1
        y = x
        while y < m and y < x + 5 and 2 <= gd[y] <= 8:
            tot += gd[y]
            if tot > 11:
                break
            if tot >= 10 and y > x:
                best = y
            y += 1
        return best
    return -1


def _span_digits(gd: list[int], x: int, m: int, skip: int, lo: int, hi: int) -> int:
    """Longest run of groups from x holding lo..hi digits (after `skip` leading ones)."""
    tot = -skip
    best = -1
    for y in range(x, m):
        tot += gd[y]
        if tot > hi:
            break
        if tot >= lo:
            best = y
    return best


def _email(s: list[int], i: int, at_len: int, n: int, last: int) -> Span | None:
    j = i
    while j > last and _flag(s[j - 1], F_LOCAL):
        j -= 1
    while j < i and s[j] == 46:
        j += 1
    if not 1 <= i - j <= 64:
        return None
    d = i + at_len
    k = d
    ends: list[int] = []
    starts: list[int] = []
    while True:
        ls = k
        while k < n and _flag(s[k], F_LABEL):
            k += 1
        if k == ls or k - ls > 63 or s[ls] == 45 or s[k - 1] == 45:
            return None
        starts.append(ls)
        ends.append(k)
        # a label starting more than 253 characters in can never end a valid domain
        if k + 1 < n and s[k] == 46 and _flag(s[k + 1], F_LABEL) and k + 1 - d <= 253:
            k += 1
            continue
        break
    # The TLD is the last alphabetic label of 2-24 letters (`a@b.com.DE89` ends at `com`);
    # a file extension there means a file name, not an address.
    t = len(ends) - 1
    while t >= 1:
        tl, te = starts[t], ends[t]
        if 2 <= te - tl <= 24 and not any(_flag(s[p], F_DIGIT) or s[p] == 45 for p in range(tl, te)):
            if "".join(chr(c) for c in s[tl:te]).lower() in FILE_EXTENSIONS or te - d > 253:
                return None
            return (j, te, T_EMAIL)
        t -= 1
    return None


def _run(s: list[int], j: int, n: int, flag: int) -> int:
    while j < n and _flag(s[j], flag):
        j += 1
    return j


def _has(s: list[int], a: int, b: int, flag: int) -> bool:
    return any(_flag(s[p], flag) for p in range(a, b))


def _has_letter(s: list[int], a: int, b: int) -> bool:
    return any(_flag(s[p], F_ALNUM) and not _flag(s[p], F_DIGIT) for p in range(a, b))


def _secret(s: list[int], i: int, n: int) -> Span | None:
    c = s[i]
    if c == 66 or c == 98:  # B b: Bearer
        if _startswith(s, i, "Bearer") or _startswith(s, i, "bearer") or _startswith(s, i, "BEARER"):
            j = i + 6
            k = j
            while k < n and k - j < 8 and s[k] in (32, 9):
                k += 1
            if k > j:
                e = _run(s, k, n, F_BEARER)
                while e > k and s[e - 1] == 46:
                    e -= 1
                if e - k >= BEARER_MIN and _has(s, k, e, F_DIGIT) and _has_letter(s, k, e):
                    return (k, e, T_SECRET)
        return None
    if c == 101:  # e: JWT / JWE
        if not _startswith(s, i, "eyJ"):
            return None
        e1 = _run(s, i, n, F_B64URL)
        if e1 - i < JWT_PART_MIN or not (e1 < n and s[e1] == 46) or not _startswith(s, e1 + 1, "eyJ"):
            return None
        e2 = _run(s, e1 + 1, n, F_B64URL)
        if e2 - e1 - 1 < JWT_PART_MIN or not (e2 < n and s[e2] == 46):
            return None
        e = _run(s, e2 + 1, n, F_B64URL)
        parts = 3
        while parts < 5 and e + 1 < n and s[e] == 46 and _flag(s[e + 1], F_B64URL):
            e = _run(s, e + 1, n, F_B64URL)
            parts += 1
        return (i, e, T_SECRET)
    if c == 115 or c == 114:  # s r: sk-..., sk_live_..., rk_test_...
        if c == 115 and _startswith(s, i, "sk-"):
            e = _run(s, i + 3, n, F_B64URL)
            if e - i - 3 >= SK_DASH_MIN and _has(s, i + 3, e, F_DIGIT):
                return (i, e, T_SECRET)
            return None
        for lit in ("k_live_", "k_test_"):
            if _startswith(s, i + 1, lit):
                e = _run(s, i + 8, n, F_ALNUM)
                if e - i - 8 >= SK_LIVE_MIN:
                    return (i, e, T_SECRET)
        return None
    if c == 103:  # g: GitHub
        if _startswith(s, i, "github_pat_"):
            e = _run(s, i + 11, n, F_WORD)
            if e - i - 11 >= GH_PAT_MIN:
                return (i, e, T_SECRET)
            return None
        if i + 3 < n and s[i + 1] == 104 and s[i + 2] in (112, 111, 117, 115, 114) and s[i + 3] == 95:
            e = _run(s, i + 4, n, F_ALNUM)
            if e - i - 4 >= GH_MIN:
                return (i, e, T_SECRET)
        return None
    if c == 120:  # x: Slack
        if i + 4 < n and _startswith(s, i, "xox") and s[i + 3] in (98, 97, 112, 114, 115) and s[i + 4] == 45:
            e = _run(s, i + 5, n, F_LABEL)
            if e - i - 5 >= SLACK_MIN:
                return (i, e, T_SECRET)
        return None
    if c == 65 and i + 20 <= n and "".join(chr(x) for x in s[i:i + 4]) in AWS_PREFIXES:  # AWS key id
        for p in range(i + 4, i + 20):
            if not (_flag(s[p], F_UPPER) or _flag(s[p], F_DIGIT)):
                return None
        if i + 20 < n and is_word(s[i + 20]):
            return None
        return (i, i + 20, T_SECRET)
    return None


def _iban(s: list[int], i: int, n: int) -> Span | None:
    if i + 4 > n or not (_flag(s[i + 1], F_UPPER) and _flag(s[i + 2], F_DIGIT) and _flag(s[i + 3], F_DIGIT)):
        return None
    want = IBAN_LENGTHS.get(chr(s[i]) + chr(s[i + 1]))
    if want is None:
        return None
    chars: list[int] = []
    j = i
    while j < n and len(chars) < want:
        c = s[j]
        if _flag(c, F_UPPER) or _flag(c, F_DIGIT):
            chars.append(c)
            j += 1
        elif (c == 32 or c == 0xA0) and len(chars) % 4 == 0 and j + 1 < n \
                and (_flag(s[j + 1], F_UPPER) or _flag(s[j + 1], F_DIGIT)):
            j += 1
        else:
            break
    if len(chars) != want or (j < n and is_word(s[j])) or not iban_ok(chars):
        return None
    return (i, j, T_IBAN)


def _pem_header(s: list[int], i: int, n: int) -> int:
    """End of a `-----BEGIN <label>-----` line whose label names a private key, or -1."""
    j = i + len(PEM_BEGIN)
    k = j
    while k < n and k - j < PEM_LABEL_MAX and (_flag(s[k], F_UPPER) or _flag(s[k], F_DIGIT) or s[k] == 32):
        k += 1
    if not _startswith(s, k, PEM_DASHES):
        return -1
    if "PRIVATE KEY" not in "".join(chr(c) for c in s[j:k]):
        return -1
    return k + len(PEM_DASHES)


def _pem_end(text: str, s: list[int], i: int, n: int) -> int:
    """End of the first `-----END <label>-----` line at or after i, or -1."""
    e = text.find(PEM_END, i)
    if e < 0:
        return -1
    k = j = e + len(PEM_END)
    while k < n and k - j < PEM_LABEL_MAX and (_flag(s[k], F_UPPER) or _flag(s[k], F_DIGIT) or s[k] == 32):
        k += 1
    if _startswith(s, k, PEM_DASHES):
        k += len(PEM_DASHES)
    return k


# --------------------------------------------------------------------------- spans and masks

def merge(builtin: list[Span], extra: list[Span]) -> list[Span]:
    """Union of built-in and custom spans; overlapping spans fuse and keep the first type."""
    if not extra:
        return builtin
    ordered = sorted(builtin + extra, key=lambda sp: (sp[0], -sp[1]))
    out: list[Span] = []
    for sp in ordered:
        if out and sp[0] < out[-1][1]:
            if sp[1] > out[-1][1]:
                out[-1] = (out[-1][0], sp[1], out[-1][2])
        else:
            out.append(sp)
    return out


def custom_spans(patterns: list[re.Pattern[str]], text: str, begin: int, first_code: int) -> list[Span]:
    out: list[Span] = []
    for k, rx in enumerate(patterns):
        for m in rx.finditer(text, begin):
            if m.end() > m.start():
                out.append((m.start(), m.end(), first_code + k))
    return out


_PROCESS_KEY = os.urandom(32)
_DIGIT_TYPES = frozenset(["credit_card", "us_ssn", "tax_id", "phone", "iban"])
_FULLWIDTH_DIGITS = str.maketrans({FULLWIDTH_ZERO + k: str(k) for k in range(10)})


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.translate(_FULLWIDTH_DIGITS) if ch.isascii() and ch.isalnum())


class MaskFormat:
    """The configured mask: `{type}`, `{last4}` (last four letters/digits of the value) and
    `{hash}` (12 hex digits of HMAC-SHA256, for correlating equal values without revealing them).

    The hash key defaults to one random key per process: correlation holds within a process,
    never across restarts. Pass `hash_key` for stable tokens.
    """

    FIELDS = frozenset(["type", "last4", "hash"])

    def __init__(self, fmt: str, hash_key: bytes | None = None):
        if not isinstance(fmt, str):
            raise TypeError("mask must be a string")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None}
        except ValueError as exc:
            raise ValueError(f"invalid mask {fmt!r}: {exc}") from None
        unknown = names - self.FIELDS
        if unknown:
            raise ValueError(f"mask may use only {{type}}, {{last4}} and {{hash}}, not {sorted(unknown)}")
        try:
            fmt.format(type="x", last4="", hash="")
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"invalid mask {fmt!r}: {exc}") from None
        if any(ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF for ch in fmt):
            raise ValueError("mask must not contain control characters or lone surrogates")
        self.fmt = fmt
        self.key = hash_key if hash_key is not None else _PROCESS_KEY
        self.simple = names <= {"type"}
        self._cache: dict[str, str] = {}
        pattern = []
        for literal, name, _, _ in string.Formatter().parse(fmt):
            pattern.append(re.escape(literal))
            if name == "type":
                pattern.append(r"[A-Za-z0-9_.:-]+")
            elif name == "last4":
                pattern.append(r"[A-Za-z0-9]{0,4}")
            elif name == "hash":
                pattern.append(r"(?:[0-9a-f]{12})?")
        self._is_mask = re.compile("".join(pattern))

    def render(self, kind: str, value: str | None = None) -> str:
        """The mask for a value of `kind`; `value` None (a masked object or array) leaves
        {last4} and {hash} empty."""
        if self.simple:
            out = self._cache.get(kind)
            if out is None:
                out = self._cache[kind] = self.fmt.format(type=kind)
            return out
        if value is None:
            return self.fmt.format(type=kind, last4="", hash="")
        norm = _alnum(value).upper() if kind in _DIGIT_TYPES else value
        if kind == "email":
            norm = value.lower()
        digest = hmac.new(self.key, norm.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:12]
        return self.fmt.format(type=kind, last4=_alnum(value)[-4:], hash=digest)

    def is_mask(self, text: str) -> bool:
        """True when `text` is already one of our masks: keeps {hash}/{last4} masks idempotent."""
        return self._is_mask.fullmatch(text) is not None
