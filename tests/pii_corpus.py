"""A labelled, seeded corpus of realistic tool results with planted PII and look-alikes.

Every string leaf is built from segments, so we know exactly where each planted entity
sits (`Leaf.spans`: code-point offsets and type). Look-alikes (order ids, versions,
`logo@2x.png`, timestamps, UUIDs, ISBNs, invalid-Luhn numbers, invalid SSNs, bad IBAN
checksums, hashes, ...) are labelled too: a detector span that touches one is a false
positive. Documents are MCP `tools/call` results: the payload is serialized into
`result.content[0].text` and repeated as `result.structuredContent`.

`make_doc(rng, size, pii=True)` -> Doc; `corpus(seed, n, size)` -> list[Doc];
`planted_secrets(doc)` -> the planted PII strings (to check none survives redaction).
"""
from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

LOOKALIKE = "lookalike"
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + "234567"
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@dataclass
class Leaf:
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, type or LOOKALIKE)


@dataclass
class Doc:
    data: bytes
    payload: Any
    leaves: list[Leaf]


# --------------------------------------------------------------------------- PII generators

def luhn_digit(body: str) -> str:
    total = 0
    for k, ch in enumerate(reversed(body)):
        d = int(ch)
        if k % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random) -> str:
    brand = rng.choice(["visa", "visa", "mc", "mc2", "amex", "discover", "jcb", "diners", "unionpay", "visa19"])
    prefix, length = {
        "visa": ("4", 16), "visa19": ("4", 19), "mc": (str(rng.randint(51, 55)), 16),
        "mc2": (str(rng.randint(2221, 2720)), 16), "amex": (rng.choice(["34", "37"]), 15),
        "discover": (rng.choice(["6011", "65"]), 16), "jcb": (str(rng.randint(3528, 3589)), 16),
        "diners": (rng.choice(["36", "38"]), 14), "unionpay": ("62", rng.choice([16, 17, 18, 19])),
    }[brand]
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def format_card(rng: random.Random, number: str) -> str:
    style = rng.choice(["plain", "space", "space", "dash", "dot", "nbsp", "zwsp", "fullwidth", "thin"])
    groups = [number[i:i + 4] for i in range(0, len(number), 4)]
    if len(number) == 15:
        groups = [number[:4], number[4:10], number[10:]]
    if style == "plain":
        return number
    if style == "zwsp":
        return "\u200b".join(number)
    if style == "fullwidth":
        return "\u3000".join(groups).translate(FULLWIDTH)
    sep = {"space": " ", "dash": "-", "dot": ".", "nbsp": "\u00a0", "thin": "\u2009"}[style]
    return sep.join(groups)


def ssn(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.25:
        area = rng.randint(900, 999)
        group = rng.choice(list(range(50, 66)) + list(range(70, 89)) + [90, 91, 92] + list(range(94, 100)))
        kind = "tax_id"
    else:
        area = rng.choice([a for a in range(1, 900) if a != 666])
        group = rng.randint(1, 99)
        kind = "us_ssn"
    serial = rng.randint(1, 9999)
    sep = rng.choice(["-", "-", " "])
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}", kind


def phone(rng: random.Random) -> str:
    a = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
    x = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
    line = f"{rng.randint(0, 9999):04d}"
    return rng.choice([
        f"({a}) {x}-{line}", f"{a}-{x}-{line}", f"{a}.{x}.{line}", f"+1 {a} {x} {line}", f"+1-{a}-{x}-{line}",
        f"1-{a}-{x}-{line}", f"+1{a}{x}{line}", f"+1 ({a}) {x}-{line}",
        f"+44 20 {rng.randint(7000, 8999)} {rng.randint(0, 9999):04d}", f"020 {rng.randint(7000, 8999)} {line}",
        f"07{rng.randint(100, 999)} {rng.randint(100000, 999999)}", f"+49 30 {rng.randint(1000000, 99999999)}",
        f"030 {rng.randint(10000000, 99999999)}",
        f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        f"01 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
    ])


