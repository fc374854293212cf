"""Redaction micro-benchmarks: MB/s on MCP tool results of 1 KB, 20 KB and 5 MB, with and
without planted PII, for the compiled core, the pure-Python reference, and the baseline a
gateway would otherwise run: `orjson.loads` + a Python masking walk (key set, one regex
alternation over every string, JSON-in-strings parsed and re-dumped) + `orjson.dumps`.

The baseline is deliberately generous: its regexes skip Luhn, SSA, mod-97 and the other
checks, so it does less work than the detectors it is compared with.

Each benchmark records `MB/s` (from the median round) in extra_info; see bench/README.md
"Redaction" for figures. Documents come from tests/pii_corpus.py (seeded).
    python -m pytest bench/test_micro_redact.py -p no:cacheprovider --benchmark-only
"""
from __future__ import annotations

import functools
import random
import re
import sys
from pathlib import Path

import orjson
import pytest

from fastgate import pii
from fastgate._core import compiled, reference
from fastgate.redaction import Redactor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pii_corpus

SELECTORS = ["$..password", "$.result.structuredContent.results[*].ssn", "$..card"]
SIZES = {"1KB": 1_000, "20KB": 20_000, "5MB": 5_000_000}
CHUNK = 64 << 10  # bodies are fed as an upstream would deliver them


@functools.cache
def document(size: str, with_pii: bool) -> bytes:
    return pii_corpus.make_doc(random.Random(f"{size}-{with_pii}"), SIZES[size], with_pii).data


def _core(name: str):
    if name == "compiled":
        try:
            return compiled("redact")
        except ImportError:
            pytest.skip("compiled redact not built")
    return reference("redact")


def _redact(red: Redactor, data: bytes) -> bytes:
    stream = red.stream("application/json")
    out = [stream.feed(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    out.append(stream.close())
    return b"".join(out)


_BASELINE = [
    r"[\w.%+-]+@[\w-]+\.[\w.-]+",                               # email
    r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{1,7}\b",                 # card-shaped
    r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",                              # SSN-shaped
    r"\+\d[\d -]{7,14}\d|\(\d{3}\) ?\d{3}-\d{4}",                  # phone
    r"\b[A-Z]{2}\d{2}[A-Z0-9 ]{11,30}\b",                         # IBAN-shaped
    (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|eyJ[\w-]+\.[\w-]+\.[\w-]*|Bearer \S+|sk-[\w-]{20,}"
     r"|gh[pousr]_\w{30,}|xox[baprs]-[\w-]+|-----BEGIN [A-Z ]*PRIVATE KEY-----[^-]*-----END[^-]*-----"),
]
_PATTERNS = re.compile("|".join(_BASELINE))
_KEYS = frozenset(["password", "ssn", "card"])


def _walk(value):
    if isinstance(value, dict):
        return {k: ("[REDACTED]" if k in _KEYS else _walk(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v) for v in value]
    if isinstance(value, str):
        if value[:1] in ("{", "["):
            try:
                return orjson.dumps(_walk(orjson.loads(value))).decode()
            except orjson.JSONDecodeError:
                pass
        return _PATTERNS.sub("[REDACTED]", value)
    return value


def python_walk(data: bytes) -> bytes:
    return orjson.dumps(_walk(orjson.loads(data)))


def _report(benchmark, data: bytes) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info["bytes"] = len(data)
    benchmark.extra_info["MB/s"] = round(len(data) / median / 1e6, 1)


def _rounds(impl: str, size: str) -> dict:
    if size == "5MB":
        return {"rounds": 3 if impl != "reference" else 1, "iterations": 1, "warmup_rounds": 0}
    if impl == "reference":
        return {"rounds": 5, "iterations": 1, "warmup_rounds": 1}
    return {"rounds": 30 if size == "20KB" else 200, "iterations": 3, "warmup_rounds": 2}


@pytest.mark.parametrize("with_pii", [False, True], ids=["clean", "pii"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", ["compiled", "reference"])
def test_redact(benchmark, impl, size, with_pii):
    data = document(size, with_pii)
    red = Redactor.build(SELECTORS, list(pii.DETECTORS), core=_core(impl))
    benchmark.group = f"redact {size} {'pii' if with_pii else 'clean'}"
    benchmark.pedantic(_redact, args=(red, data), **_rounds(impl, size))
    _report(benchmark, data)


@pytest.mark.parametrize("with_pii", [False, True], ids=["clean", "pii"])
@pytest.mark.parametrize("size", list(SIZES))
def test_python_walk(benchmark, size, with_pii):
    data = document(size, with_pii)
    benchmark.group = f"redact {size} {'pii' if with_pii else 'clean'}"
    benchmark.pedantic(python_walk, args=(data,), **_rounds("walk", size))
    _report(benchmark, data)


@pytest.mark.parametrize("size", ["20KB"])
def test_orjson_loads_floor(benchmark, size):
    """orjson parse alone: the floor the issue compares against."""
    data = document(size, False)
    benchmark.group = f"redact {size} clean"
    benchmark.pedantic(orjson.loads, args=(data,), **_rounds("walk", size))
    _report(benchmark, data)
