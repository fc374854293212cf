"""Policy: compiled tables, principals, typed conditions, decision order, explain, warnings.

Sans-IO: configs in, Decisions out. Every test that decides runs on the pure-Python reference
(`py`) and on the compiled core (`c`). Operator cases are written once as (op, value, input,
outcome) and checked on both sides: an allow rule must match exactly when the outcome is true,
a deny rule when it is true or unknown (fail closed; threats.md §4 "typed conditions met with
the wrong type").
"""
from __future__ import annotations

import math
import os
from typing import Any

import pytest

from fastgate._core import compiled, compiled_or_none, load, reference
from fastgate.config import ApprovalSpec, parse_config
from fastgate.policy import (
    MISSING,
    CallContext,
    Decision,
    Policy,
    check_warnings,
    compile_tables,
    policy_class,
)

NO_EXTENSIONS = bool(os.environ.get("FASTGATE_NO_EXTENSIONS"))
PY = reference("policy")




C = compiled_or_none("policy")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if NO_EXTENSIONS else "compiled policy not built"
IMPLS = [
    pytest.param(PY, id="py"),
    pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING)),
]

FUNCTIONS = [
    {"name": "refund", "upstream": "u", "http": {"method": "POST", "path": "/refunds/{order_id}"}},
    {"name": "list_orders", "upstream": "u", "http": {"method": "GET", "path": "/orders"}},
    {"name": "cancel_order", "upstream": "u", "http": {"method": "POST", "path": "/orders/{order_id}/cancel"}},
    {"name": "lookup_customer", "upstream": "u", "mcp": {"endpoint": "/mcp", "tool": "lookup_customer"}},
]
APPROVAL = {"reviewers": ["finance-leads"], "quorum": 1, "timeout": "15m"}