def _mod97(s: str) -> int:
    digits = "".join(str(int(ch, 36)) for ch in s)
    return int(digits) % 97


IBAN_SHAPES = {"DE": "n18", "GB": "a4n14", "FR": "n10c11n2", "NL": "a4n10", "ES": "n20", "IT": "a1n10c12",
               "BE": "n12", "CH": "n5c12", "PL": "n24", "SE": "n20", "NO": "n11", "AT": "n16"}


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_SHAPES))
    shape = IBAN_SHAPES[country]
    bban = []
    k = 0
    while k < len(shape):
        kind = shape[k]
        j = k + 1
        while j < len(shape) and shape[j].isdigit():
            j += 1
        count = int(shape[k + 1:j])
        pool = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}[kind]
        bban.append("".join(rng.choice(pool) for _ in range(count)))
        k = j
    body = "".join(bban)
    check = 98 - _mod97(body + country + "00")
    value = f"{country}{check:02d}{body}"
    if rng.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(rng: random.Random, n: int, pool: str = ALNUM) -> str:
    while True:
        tok = "".join(rng.choice(pool) for _ in range(n))
        if any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok):
            return tok


def secret(rng: random.Random) -> str:
    kind = rng.choice(["aws", "jwt", "bearer", "sk", "ghp", "ghpat", "slack", "pem", "sk_live"])
    if kind == "aws":
        return rng.choice(["AKIA", "ASIA"]) + "".join(rng.choice(UPPER_DIGITS) for _ in range(16))
    if kind == "jwt":
        head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = _b64url(json.dumps({"sub": str(rng.randint(1, 10**9)), "iat": rng.randint(1_600_000_000, 1_800_000_000)}).encode())
        return f"{head}.{body}.{_b64url(rng.randbytes(32))}"
    if kind == "bearer":
        return "Bearer " + rng.choice([rng.randbytes(16).hex(), _token(rng, 40)])
    if kind == "sk":
        return rng.choice(["sk-", "sk-proj-", "sk-ant-api03-"]) + _token(rng, 40)
    if kind == "sk_live":
        return rng.choice(["sk_live_", "sk_test_", "rk_live_"]) + _token(rng, 24)
    if kind == "ghp":
        return rng.choice(["ghp_", "gho_", "ghs_"]) + _token(rng, 36)
    if kind == "ghpat":
        return "github_pat_" + _token(rng, 22) + "_" + _token(rng, 59)
    if kind == "slack":
        return f"xoxb-{rng.randint(10**11, 10**12 - 1)}-{rng.randint(10**11, 10**12 - 1)}-{_token(rng, 24)}"
    body = base64.b64encode(rng.randbytes(rng.randint(120, 400))).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


FIRST = ["ann", "bob", "carla", "dmitri", "emma", "farid", "grace", "hiro", "ines", "jon", "kofi", "lena"]
LAST = ["smith", "garcia", "okafor", "nguyen", "muller", "rossi", "kowalski", "tanaka", "silva", "brown"]
DOMAINS = ["example.com", "corp.io", "mail.co.uk", "acme-inc.com", "sub.mail.example.org", "gmail.com",
           "uni.edu", "startup.ai"]


def email(rng: random.Random) -> str:
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{f}.{last}", f"{f}_{last}", f"{f[0]}{last}", f"{f}.{last}+{rng.choice(['news', 'x1'])}",
                        f"{f}{rng.randint(1, 99)}"])
    value = f"{local}@{rng.choice(DOMAINS)}"
    return value.upper() if rng.random() < 0.1 else value


GENERATORS = {"email": email, "phone": phone, "iban": iban, "secret_token": secret}


def pii_value(rng: random.Random, kind: str) -> tuple[str, str]:
    if kind == "credit_card":
        return format_card(rng, card_number(rng)), "credit_card"
    if kind == "us_ssn":
        return ssn(rng)
    return GENERATORS[kind](rng), kind


# --------------------------------------------------------------------------- look-alikes

