"""Precision and recall of every detector on a fixed, seeded corpus (threats.md §5).

The corpus (tests/pii_corpus.py) plants PII and look-alikes in realistic tool results and
labels where each one sits. A detector span that covers a planted entity of its type is a
true positive; any other span of that type is a false positive; a planted entity no span
of its type covers is a miss. Run with `-s` to see the table.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from fastgate import pii
from fastgate.redaction import Redactor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pii_corpus

STRUCTURED = ("email", "credit_card", "us_ssn", "tax_id", "secret_token")  # recall must be 1.0
OTHERS = ("phone", "iban")
CORPUS = pii_corpus.corpus(seed=20240601, n=50, size=6000) + pii_corpus.corpus(seed=424242, n=15, size=6000,
                                                                               pii=False)


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    red = Redactor.build([], list(pii.DETECTORS))
    assert red is not None
    return red


@pytest.fixture(scope="module")
def table(redactor: Redactor) -> dict[str, Counter]:
    stats: dict[str, Counter] = {t: Counter() for t in pii.TYPES}
    for doc in CORPUS:
        for leaf in doc.leaves:
            spans, _ = redactor.engine.find(leaf.text)
            for s, e, t in spans:
                kind = pii.TYPES[t]
                hit = any(k == kind and a < e and s < b for a, b, k in leaf.spans)
                stats[kind]["tp" if hit else "fp"] += 1
            for a, b, kind in leaf.spans:
                if kind == pii_corpus.LOOKALIKE:
                    stats["_lookalikes"] = stats.get("_lookalikes", Counter())
                    stats["_lookalikes"]["n"] += 1
                    continue
                stats[kind]["planted"] += 1
                if not any(pii.TYPES[t] == kind and s <= a and b <= e for s, e, t in spans):
                    stats[kind]["missed"] += 1
    return stats


def _precision(c: Counter) -> float:
    return c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0


def _recall(c: Counter) -> float:
    return (c["planted"] - c["missed"]) / c["planted"] if c["planted"] else 1.0


def test_print_table(table):
    lines = [f"\nPII accuracy on {len(CORPUS)} documents, {table['_lookalikes']['n']} look-alikes",
             f"{'type':<14}{'planted':>8}{'tp':>6}{'fp':>5}{'missed':>7}{'precision':>11}{'recall':>8}"]
    for kind in pii.TYPES:
        c = table[kind]
        lines.append(f"{kind:<14}{c['planted']:>8}{c['tp']:>6}{c['fp']:>5}{c['missed']:>7}"
                     f"{_precision(c):>11.3f}{_recall(c):>8.3f}")
    print("\n".join(lines))


@pytest.mark.parametrize("kind", STRUCTURED)
def test_recall_structured_entities(table, kind):
    assert table[kind]["planted"] >= 40
    assert _recall(table[kind]) == 1.0


@pytest.mark.parametrize("kind", OTHERS)
def test_recall_other_entities(table, kind):
    assert table[kind]["planted"] >= 40
    assert _recall(table[kind]) >= 0.95


@pytest.mark.parametrize("kind", STRUCTURED + OTHERS)
def test_precision(table, kind):
    assert _precision(table[kind]) >= 0.95


def _expected(value, red: Redactor):
    """What redaction must produce for a payload: every key and string masked leaf by leaf."""
    def text(s: str) -> str:
        kinds: dict[str, int] = {}
        return red.core.apply(red.plan, s, red.engine.find(s)[0], kinds)
    if isinstance(value, dict):
        return {text(k): _expected(v, red) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected(v, red) for v in value]
    if isinstance(value, str):
        return text(value)
    return value


def test_streamed_documents_match_leaf_detection(redactor):
    """The streaming tokenizer masks exactly what the detectors find leaf by leaf, both in
    structuredContent and inside the JSON serialized into content[0].text."""
    for doc in CORPUS[:20]:
        stream = redactor.stream("application/json")
        out = b"".join(stream.feed(doc.data[i:i + 1000]) for i in range(0, len(doc.data), 1000)) + stream.close()
        result = json.loads(out)["result"]
        expected = _expected(doc.payload, redactor)
        assert result["structuredContent"] == expected
        assert json.loads(result["content"][0]["text"]) == expected