def config(rules: list[dict], functions: list[dict] | None = None):
    return parse_config({"version": 1, "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                         "functions": FUNCTIONS if functions is None else functions, "rules": rules})


def rule(id: str, effect: str = "allow", functions: list[str] | None = None, **extra: Any) -> dict:
    out = {"id": id, "functions": functions or ["refund"], "effect": effect, **extra}
    if effect == "approve":
        out.setdefault("approval", APPROVAL)
    return out


def ctx(subject: str = "alice", groups: tuple[str, ...] = ("support",), authenticated: bool = True,
        **extra: Any) -> CallContext:
    return CallContext(subject=subject, groups=frozenset(groups), authenticated=authenticated, **extra)


ANON = CallContext()


@pytest.fixture(params=IMPLS)
def core(request: pytest.FixtureRequest):
    return request.param


@pytest.fixture
def make(core):
    def build(rules: list[dict], functions: list[dict] | None = None):
        return policy_class(core).from_config(config(rules, functions))
    return build


def test_compiled_policy_loaded():
    """A silent fallback to the reference would ship a much slower gate; fail loudly instead."""
    if NO_EXTENSIONS:
        pytest.skip("FASTGATE_NO_EXTENSIONS is set: only the pure-Python reference is under test")
    try:
        module = compiled("policy")
    except ImportError as exc:
        pytest.fail(f"compiled policy did not import ({exc}); run `python setup.py build_ext --inplace` "
                    "or set FASTGATE_NO_EXTENSIONS=1 to test the reference alone")
    assert module.__file__ is not None and not module.__file__.endswith(".py")
    assert load("policy") is module
    assert module.Decision is PY.Decision and module.MISSING is PY.MISSING
    assert Policy.implementation == "compiled"
    assert issubclass(Policy, module.Engine)


# --------------------------------------------------------------------------- tables

def test_tables_resolve_names_and_globs_per_function():
    cfg = config([
        rule("a-exact", functions=["refund"]),
        rule("b-glob", functions=["*_order*"]),
        rule("c-star", "deny", functions=["*"], groups=["interns"]),
        rule("d-two", functions=["refund", "ref*"]),
        rule("e-none", functions=["nothing*"]),
    ])
    t = compile_tables(cfg)
    ids = {name: [r.id for r in specs] for name, specs in t.functions.items()}
    assert ids == {
        "refund": ["c-star", "a-exact", "d-two"],          # deny first, then by id; d-two once
        "list_orders": ["c-star", "b-glob"],
        "cancel_order": ["c-star", "b-glob"],
        "lookup_customer": ["c-star"],
    }
    assert [r.id for r in t.rules] == ["a-exact", "b-glob", "c-star", "d-two", "e-none"]
    # One RuleSpec per rule, shared by every function it applies to.
    assert t.functions["list_orders"][0] is t.functions["refund"][0]


def test_tables_order_deny_approve_allow_then_id():
    cfg = config([rule("z-allow"), rule("a-allow"), rule("m-approve", "approve"), rule("y-deny", "deny"),
                  rule("b-deny", "deny")])
    assert [r.id for r in compile_tables(cfg).functions["refund"]] == [
        "b-deny", "y-deny", "m-approve", "a-allow", "z-allow"]


def test_tables_compile_conditions():
    cfg = config([rule("r", when=[
        {"arg": "$.items[*].amount", "op": "<=", "value": 100},
        {"header": "X-Tenant", "op": "==", "value": "acme"},
        {"arg": "$..email", "op": "exists"},
        {"arg": "$.a['b c'][2]", "op": "matches", "value": "x+"},
    ])])
    conds = compile_tables(cfg).functions["refund"][0].conditions
    assert [c.steps for c in conds if c.source == 0] == [
        ((0, "items"), (2, None), (0, "amount")), ((3, "email"),), ((0, "a"), (0, "b c"), (1, 2))]
    assert conds[1].key == "x-tenant"          # header names compare lowercase
    assert conds[2].value is True              # exists defaults to true
    assert conds[3].regex.pattern == "x+"
    assert not any(c.deny for c in conds)


def test_needs_flags(make):
    p = make([
        rule("args", functions=["refund"], when=[{"arg": "$.amount", "op": "<", "value": 5}]),
        rule("query", functions=["list_orders"], when=[{"query": "limit", "op": "==", "value": "5"}]),
        rule("hdr", functions=["*"], when=[{"header": "x-tenant", "op": "exists"}]),
        rule("claim", functions=["cancel_order"], when=[{"claim": "tenant", "op": "==", "value": "a"}]),
    ])
    assert p.needs_args("refund") and not p.needs_args("list_orders") and not p.needs_args("cancel_order")
    assert p.needs_query("list_orders") and not p.needs_query("refund")
    assert all(p.needs_headers(f) for f in ("refund", "list_orders", "cancel_order", "lookup_customer"))
    assert not p.needs_args("no_such_function") and not p.needs_headers("no_such_function")


# --------------------------------------------------------------------------- principals and order

def test_groups_subjects_authenticated(make):
    p = make([
        rule("by-group", functions=["refund"], groups=["support", "billing"]),
        rule("by-subject", functions=["list_orders"], subjects=["bob"]),
        rule("either", functions=["cancel_order"], groups=["ops"], subjects=["carol"]),
        rule("authed", functions=["lookup_customer"], authenticated=True),
    ])
    assert p.decide("refund", ctx(groups=("billing", "x"))).rule == "by-group"
    assert p.decide("refund", ctx(groups=("x",))).rule is None
    assert p.decide("refund", ctx(groups=())).rule is None
    assert p.decide("list_orders", ctx(subject="bob", groups=())).allowed
    assert not p.decide("list_orders", ctx(subject="bobby")).allowed
    assert p.decide("cancel_order", ctx(subject="carol", groups=())).allowed
    assert p.decide("cancel_order", ctx(subject="x", groups=("ops",))).allowed
    assert not p.decide("cancel_order", ctx(subject="x", groups=("support",))).allowed
    assert p.decide("lookup_customer", ctx(groups=())).allowed
    assert not p.decide("lookup_customer", ANON).allowed


def test_authenticated_combines_with_groups(make):
    p = make([rule("r", groups=["support"], authenticated=True)])
    assert p.decide("refund", ctx()).allowed
    assert not p.decide("refund", ctx(authenticated=False)).allowed
    assert not p.decide("refund", ctx(groups=("x",))).allowed


def test_rule_without_principal_matches_anonymous(make):
    p = make([rule("open", functions=["list_orders"])])
    assert p.decide("list_orders", ANON) == Decision("allow", "open", "allowed by rule open")


def test_caller_groups_may_be_any_set_or_iterable(make):
    p = make([rule("r", groups=["support"])])
    for groups in (frozenset({"support"}), {"support", "a", "b", "c"}, ["x", "support"], ("support",)):
        assert p.decide("refund", CallContext(subject="s", groups=groups)).allowed


def test_deny_wins_then_approve_then_allow(make):
    p = make([
        rule("allow-all"),
        rule("approve-support", "approve", groups=["support"]),
        rule("deny-interns", "deny", functions=["*"], groups=["interns"]),
    ])
    assert p.decide("refund", ctx(groups=("support",))).effect == "approve"
    d = p.decide("refund", ctx(groups=("support", "interns")))
    assert d == Decision("deny", "deny-interns", "denied by rule deny-interns")
    assert p.decide("refund", ctx(groups=("other",))).rule == "allow-all"
    assert p.decide("list_orders", ctx(groups=("other",))) == Decision("deny", None, "no rule allows this call")
    assert p.decide("list_orders", ctx(groups=("interns",))).rule == "deny-interns"


def test_approve_decision_carries_the_approval_spec(make):
    p = make([rule("big", "approve")])
    d = p.decide("refund", ctx())
    assert d.effect == "approve" and not d.allowed
    assert isinstance(d.approval, ApprovalSpec) and d.approval.reviewers == ["finance-leads"]
    assert d.approval.timeout == 900.0


def test_smallest_id_reported_among_matching_rules_of_the_winning_effect(make):
    p = make([rule("zz", "deny"), rule("aa", "deny"), rule("mm", "deny")])
    assert p.decide("refund", ctx()).rule == "aa"


def test_unknown_function_and_empty_config(make):
    p = make([])
    assert p.decide("refund", ctx()) == Decision("deny", None, "no rule allows this call")
    assert p.decide("nope", ctx()) == Decision("deny", None, "unknown function")
    assert not p.decide("nope", ctx()).allowed


def test_decisions_are_preallocated(make):
    p = make([rule("r", groups=["support"]), rule("d", "deny", groups=["interns"])])
    assert p.decide("refund", ctx()) is p.decide("refund", ctx(subject="other"))
    assert p.decide("refund", ctx(groups=())) is p.decide("list_orders", ctx())


def test_rule_order_never_matters(core):
    rules = [rule("a", groups=["support"]), rule("b", "approve", groups=["support"],
                                                  when=[{"arg": "$.amount", "op": ">", "value": 100}]),
             rule("c", "deny", functions=["*"], groups=["interns"]),
             rule("d", "deny", when=[{"arg": "$.amount", "op": ">", "value": 1000}])]
    callers = [ctx(args={"amount": a}, groups=g) for a in (1, 150, 5000, "x") for g in
               (("support",), ("interns",), ("support", "interns"), ())]
    first = policy_class(core).from_config(config(rules))
    for order in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        other = policy_class(core).from_config(config([rules[i] for i in order]))
        for c in callers:
            assert other.decide("refund", c) == first.decide("refund", c)


# --------------------------------------------------------------------------- operators

NAN, INF = math.nan, math.inf
T, F, U = "true", "false", "unknown"


class StrSub(str):
    pass


OPERATOR_CASES: list[tuple[str, Any, Any, str]] = [
    # == : strict JSON types; unknown for other kinds and non-finite numbers
    ("==", 100, 100, T), ("==", 100, 100.0, T), ("==", 100.0, 100, T), ("==", 100, 101, F),
    ("==", 100, "100", U), ("==", "100", 100, U), ("==", 1, True, U), ("==", True, 1, U),
    ("==", True, True, T), ("==", True, False, F), ("==", False, 0, U), ("==", None, None, T),
    ("==", None, 0, U), ("==", None, "", U), ("==", "a", "a", T), ("==", "a", "A", F), ("==", "a", ["a"], U),
    ("==", "a", {"a": 1}, U), ("==", [1, 2], [1, 2], T), ("==", [1, 2], [1.0, 2.0], T), ("==", [1], [True], F),
    ("==", [1, 2], [2, 1], F), ("==", [1, 2], [1, 2, 3], F), ("==", [], [], T), ("==", {"a": 1}, {"a": 1}, T),
    ("==", {"a": 1}, {"a": 1, "b": 2}, F), ("==", {"a": 1}, {"a": "1"}, F), ("==", {"a": [1]}, {"a": [1]}, T),
    ("==", {"a": 1}, {"b": 1}, F), ("==", [[1, "x"]], [[1, "x"]], T), ("==", [None], [None], T),
    ("==", 100, NAN, U), ("==", 100, INF, U), ("==", 100, -INF, U), ("==", 100, 10**400, U),
    ("==", 10**20, 10**20, T), ("==", 2**64, float(2**64), T), ("==", 9007199254740993, 9007199254740992.0, F),
    ("==", 1, (1,), U), ("==", "a", StrSub("a"), U), ("==", [1], (1,), U), ("==", "a", b"a", U),
    ("==", [1], [NAN], F), ("==", NAN, NAN, U),
    # != : the negation of ==, unknown stays unknown
    ("!=", 100, 101, T), ("!=", 100, 100, F), ("!=", 100, 100.0, F), ("!=", 100, "100", U), ("!=", "a", 1, U),
    ("!=", 100, NAN, U), ("!=", True, 1, U), ("!=", [1], [True], T), ("!=", None, None, F),
    # in / not_in: three-valued OR of == over the list
    ("in", ["a", "b"], "a", T), ("in", ["a", "b"], "c", F), ("in", ["a", "b"], 1, U), ("in", ["a"], None, U),
    ("in", [1, 2], 1.0, T), ("in", [1, 2], 3, F), ("in", [1, 2], True, U), ("in", [1, 2], "1", U),
    ("in", [1, "a"], "b", U), ("in", [1, "a"], "a", T), ("in", [1, "a"], 1, T), ("in", [], "a", F),
    ("in", [[1]], [1], T), ("in", [[1]], [2], F), ("in", [1, 2], NAN, U), ("in", [1, 2], 10**400, U),
    ("in", [1.5, 2], 1.5, T), ("in", [True], True, T), ("in", [True], 1, U), ("in", [None, "a"], None, T),
    ("in", ["a"], StrSub("a"), U), ("in", [2**70], 2**70, T), ("in", [{"k": 1}], {"k": 1}, T),
    ("not_in", ["a", "b"], "c", T), ("not_in", ["a"], "a", F), ("not_in", ["a"], 1, U), ("not_in", [], "a", T),
    ("not_in", [1, 2], 2.0, F), ("not_in", [1, 2], 3, T), ("not_in", [1, 2], True, U), ("not_in", [1, 2], INF, U),
    ("not_in", [1, "a"], "b", U),
    # ordering: finite numbers only
    ("<=", 100, 100, T), ("<=", 100, 100.5, F), ("<=", 100, -1e308, T), ("<=", 100, 0, T), ("<", 100, 100, F),
    ("<", 100, 99.999, T), (">", 100, 101, T), (">", 100, 100, F), (">=", 100, 99.99, F), (">=", 100, 100.0, T),
    ("<=", 100, "50", U), ("<=", 100, True, U), ("<=", 100, False, U), ("<=", 100, None, U), ("<=", 100, [50], U),
    ("<=", 100, {"a": 1}, U), ("<=", 100, NAN, U), ("<=", 100, INF, U), ("<=", 100, -INF, U),
    ("<=", 100, -(10**400), U), (">", 100, 10**400, U), (">", 100, 2**64, T), ("<", 100, -(2**64), T),
    ("<=", 0.5, 0, T), ("<=", 0.5, 1, F), ("<", 9007199254740993, 9007199254740992.0, T),
    (">", 9007199254740992.0, 9007199254740993, T), ("<=", -5, -5.0, T), ("<", 1e308, 10**308, T),  # exact: float(1e308) > 10**308
    (">", 1e308, 10**308, F), ("<=", 2**63, 2**63 - 1, T), (">", 2**63, 2**63 + 1, T),
    # prefix / suffix: strings only
    ("prefix", "ab", "abc", T), ("prefix", "ab", "xab", F), ("prefix", "ab", "a", F), ("prefix", "", "x", T),
    ("prefix", "ab", 5, U), ("prefix", "ab", ["ab"], U), ("prefix", "ab", None, U),
    ("suffix", "bc", "abc", T), ("suffix", "bc", "bca", F), ("suffix", ".com", "x.com", T),
    ("suffix", "bc", 12, U), ("suffix", "é", "café", T),
    # contains: substring, or element == in arrays
    ("contains", "b", "abc", T), ("contains", "b", "xyz", F), ("contains", "b", 5, U), ("contains", "b", None, U),
    ("contains", "a", ["a", "b"], T), ("contains", "a", ["b"], F), ("contains", "a", [], F),
    ("contains", "a", [1], U), ("contains", "a", [1, "b"], U), ("contains", "a", [1, "a"], T),
    ("contains", 1, [1.0], T), ("contains", 1, [True], U), ("contains", 1, "a1", U),
    ("contains", "a", {"a": 1}, U), ("contains", ["x"], [["x"]], T), ("contains", 1, [NAN], U),
    # matches: full match, bounded input
    ("matches", "[a-z]+", "abc", T), ("matches", "[a-z]+", "abc1", F), ("matches", "[a-z]+", "1abc", F),
    ("matches", "b", "abc", F), ("matches", "a.*", "a" * 4096, T), ("matches", "a.*", "a" * 4097, U),
    ("matches", "[0-9]+", 123, U), ("matches", ".*", None, U), ("matches", "a|ab", "ab", T),
    # missing: unknown for every operator but exists
    ("==", "a", MISSING, U), ("!=", "a", MISSING, U), ("in", ["a"], MISSING, U), ("not_in", ["a"], MISSING, U),
    ("<", 1, MISSING, U), ("prefix", "a", MISSING, U), ("contains", "a", MISSING, U),
    ("matches", "a", MISSING, U),
    # exists: presence only, never unknown
    ("exists", True, 0, T), ("exists", True, None, T), ("exists", True, NAN, T), ("exists", True, MISSING, F),
    ("exists", False, MISSING, T), ("exists", False, "x", F), ("exists", False, None, F),
]


def _case_id(case: tuple[str, Any, Any, str]) -> str:
    op, value, x, expected = case
    return f"{op} {value!r:.20} on {x!r:.20} -> {expected}"


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[_case_id(c) for c in OPERATOR_CASES])
def test_operator_outcomes_on_both_sides(make, case):
    op, value, x, expected = case
    when = [{"arg": "$.x", "op": op, "value": value}]
    p = make([rule("grant", functions=["refund"], when=when), rule("stop", "deny", functions=["list_orders"],
                                                                   when=when)])
    c = ctx(args=MISSING if x is MISSING else {"x": x})
    assert p.decide("refund", c).allowed is (expected == T), "allow rule"
    assert (p.decide("list_orders", c).rule == "stop") is (expected != F), "deny rule"


def test_approve_rules_treat_unknown_like_allow(make):
    p = make([rule("big", "approve", when=[{"arg": "$.amount", "op": ">", "value": 100}])])
    assert p.decide("refund", ctx(args={"amount": 150})).effect == "approve"
    for amount in ("150", [150], None, True, NAN):
        assert p.decide("refund", ctx(args={"amount": amount})).rule is None


def test_contract_example_small_and_large_refunds(make):
    p = make([
        rule("support-small-refunds", groups=["support"], when=[{"arg": "$.amount", "op": "<=", "value": 100}]),
        rule("support-large-refunds", "approve", groups=["support"],
             when=[{"arg": "$.amount", "op": ">", "value": 100}]),
        rule("no-interns", "deny", functions=["*"], groups=["interns"]),
    ])
    assert p.decide("refund", ctx(args={"amount": 100})).rule == "support-small-refunds"
    assert p.decide("refund", ctx(args={"amount": 100.01})).rule == "support-large-refunds"
    assert p.decide("refund", ctx(args={"amount": "50"})).rule is None          # type confusion: deny
    assert p.decide("refund", ctx(args={"amount": [50]})).rule is None
    assert p.decide("refund", ctx(args={})).rule is None
    assert p.decide("refund", ctx(args=MISSING)).rule is None
    assert p.decide("refund", ctx(groups=("support", "interns"), args={"amount": 1})).rule == "no-interns"


# --------------------------------------------------------------------------- selectors

def _grant_and_deny(make, selector: str, op: str, value: Any):
    when = [{"arg": selector, "op": op, "value": value}]
    p = make([rule("grant", functions=["refund"], when=when),
              rule("stop", "deny", functions=["list_orders"], when=when)])
    return lambda args: (p.decide("refund", ctx(args=args)).allowed,
                         p.decide("list_orders", ctx(args=args)).rule == "stop")


def test_wildcard_every_element_for_grants_any_for_denies(make):
    check = _grant_and_deny(make, "$.items[*].amount", "<=", 100)
    assert check({"items": [{"amount": 5}, {"amount": 7}]}) == (True, True)
    assert check({"items": [{"amount": 5}, {"amount": 500}]}) == (False, True)
    assert check({"items": [{"amount": 500}, {"amount": 600}]}) == (False, False)
    assert check({"items": [{"amount": 5}, {}]}) == (False, True)              # a hole is unknown
    assert check({"items": [{"amount": 500}, {"amount": "5"}]}) == (False, True)
    assert check({"items": []}) == (False, True)                               # nothing selected: missing
    assert check({"items": {"a": {"amount": 5}}}) == (True, True)              # [*] on an object: its values
    assert check({"items": 5}) == (False, True)
    assert check({}) == (False, True)


def test_wildcard_deny_fires_on_any_element(make):
    check = _grant_and_deny(make, "$.items[*].amount", ">", 1000)
    assert check({"items": [{"amount": 5}, {"amount": 5000}]}) == (False, True)
    assert check({"items": [{"amount": 5}, {"amount": 6}]}) == (False, False)
    assert check({"items": [{"amount": 5000}, {"amount": 6000}]}) == (True, True)


def test_dot_star_is_a_wildcard(make):
    check = _grant_and_deny(make, "$.limits.*", "<", 10)
    assert check({"limits": {"a": 1, "b": 2}}) == (True, True)
    assert check({"limits": {"a": 1, "b": 20}}) == (False, True)
    assert check({"limits": [1, 2]}) == (True, True)


def test_descend_finds_keys_at_any_depth(make):
    check = _grant_and_deny(make, "$..role", "==", "user")
    assert check({"role": "user"}) == (True, True)
    assert check({"a": {"b": [{"role": "user"}, {"c": {"role": "user"}}]}}) == (True, True)
    assert check({"a": {"b": [{"role": "user"}, {"c": {"role": "admin"}}]}}) == (False, True)
    assert check({"a": {"b": [{"role": "admin"}, {"c": {"role": "admin"}}]}}) == (False, False)
    assert check({"a": 1}) == (False, True)                                    # nothing found: missing
    assert check({"role": {"role": "user"}}) == (False, True)                  # the outer one is an object
    assert check([{"role": "user"}]) == (True, True)


def test_descend_then_key(make):
    check = _grant_and_deny(make, "$..card.number", "==", "x")
    assert check({"a": {"card": {"number": "x"}}, "b": [{"card": {"number": "x"}}]}) == (True, True)
    assert check({"a": {"card": {"number": "x"}}, "b": [{"card": {}}]}) == (False, True)
    assert check({"a": {"card": 5}}) == (False, True)


def test_index_and_quoted_keys(make):
    check = _grant_and_deny(make, "$.a['b c'][1]", "==", 2)
    assert check({"a": {"b c": [1, 2]}}) == (True, True)
    assert check({"a": {"b c": [2]}}) == (False, True)
    assert check({"a": {"b c": {"1": 2}}}) == (False, True)
    assert check({"a": [1, 2]}) == (False, True)


def test_key_lookup_is_exact(make):
    """Confusable keys are different keys (threats.md §4): a rule on "ssn" ignores "ｓｓｎ"."""
    check = _grant_and_deny(make, "$.ssn", "exists", False)
    assert check({"ｓｓｎ": "1", "SSN": "2", "ssn ": "3"}) == (True, True)
    assert check({"ssn": None}) == (False, False)


def test_exists_with_quantifiers(make):
    present = _grant_and_deny(make, "$.items[*].approved_by", "exists", True)
    assert present({"items": [{"approved_by": "x"}, {"approved_by": None}]}) == (True, True)
    assert present({"items": [{"approved_by": "x"}, {}]}) == (False, True)
    assert present({"items": [{}, {}]}) == (False, False)
    assert present({"items": []}) == (False, False)
    absent = _grant_and_deny(make, "$.items[*].debug", "exists", False)
    assert absent({"items": [{}, {}]}) == (True, True)
    assert absent({"items": [{"debug": 1}, {}]}) == (False, True)
    assert absent({"items": [{"debug": 1}, {"debug": 0}]}) == (False, False)
    assert absent({"items": []}) == (True, True)
    assert absent(MISSING) == (True, True)


def test_non_json_containers_are_not_walked(make):
    check = _grant_and_deny(make, "$.a.b", "==", 1)
    assert check({"a": {"b": 1}}) == (True, True)
    assert check({"a": (1,)}) == (False, True)
    assert check(({"a": {"b": 1}},)) == (False, True)


def test_walks_deeper_than_the_limit_are_unknown(make):
    from fastgate._core.policy_py import MAX_WALK_DEPTH
    doc: Any = {"k": 1}
    for _ in range(MAX_WALK_DEPTH + 5):
        doc = {"n": doc}
    check = _grant_and_deny(make, "$..k", "==", 1)
    assert check(doc) == (False, True)
    check = _grant_and_deny(make, "$..k", "exists", True)
    assert check(doc) == (False, True)
    shallow: Any = {"k": 1}
    for _ in range(MAX_WALK_DEPTH - 5):
        shallow = {"n": shallow}
    assert _grant_and_deny(make, "$..k", "==", 1)(shallow) == (True, True)
    long_selector = "$" + ".n" * (MAX_WALK_DEPTH + 5) + ".k"
    assert _grant_and_deny(make, long_selector, "==", 1)(doc) == (False, True)
    assert _grant_and_deny(make, long_selector, "exists", False)(doc) == (False, True)


# --------------------------------------------------------------------------- other sources

def test_repeated_query_keys_cannot_bypass(make):
    p = make([
        rule("small-pages", functions=["list_orders"], when=[{"query": "limit", "op": "in", "value": ["5", "10"]}]),
        rule("no-export", "deny", functions=["list_orders"], when=[{"query": "format", "op": "exists"},
                                                                    {"query": "format", "op": "==", "value": "csv"}]),
    ])

    def d(query):
        return p.decide("list_orders", ctx(query=query)).rule
    assert d({"limit": ["5"]}) == "small-pages"
    assert d({"limit": ["5", "10"]}) == "small-pages"
    assert d({"limit": ["5", "500"]}) is None                 # allow: every value must match
    assert d({"limit": ["500", "5"]}) is None
    assert d({"limit": []}) is None
    assert d({}) is None
    assert d({"limit": ["5"], "format": ["json", "csv"]}) == "no-export"   # deny: any value
    assert d({"limit": ["5"], "format": ["csv", "json"]}) == "no-export"
    assert d({"limit": ["5"], "format": ["json"]}) == "small-pages"
    assert d({"limit": ["5"], "format": []}) == "small-pages"  # an empty list is missing, like no key
    assert d({"limit": ("5", "10")}) == "small-pages"
    assert d({"limit": "5"}) == "small-pages"                 # a lone string is one value


def test_a_deny_condition_on_a_missing_value_fires_unless_guarded_by_exists(make):
    p = make([
        rule("open", functions=["list_orders"]),
        rule("bare", "deny", functions=["list_orders"], when=[{"query": "format", "op": "==", "value": "csv"}]),
        rule("guarded", "deny", functions=["cancel_order"], when=[
            {"query": "format", "op": "exists"}, {"query": "format", "op": "==", "value": "csv"}]),
        rule("open2", functions=["cancel_order"]),
    ])
    assert p.decide("list_orders", ctx(query={})).rule == "bare"
    assert p.decide("list_orders", ctx(query={"format": ["json"]})).rule == "open"
    assert p.decide("cancel_order", ctx(query={})).rule == "open2"
    assert p.decide("cancel_order", ctx(query={"format": ["csv"]})).rule == "guarded"


def test_query_and_header_values_are_strings(make):
    p = make([rule("r", functions=["list_orders"], when=[{"query": "limit", "op": "<=", "value": 10}])])
    assert p.decide("list_orders", ctx(query={"limit": ["5"]})).rule is None


def test_headers_by_lowercase_name_and_repeated(make):
    p = make([
        rule("tenant", functions=["list_orders"], when=[{"header": "X-Tenant", "op": "==", "value": "acme"}]),
        rule("no-override", "deny", functions=["*"],
             when=[{"header": "X-HTTP-Method-Override", "op": "exists"}]),
    ])

    def d(headers):
        return p.decide("list_orders", ctx(headers=headers)).rule
    assert d({"x-tenant": ["acme"]}) == "tenant"
    assert d({"x-tenant": ["acme", "evil"]}) is None
    assert d({"x-tenant": ["acme"], "x-http-method-override": ["DELETE"]}) == "no-override"
    assert d({"X-Tenant": ["acme"]}) is None                  # the pipeline lowercases names


def test_param_conditions(make):
    p = make([
        rule("a-orders", functions=["refund", "cancel_order"],
             when=[{"param": "order_id", "op": "prefix", "value": "A"}]),
        rule("no-b", "deny", functions=["cancel_order"], when=[{"param": "order_id", "op": "matches",
                                                                 "value": "B.*"}]),
    ])
    assert p.decide("refund", ctx(params={"order_id": "A17"})).rule == "a-orders"
    assert p.decide("refund", ctx(params={"order_id": "B17"})).rule is None
    assert p.decide("refund", ctx(params={"order_id": "%41"})).rule is None   # compared as matched
    assert p.decide("cancel_order", ctx(params={"order_id": "B1"})).rule == "no-b"
    assert p.decide("cancel_order", ctx(params={})).rule == "no-b"           # missing: deny fires


def test_claim_conditions(make):
    p = make([
        rule("tenant", functions=["refund"], when=[{"claim": "tenant", "op": "==", "value": "acme"}]),
        rule("level", functions=["list_orders"], when=[{"claim": "level", "op": ">=", "value": 3}]),
        rule("roles", functions=["cancel_order"], when=[{"claim": "roles", "op": "contains", "value": "admin"}]),
        rule("no-test", "deny", functions=["*"], when=[{"claim": "env", "op": "==", "value": "test"}]),
    ])
    base = {"env": "prod"}
    assert p.decide("refund", ctx(claims={**base, "tenant": "acme"})).rule == "tenant"
    assert p.decide("refund", ctx(claims={**base, "tenant": ["acme"]})).rule is None
    assert p.decide("list_orders", ctx(claims={**base, "level": 3})).rule == "level"
    assert p.decide("list_orders", ctx(claims={**base, "level": "3"})).rule is None
    assert p.decide("cancel_order", ctx(claims={**base, "roles": ["user", "admin"]})).rule == "roles"
    assert p.decide("cancel_order", ctx(claims={**base, "roles": "superadmin"})).rule == "roles"
    assert p.decide("refund", ctx(claims={"tenant": "acme"})).rule == "no-test"   # env missing: deny
    assert p.decide("refund", ctx(claims={"tenant": "acme", "env": 1})).rule == "no-test"


def test_claims_from_a_read_only_mapping(make):
    from types import MappingProxyType
    p = make([rule("tenant", when=[{"claim": "tenant", "op": "==", "value": "acme"}])])
    assert p.decide("refund", ctx(claims=MappingProxyType({"tenant": "acme"}))).allowed


def test_all_conditions_must_hold(make):
    p = make([rule("r", when=[{"arg": "$.amount", "op": "<=", "value": 100},
                              {"arg": "$.currency", "op": "in", "value": ["USD", "EUR"]}])])
    assert p.decide("refund", ctx(args={"amount": 5, "currency": "USD"})).allowed
    assert not p.decide("refund", ctx(args={"amount": 5, "currency": "GBP"})).allowed
    assert not p.decide("refund", ctx(args={"amount": 500, "currency": "USD"})).allowed


# --------------------------------------------------------------------------- explain

def test_explain_reports_matched_and_near(make):
    p = make([
        rule("support-small-refunds", groups=["support"], when=[{"arg": "$.amount", "op": "<=", "value": 100}]),
        rule("support-large-refunds", "approve", groups=["support"],
             when=[{"arg": "$.amount", "op": ">", "value": 100}]),
        rule("no-interns", "deny", functions=["*"], groups=["interns"]),
        rule("open", functions=["refund"], authenticated=True, when=[{"arg": "$.currency", "op": "==",
                                                                       "value": "USD"}]),
    ])
    out = p.explain("refund", ctx(args={"amount": 150}))
    assert out["decision"] == "approve" and out["rule"] == "support-large-refunds"
    assert out["matched"] == ["support-large-refunds"]
    assert out["near"] == [
        {"rule": "no-interns", "effect": "deny", "failed": "caller 'alice' is not in groups ['interns']",
         "failures": 1},
        {"rule": "open", "effect": "allow", "failed": "when[0]: $.currency is missing", "failures": 1},
        {"rule": "support-small-refunds", "effect": "allow", "failed": "when[0]: $.amount 150 <= 100 is false",
         "failures": 1},
    ]
    out = p.explain("refund", ctx(args={"amount": "150"}, groups=("support",)))
    assert out["decision"] == "deny" and out["rule"] is None
    near = {n["rule"]: n["failed"] for n in out["near"]}
    assert near["support-small-refunds"] == 'when[0]: $.amount "150" <= 100 is unknown: string, not a number'
    assert near["support-large-refunds"] == 'when[0]: $.amount "150" > 100 is unknown: string, not a number'
    assert p.explain("nope", ctx()) == {"function": "nope", "decision": "deny", "rule": None,
                                        "reason": "unknown function", "matched": [], "near": []}


def test_explain_multiple_values_and_deny_failures(make):
    p = make([
        rule("each", functions=["list_orders"], when=[{"arg": "$.items[*].n", "op": "<", "value": 10}]),
        rule("stop", "deny", functions=["list_orders"], when=[{"query": "format", "op": "==", "value": "csv"}]),
        rule("present", "deny", functions=["list_orders"], when=[{"arg": "$.x", "op": "exists"}]),
        rule("anon", "deny", functions=["list_orders"], authenticated=True,
             when=[{"arg": "$.y", "op": "exists", "value": False}]),
    ])
    out = p.explain("list_orders", ctx(args={"items": [{"n": 1}, {"n": 50}], "y": 1},
                                       query={"format": ["json", "xml"]}))
    near = {n["rule"]: n["failed"] for n in out["near"]}
    assert near == {
        "each": "when[0]: $.items[*].n 50 < 10 is false (value 2 of 2; every value must match)",
        "stop": 'when[0]: query format "json" == "csv" is false (all 2 values)',
        "present": "when[0]: $.x is missing (exists is false)",
        "anon": "when[0]: $.y exists",
    }
    assert p.explain("list_orders", ctx(authenticated=False, args={}))["near"][0] == {
        "rule": "anon", "effect": "deny", "failed": "caller is not authenticated", "failures": 1}


def test_explain_agrees_with_decide(make):
    p = make([rule("a", groups=["support"]), rule("b", "deny", when=[{"arg": "$.x", "op": "==", "value": 1}]),
              rule("c", "approve", subjects=["bob"])])
    for c in (ctx(args={"x": 1}), ctx(args={"x": 2}), ctx(subject="bob", args={"x": 2}), ANON):
        out = p.explain("refund", c)
        d = p.decide("refund", c)
        assert (out["decision"], out["rule"], out["reason"]) == (d.effect, d.rule, d.reason)
        if d.rule is not None:
            assert out["matched"][0] == d.rule


# --------------------------------------------------------------------------- visible_functions

def test_visible_functions(make):
    p = make([
        rule("support-refunds", groups=["support"], when=[{"arg": "$.amount", "op": "<=", "value": 100}]),
        rule("lookup", functions=["lookup_customer"], authenticated=True),
        rule("list", functions=["list_orders"], groups=["support"],
             when=[{"claim": "tenant", "op": "==", "value": "acme"}]),
        rule("cancel", "approve", functions=["cancel_order"], groups=["support", "interns"]),
        rule("no-interns", "deny", functions=["cancel_order", "refund"], groups=["interns"]),
        rule("no-big", "deny", functions=["*"], when=[{"arg": "$.amount", "op": ">", "value": 1000}]),
        rule("no-test-tenant", "deny", functions=["lookup_customer"],
             when=[{"claim": "env", "op": "==", "value": "test"}]),
    ])
    assert p.visible_functions(ctx(claims={"tenant": "acme", "env": "prod"})) == {
        "refund", "lookup_customer", "list_orders", "cancel_order"}
    assert p.visible_functions(ctx(claims={"tenant": "other", "env": "prod"})) == {
        "refund", "lookup_customer", "cancel_order"}
    assert p.visible_functions(ctx(groups=("interns",), claims={"env": "prod"})) == {"lookup_customer"}
    assert p.visible_functions(ctx(claims={"env": "test"})) == {"refund", "cancel_order"}
    assert p.visible_functions(ctx(claims={})) == {"refund", "cancel_order"}    # env missing: deny holds
    assert p.visible_functions(ANON) == set()


# --------------------------------------------------------------------------- check_warnings

def test_check_warnings_quiet_for_a_sound_config():
    cfg = config([
        rule("support-small-refunds", groups=["support"], when=[{"arg": "$.amount", "op": "<=", "value": 100}]),
        rule("support-large-refunds", "approve", groups=["support"],
             when=[{"arg": "$.amount", "op": ">", "value": 100}]),
        rule("anyone", functions=["*"]),
        rule("no-interns", "deny", functions=["*"], groups=["interns"]),
        rule("range", functions=["list_orders"], when=[{"arg": "$.n", "op": ">", "value": 1},
                                                       {"arg": "$.n", "op": "<=", "value": 5}]),
        rule("deny-any", "deny", functions=["list_orders"], when=[
            {"arg": "$.items[*].n", "op": "<", "value": 1}, {"arg": "$.items[*].n", "op": ">", "value": 5}]),
    ])
    assert check_warnings(cfg) == []


def test_check_warnings_finds_dead_rules_and_unreachable_functions():
    cfg = config([
        rule("glob-nothing", functions=["nothing*"]),
        rule("contradict", when=[{"arg": "$.amount", "op": "<=", "value": 1},
                                 {"arg": "$.amount", "op": ">", "value": 5}]),
        rule("two-eq", functions=["list_orders"], when=[{"arg": "$.a", "op": "==", "value": "x"},
                                                         {"arg": "$.a", "op": "==", "value": "y"}]),
        rule("eq-not-in", functions=["list_orders"], when=[{"arg": "$.a", "op": "==", "value": "x"},
                                                            {"arg": "$.a", "op": "in", "value": ["y"]}]),
        rule("query-number", functions=["list_orders"], when=[{"query": "limit", "op": "<", "value": 10}]),
        rule("header-number", "deny", functions=["list_orders"],
             when=[{"header": "x-n", "op": "==", "value": 5}]),
        rule("empty-in", functions=["cancel_order"], when=[{"arg": "$.a", "op": "in", "value": []}]),
        rule("deny-contradict", "deny", functions=["cancel_order"], when=[
            {"arg": "$.n", "op": "<", "value": 1}, {"arg": "$.n", "op": ">", "value": 5}]),
        rule("exists-both", "deny", functions=["cancel_order"], when=[
            {"arg": "$.n", "op": "exists"}, {"arg": "$.n", "op": "exists", "value": False}]),
        rule("blanket", "deny", functions=["lookup_customer"]),
        rule("ok", functions=["lookup_customer"]),
    ])
    assert check_warnings(cfg) == [
        "rules[0] (glob-nothing): functions[0] 'nothing*' matches no function",
        "rules[0] (glob-nothing): the rule applies to no function and can never match",
        ("rules[1] (contradict): when[0], when[1] on $.amount contradict (the numeric bounds leave no value): "
        "the rule can never match"),
        "rules[2] (two-eq): when[0], when[1] on $.a contradict (two different '==' values): the rule can never match",
        ("rules[3] (eq-not-in): when[0], when[1] on $.a contradict ('== \"x\"' is not in [\"y\"]): the rule can "
        "never match"),
        ("rules[4] (query-number): when[0] can never be true (query values are strings, and < compares numbers): "
        "the rule can never match"),
        ("rules[5] (header-number): when[0] is always unknown (header values are strings, and 5 has none), so it "
        "always holds for this deny rule"),
        "rules[6] (empty-in): when[0] 'in []' is never true: the rule can never match",
        ("rules[7] (deny-contradict): when[0], when[1] on $.n contradict (the numeric bounds leave no value): the "
        "rule matches only when $.n is missing or of another type"),
        ("rules[8] (exists-both): when[0], when[1] on $.n contradict ('exists: true' and 'exists: false'): the "
        "rule can never match"),
        "functions[0] (refund): no allow or approve rule can match; every call is denied",
        "functions[1] (list_orders): no allow or approve rule can match; every call is denied",
        "functions[2] (cancel_order): no allow or approve rule can match; every call is denied",
        "functions[3] (lookup_customer): rule 'blanket' denies every call",
    ]


def test_check_warnings_more_contradictions():
    def warn(when: list[dict]) -> list[str]:
        return [w for w in check_warnings(config([rule("r", when=when)])) if w.startswith("rules")]
    assert warn([{"arg": "$.a", "op": "==", "value": 1}, {"arg": "$.a", "op": "!=", "value": 1.0}])
    assert warn([{"arg": "$.a", "op": "==", "value": 7}, {"arg": "$.a", "op": "<", "value": 5}])
    assert warn([{"arg": "$.a", "op": ">=", "value": 5}, {"arg": "$.a", "op": "<", "value": 5}])
    assert not warn([{"arg": "$.a", "op": ">=", "value": 5}, {"arg": "$.a", "op": "<=", "value": 5}])
    assert warn([{"arg": "$.a", "op": "==", "value": "x"}, {"arg": "$.a", "op": "not_in", "value": ["x"]}])
    assert warn([{"arg": "$.a", "op": "exists", "value": False}, {"arg": "$.a", "op": "==", "value": 1}])
    assert warn([{"arg": "$.a", "op": "==", "value": math.nan}])
    assert not warn([{"arg": "$.a", "op": "==", "value": 1}, {"arg": "$.b", "op": "==", "value": 2}])
    assert not warn([{"arg": "$.a", "op": "==", "value": 1}, {"arg": "$.a", "op": "in", "value": [1.0, 2]}])


def test_policy_public_interface():
    p = Policy.from_config(config([rule("r")]))
    assert p.decide("refund", ctx()).allowed
    assert p.implementation in ("compiled", "python")
    assert type(p).__name__ == "Policy"
    with pytest.raises(AttributeError):
        p.decide("refund", ctx()).effect = "deny"  # type: ignore[misc]