def lookalike(rng: random.Random) -> str:
    kind = rng.randrange(30)
    if kind == 0:
        return f"ORD-{rng.randint(2019, 2025)}-{rng.randint(0, 999999):06d}"
    if kind == 1:
        return f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}"
    if kind == 2:
        return rng.choice(["logo@2x.png", "icon@3x.webp", "avatar@2x.jpg", "hero@1.5x.svg", "sprite@2x.gif"])
    if kind == 3:
        return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:" \
               f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
    if kind == 4:
        return "-".join(rng.randbytes(k).hex() for k in (4, 2, 2, 2, 6))
    if kind == 5:
        return rng.choice(["978-0-306-40615-7", "978-3-16-148410-0", "0-306-40615-2", "979-8-6024-3021-4"])
    if kind == 6:  # invalid Luhn, card-shaped
        number = card_number(rng)
        bad = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
        return format_card(rng, bad)
    if kind == 7:
        return rng.choice(["000-12-3456", "666-12-3456", "123-00-4567", "123-45-0000", "987-12-4321"])
    if kind == 8:
        return str(rng.randint(1_600_000_000_000, 1_800_000_000_000))  # epoch ms
    if kind == 9:
        return f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == 10:
        return f"${rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}"
    if kind == 11:
        return f"1Z{rng.randint(100, 999)}AA1{rng.randint(10**10, 10**11 - 1)}"
    if kind == 12:
        return f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}"  # ZIP+4
    if kind == 13:
        return rng.randbytes(20).hex()
    if kind == 14:
        return rng.choice(["ext. 4412", "Room 1204", "Gate B12", "Flight UA 1234", "Suite 300"])
    if kind == 15:
        return rng.choice(["sk-learn", "Bearer token auth", "xoxo", "ghost_user", "AKIAFAKE", "eyJ"])
    if kind == 16:
        good = iban(rng).replace(" ", "")
        digit = str((int(good[2]) + 1) % 10)
        return good[:2] + digit + good[3:]
    if kind == 17:
        return rng.choice(["user@localhost", "@channel", "npm:@scope/pkg@1.2.3", "git+ssh", "a@b"])
    if kind == 18:
        return f"{rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}"
    if kind == 19:
        return f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}"
    if kind == 20:
        return f"INV-{rng.randint(0, 99999999):08d}"
    if kind == 21:
        return f"SKU-{rng.randint(10000, 99999)}-{rng.choice(['S', 'M', 'XL'])}"
    if kind == 22:
        return f"{rng.randint(1, 5)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}-rc.{rng.randint(1, 5)}"
    if kind == 23:
        return base64.b64encode(rng.randbytes(18)).decode()
    if kind == 24:
        return str(rng.randint(10**12, 10**13 - 1))  # 13-digit account-ish number starting 1-9
    if kind == 25:
        return f"{rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
    if kind == 26:
        return f"#{rng.randint(100000, 999999)}"
    if kind == 27:
        return f"{rng.randint(100, 999)}-{rng.randint(100, 999)}"
    if kind == 28:
        return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:" \
               f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}"
    return f"{rng.randint(0, 99)}.{rng.randint(0, 99)}%"


WORDS = ["the", "customer", "asked", "about", "their", "order", "and", "the", "refund", "status", "was", "updated", "by", "support", "after", "review", "shipping", "delayed", "due", "to", "weather", "please", "confirm", "the", "address", "before", "dispatch", "invoice", "attached", "notes", "meeting", "moved", "to", "thursday", "account", "verified", "no", "further", "action", "needed", "escalated", "to", "tier", "two"]


def filler(rng: random.Random, n: int | None = None) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n if n is not None else rng.randint(2, 8)))


# --------------------------------------------------------------------------- documents

PII_KINDS = ["email", "credit_card", "us_ssn", "phone", "iban", "secret_token"]


