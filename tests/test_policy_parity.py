"""Differential tests: the compiled policy core against the pure-Python reference.

Random rule sets (principals, globs, every operator and source, values of every JSON kind
plus NaN, infinities and huge integers) x random callers (groups, claims, repeated query and
header values, argument documents with holes, non-JSON values) -> identical Decision objects.
Also: shuffling the rules never changes a decision, and explain() agrees with decide().
"""
from __future__ import annotations

import math
import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgate._core import compiled, reference
from fastgate.config import parse_config
from fastgate.policy import MISSING, CallContext, policy_class

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("policy")
try:
    C = None if NO_EXTENSIONS else compiled("policy")
except ImportError:
    C = None
pytestmark = pytest.mark.skipif(C is None, reason="compiled policy not available: nothing to compare")

FUNCTIONS = [
    {"name": "refund", "upstream": "u", "http": {"method": "POST", "path": "/refunds/{order_id}"}},
    {"name": "list_orders", "upstream": "u", "http": {"method": "GET", "path": "/orders"}},
    {"name": "cancel_order", "upstream": "u", "http": {"method": "POST", "path": "/orders/{order_id}/cancel"}},
    {"name": "lookup_customer", "upstream": "u", "mcp": {"endpoint": "/mcp", "tool": "lookup_customer"}},
]
NAMES = [f["name"] for f in FUNCTIONS]
WITH_PARAM = {"refund", "cancel_order"}
GLOBS = ["*", "*order*", "ref*", "lookup_*", "x*", "*_*"]
GROUPS = ["g0", "g1", "g2"]
SUBJECTS = ["alice", "bob", "carol"]
KEYS = ["a", "b", "k", "n", "items", "m"]
SELECTORS = ["$.a", "$.b.k", "$.items[*].n", "$.items[0]", "$..k", "$.a.*", "$..items[*].n", "$.m['k']",
             "$..n", "$.items[1].k", "$.a[*]"]
REGEXES = ["a+", "a.*b", "[ab]*", "b|ab", ""]
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class StrSub(str):
    pass


numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, -2.5, 100, 2**53 + 1, float(2**53), 2**63, 2**64, -(2**63) - 1,
                     10**400, -(10**400), math.nan, math.inf, -math.inf, 1e308]),
)
short_text = st.text("ab", max_size=3)
scalars = st.one_of(st.none(), st.booleans(), numbers, short_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8,
)
# Arguments may also hold what no JSON parser produces: the engines must agree on those too.
odd_values = st.sampled_from([(1,), StrSub("a"), b"a", frozenset({1})])
arg_values = st.recursive(
    st.one_of(scalars, odd_values),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
    max_leaves=14,
)
# What type confusion and non-finite numbers look like after a lenient parse or in a claim.
confusers = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), True, False, None, "1", "",
                             [], {}, 2**64, 1.0])
finite_numbers = st.sampled_from([0, 1, -1, 1.5, 100, 2**53, 2**63, -2.5, 1e308])


@st.composite
def conditions(draw, allow_param: bool) -> dict:
    sources = ["arg", "arg", "query", "header", "claim"] + (["param"] if allow_param else [])
    source = draw(st.sampled_from(sources))
    key = {"arg": st.sampled_from(SELECTORS), "param": st.just("order_id"), "query": st.just("q"),
           "header": st.sampled_from(["h", "H"]), "claim": st.just("c")}[source]
    op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "prefix", "suffix", "contains",
                               "matches", "exists"]))
    if op in ("==", "!=", "contains"):
        value = draw(json_values if op != "contains" else st.one_of(short_text, json_values))
    elif op in ("in", "not_in"):
        value = draw(st.one_of(st.lists(short_text, max_size=3), st.lists(numbers, max_size=3),
                               st.lists(json_values, max_size=3)))
    elif op in ("<", "<=", ">", ">="):
        value = draw(finite_numbers)
    elif op in ("prefix", "suffix"):
        value = draw(short_text)
    elif op == "matches":
        value = draw(st.sampled_from(REGEXES))
    else:
        value = draw(st.booleans())
    return {source: draw(key), "op": op, "value": value}