class _Builder:
    def __init__(self, rng: random.Random, pii: bool):
        self.rng = rng
        self.pii = pii
        self.leaves: list[Leaf] = []

    def leaf(self, parts: list[tuple[str, str | None]]) -> str:
        text = ""
        spans = []
        for piece, label in parts:
            if label is not None:
                spans.append((len(text), len(text) + len(piece), label))
            text += piece
        self.leaves.append(Leaf(text, spans))
        return text

    def entity(self, kind: str) -> list[tuple[str, str | None]]:
        if not self.pii:
            return [(lookalike(self.rng), LOOKALIKE)]
        text, label = pii_value(self.rng, kind)
        if text.startswith("Bearer "):  # the scheme stays readable; the token is the secret
            return [("Bearer ", None), (text[7:], label)]
        return [(text, label)]

    def value(self, kind: str) -> str:
        return self.leaf(self.entity(kind))

    def sentence(self) -> str:
        rng = self.rng
        parts: list[tuple[str, str | None]] = [(filler(rng).capitalize(), None)]
        for _ in range(rng.randint(1, 3)):
            parts.append((rng.choice([" ", ": ", " (", " ref "]), None))
            if rng.random() < 0.55:
                parts.extend(self.entity(rng.choice(PII_KINDS)))
            else:
                parts.append((lookalike(rng), LOOKALIKE))
            parts.append((rng.choice([" ", ") ", ", ", "; "]) + filler(rng, rng.randint(1, 4)), None))
        parts.append((".", None))
        return self.leaf(parts)

    def plain(self) -> str:
        return self.leaf([(filler(self.rng), None)])

    def look(self) -> str:
        return self.leaf([(lookalike(self.rng), LOOKALIKE)])

    def record(self, k: int) -> dict[str, Any]:
        rng = self.rng
        shape = rng.randrange(5)
        if shape == 0:
            return {"id": k, "name": self.plain(), "email": self.value("email"), "phone": self.value("phone"),
                    "created": self.look(), "tags": [self.plain() for _ in range(rng.randint(0, 3))],
                    "notes": self.sentence()}
        if shape == 1:
            return {"txn": self.look(), "amount": round(rng.uniform(1, 5000), 2), "currency": "USD",
                    "card": self.value("credit_card"), "memo": self.sentence(), "ok": rng.random() < 0.9}
        if shape == 2:
            return {"employee": self.plain(), "ssn": self.value("us_ssn"), "bank": {"iban": self.value("iban")},
                    "start": self.look(), "manager": None}
        if shape == 3:
            return {"service": self.plain(), "version": self.look(), "env": {"TOKEN": self.value("secret_token"),
                    "REGION": "us-east-1"}, "log": [self.sentence() for _ in range(rng.randint(1, 3))]}
        return {"ticket": self.look(), "subject": self.plain(), "body": self.sentence(),
                "attachments": [self.look() for _ in range(rng.randint(0, 2))], "priority": rng.randint(1, 5)}


def make_doc(rng: random.Random, size: int, pii: bool = True, request_id: int = 1) -> Doc:
    """An MCP tools/call result of about `size` bytes (payload appears twice)."""
    b = _Builder(rng, pii)
    records: list[dict[str, Any]] = []
    budget = max(size // 2, 200)
    used = 0
    while used < budget:
        rec = b.record(len(records))
        records.append(rec)
        used += len(json.dumps(rec))
    payload = {"results": records, "count": len(records), "next": None}
    doc = {"jsonrpc": "2.0", "id": request_id,
           "result": {"content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=rng.random() < 0.5)}],
                      "structuredContent": payload, "isError": False}}
    return Doc(json.dumps(doc, ensure_ascii=False).encode("utf-8"), payload, b.leaves)


def corpus(seed: int = 20240601, n: int = 30, size: int = 6000, pii: bool = True) -> list[Doc]:
    rng = random.Random(seed)
    return [make_doc(rng, size, pii, k) for k in range(n)]


def planted_secrets(doc: Doc) -> list[str]:
    """Every planted PII value (not look-alikes)."""
    return [leaf.text[s:e] for leaf in doc.leaves for s, e, kind in leaf.spans if kind != LOOKALIKE]