@st.composite
def rule_sets(draw) -> list[dict]:
    ids = draw(st.lists(st.sampled_from([f"r{i}" for i in range(12)]), unique=True, max_size=8))
    rules = []
    for rid in ids:
        functions = draw(st.lists(st.sampled_from(NAMES + GLOBS), min_size=1, max_size=2, unique=True))
        named = {f for f in functions if "*" not in f}
        allow_param = named <= WITH_PARAM
        effect = draw(st.sampled_from(["allow", "deny", "approve"]))
        rule = {"id": rid, "functions": functions, "effect": effect,
                "groups": draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=2)),
                "subjects": draw(st.lists(st.sampled_from(SUBJECTS), unique=True, max_size=1)),
                "authenticated": draw(st.booleans()),
                "when": draw(st.lists(conditions(allow_param), max_size=3))}
        if effect == "approve":
            rule["approval"] = {"reviewers": ["leads"]}
        rules.append(rule)
    return rules


strings = st.text("abAB", max_size=3)
callers = st.builds(
    CallContext,
    subject=st.sampled_from(SUBJECTS + ["anonymous"]),
    groups=st.frozensets(st.sampled_from(GROUPS + ["other"]), max_size=3),
    authenticated=st.booleans(),
    claims=st.one_of(st.just({}), st.dictionaries(st.just("c"), arg_values, max_size=1)),
    args=st.one_of(st.just(MISSING), arg_values, st.dictionaries(st.sampled_from(KEYS), arg_values, max_size=5)),
    params=st.one_of(st.just({}), st.fixed_dictionaries({"order_id": strings})),
    query=st.one_of(st.just({}), st.fixed_dictionaries({"q": st.lists(strings, max_size=3)})),
    headers=st.one_of(st.just({}), st.fixed_dictionaries({"h": st.lists(strings, max_size=3)})),
)


def build(core, rules: list[dict]):
    cfg = parse_config({"version": 1, "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                        "functions": FUNCTIONS, "rules": rules})
    return policy_class(core).from_config(cfg)


@SETTINGS
@given(rules=rule_sets(), cs=st.lists(callers, min_size=1, max_size=12))
def test_compiled_and_reference_decide_alike(rules, cs):
    py, c = build(PY, rules), build(C, rules)
    for ctx in cs:
        for name in NAMES + ["unknown"]:
            assert c.decide(name, ctx) == py.decide(name, ctx), (name, ctx)


@SETTINGS
@given(rules=rule_sets(), cs=st.lists(callers, min_size=1, max_size=6), seed=st.integers(0, 2**32))
def test_shuffled_rules_decide_alike(rules, cs, seed):
    shuffled = list(rules)
    random.Random(seed).shuffle(shuffled)
    for core in (PY, C):
        a, b = build(core, rules), build(core, shuffled)
        for ctx in cs:
            for name in NAMES:
                assert a.decide(name, ctx) == b.decide(name, ctx)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_sets(), cs=st.lists(callers, min_size=1, max_size=4))
def test_explain_agrees_with_decide(rules, cs):
    c = build(C, rules)
    for ctx in cs:
        for name in NAMES:
            d = c.decide(name, ctx)
            out = c.explain(name, ctx)
            assert (out["decision"], out["rule"]) == (d.effect, d.rule)
            assert out["matched"][:1] == ([d.rule] if d.rule else [])


# A fixed, deep document: the depth limit and deep `..key` walks must agree exactly.
@pytest.mark.parametrize("depth", [120, 127, 128, 129, 130, 140])
@pytest.mark.parametrize("selector", ["$..k", "$..n.k", "$.n..k", "$.n.*..k"])
@pytest.mark.parametrize("op,value", [("==", 1), ("exists", True), ("exists", False), ("!=", 1)])
@pytest.mark.parametrize("effect", ["allow", "deny"])
def test_deep_documents_agree(depth, selector, op, value, effect):
    doc: Any = {"k": 1}
    for _ in range(depth):
        doc = {"n": doc, "k": 1} if depth % 2 else {"n": doc}
    rules = [{"id": "r", "functions": ["refund"], "effect": effect,
              "when": [{"arg": selector, "op": op, "value": value}]}]
    ctx = CallContext(args=doc)
    assert build(C, rules).decide("refund", ctx) == build(PY, rules).decide("refund", ctx)



def _near(value: Any) -> st.SearchStrategy:
    """Values likely to sit on either side of a condition's value: itself, its elements, neighbours."""
    options = [st.just(value), scalars, odd_values, confusers]
    if isinstance(value, list) and value:
        options.append(st.sampled_from(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        options.append(st.sampled_from([value - 1, value + 1, float(value), value + 0.5, str(value)]))
    if isinstance(value, str):
        options.append(st.sampled_from([value + "a", "b" + value, value * 2, value.upper()]))
    leaf = st.one_of(*options)
    return st.one_of(leaf, leaf, st.lists(leaf, max_size=3))


@st.composite
def callers_near(draw, value: Any) -> CallContext:
    leaf = _near(value)
    item = st.fixed_dictionaries({}, optional={"n": leaf, "k": leaf})
    args = st.fixed_dictionaries({}, optional={
        "a": st.one_of(leaf, st.dictionaries(st.sampled_from(KEYS), leaf, max_size=3), st.lists(leaf, max_size=3)),
        "b": st.one_of(leaf, st.fixed_dictionaries({}, optional={"k": leaf})),
        "items": st.one_of(leaf, st.lists(st.one_of(item, item, leaf), max_size=3)),
        "m": st.fixed_dictionaries({}, optional={"k": leaf}),
        "k": leaf, "n": leaf,
    })
    text = st.one_of(strings, st.just(value) if isinstance(value, str) else strings,
                     st.sampled_from(value) if isinstance(value, list) and value and
                     all(isinstance(v, str) for v in value) else strings)
    return CallContext(
        subject="alice", groups=frozenset(), authenticated=True,
        claims=draw(st.one_of(st.just({}), st.fixed_dictionaries({"c": leaf}))),
        args=draw(st.one_of(args, args, args, st.just(MISSING), leaf)),
        params=draw(st.one_of(st.just({}), st.fixed_dictionaries({"order_id": text}))),
        query=draw(st.one_of(st.just({}), st.fixed_dictionaries({"q": st.lists(text, max_size=3)}))),
        headers=draw(st.one_of(st.just({}), st.fixed_dictionaries({"h": st.lists(text, max_size=3)}))),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cond=conditions(allow_param=True), effect=st.sampled_from(["allow", "deny", "approve"]))
def test_single_condition_alike(data, cond, effect):
    """One rule without principals: the decision is the condition's verdict, on both sides."""
    rule = {"id": "r", "functions": ["refund"], "effect": effect, "when": [cond]}
    if effect == "approve":
        rule["approval"] = {"reviewers": ["leads"]}
    py, c = build(PY, [rule]), build(C, [rule])
    for ctx in data.draw(st.lists(callers_near(cond["value"]), min_size=1, max_size=16)):
        assert c.decide("refund", ctx) == py.decide("refund", ctx), ctx


# --------------------------------------------------------------------------- exhaustive grid

GRID_INPUTS = [
    MISSING, None, True, False, 0, 1, -1, 1.0, -0.0, 1.5, 100, 100.0, 2**53 + 1, float(2**53), 2**63, 2**64,
    10**400, -(10**400), math.nan, math.inf, -math.inf, "", "a", "ab", "ba", "A", "100", "1", [], [1], [1.0],
    ["a"], ["a", 1], [True], [math.nan], [[1]], {}, {"a": 1}, {"x": 1}, (1,), StrSub("a"), b"a", "a" * 5000,
]
GRID_VALUES: dict[str, list[Any]] = {
    "==": [x for x in GRID_INPUTS if x is not MISSING and not isinstance(x, (tuple, bytes, StrSub))],
    "in": [[], ["a", "b"], [1, 2], [1, "a"], [1.5, math.nan], [[1], {"a": 1}], [True], [None], [2**64, 10**400],
           ["a", StrSub("b")]],
    "<": [0, 1, 1.5, 100, -1, 2**53, 2**63, 1e308, -2.5, 10**300],
    "prefix": ["", "a", "ab"],
    "contains": ["a", 1, [1], True, None, "", math.nan],
    "matches": ["a+", "a.*", "", "[ab]*"],
    "exists": [True, False],
}
GRID_VALUES["!="] = GRID_VALUES["=="]
GRID_VALUES["not_in"] = GRID_VALUES["in"]
GRID_VALUES["<="] = GRID_VALUES[">"] = GRID_VALUES[">="] = GRID_VALUES["<"]
GRID_VALUES["suffix"] = GRID_VALUES["prefix"]
# (source, key, steps, how an input becomes a CallContext)
GRID_SHAPES = [
    ("arg $.x", PY.ARG, "$.x", ((PY.KEY, "x"),), lambda x: CallContext(args={"x": x} if x is not MISSING else {})),
    ("arg $.x[*]", PY.ARG, "$.x[*]", ((PY.KEY, "x"), (PY.WILDCARD, None)),
     lambda x: CallContext(args={"x": x} if x is not MISSING else {})),
    ("arg $..x", PY.ARG, "$..x", ((PY.DESCEND, "x"),),
     lambda x: CallContext(args=[{"y": {"x": x}}, {"x": 1}] if x is not MISSING else [{"y": 1}])),
    # A second `x` that holds [1]: a scalar `x` must add a missing leaf beside the leaf 1, not vanish.
    ("arg $..x[*]", PY.ARG, "$..x[*]", ((PY.DESCEND, "x"), (PY.WILDCARD, None)),
     lambda x: CallContext(args=[{"x": [1]}, {"y": {"x": x}}] if x is not MISSING else [{"x": [1]}])),
    ("claim", PY.CLAIM, "x", (), lambda x: CallContext(claims={} if x is MISSING else {"x": x})),
    ("query", PY.QUERY, "x", (), lambda x: CallContext(query={} if x is MISSING else {"x": [x, "a"]})),
]


@pytest.mark.parametrize("shape", GRID_SHAPES, ids=[s[0] for s in GRID_SHAPES])
@pytest.mark.parametrize("op", list(GRID_VALUES))
def test_operator_grid_alike(shape, op):
    """Every operator x representative rule values x confusing inputs x both effects, built
    straight from the table format (no config validation in the way)."""
    import re
    _, source, key, steps, make_ctx = shape
    contexts = [make_ctx(x) for x in GRID_INPUTS]
    for value in GRID_VALUES[op]:
        for deny in (False, True):
            cond = PY.CondSpec(index=0, source=source, key=key, steps=steps, op=PY.OPS[op], value=value,
                               regex=re.compile(value) if op == "matches" else None, deny=deny)
            effect = "deny" if deny else "allow"
            spec = PY.RuleSpec(index=0, id="r", effect=effect, functions=("f",), groups=frozenset(),
                               subjects=frozenset(), authenticated=False, conditions=(cond,),
                               decision=PY.Decision(effect, "r"))
            tables = PY.Tables(functions={"f": (spec,)})
            py, c = PY.Engine(tables), C.Engine(tables)
            for x, ctx in zip(GRID_INPUTS, contexts):
                assert c.decide("f", ctx) == py.decide("f", ctx), (op, value, effect, x)
