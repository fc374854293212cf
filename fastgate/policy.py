"""Decision stage: who may call which function, with which arguments, and with what effect.

The configuration compiles once (`compile_tables`) into a table per function; `Policy.decide()`
runs on it for every call and returns a preallocated `Decision`. The hot path is the compiled
core `fastgate._core.policy` (Cython); `fastgate._core.policy_py` is its pure-Python twin and
the executable specification. `fastgate._core.load("policy")` picks one.

Semantics
=========

**Which rules apply.** A rule is a *candidate* for a function when one of its `functions`
entries is the function's name or a `*` glob matching it (`*` matches any run of characters).
Globs are resolved when the config is compiled, so rules for other functions cost nothing.

**Who.** `groups` matches when the caller is in at least one listed group; `subjects` when the
caller's subject is listed. When a rule has both, either is enough. `authenticated: true`
additionally requires a caller that is not anonymous. A rule with none of the three matches
every caller, anonymous ones included.

**Decision.** Among the candidates whose principal test passes and whose every `when`
condition holds: any `deny` wins, then any `approve`, then any `allow`; no match is a deny with
`rule: null`. Rule order never matters: among several matching rules of the winning effect the
smallest rule id is reported.

**Values.** A condition reads its source:

* `arg`: the parsed JSON body or MCP arguments, through a selector: `$.a.b`, `$.a[0]`,
  `$.a[*].b` / `$.a.*` (every element or member value), `$..key` (every `key` at any depth,
  including inside a matched value). A broken path (absent key, index out of range, a key on
  a non-object) is *missing*; so is an empty `[*]` or a `..key` that finds nothing, and every
  `arg` of a call without a parsed body.
* `param`: the path parameter as the catalog matched it (normalized, still percent-encoded).
* `query`: every value of the key, percent-decoded (`?a=1&a=2` gives two values); `header`:
  every value of the (case-insensitive) header. Both are always strings.
* `claim`: the verified token's claim of that name (top level; any JSON value).

Each selected value is tested on its own ("leaf"), and each test is **true**, **false** or
**unknown**:

* `==` / `!=`: strict JSON types. `"100" == 100` is unknown, `true == 1` is unknown,
  `1 == 1.0` is true. Arrays and objects compare structurally, with the same strictness inside
  (`[true] == [1]` is false). `!=` is the negation, so unknown stays unknown.
* `in` / `not_in`: `==` against each list element, combined with three-valued OR (true if any
  is true, else unknown if any is unknown, else false; `in []` is false). `not_in` negates it.
* `<` `<=` `>` `>=`: only between numbers. A boolean is not a number. NaN, +-Infinity and
  integers beyond the double range (+-1.8e308) are unknown.
* `prefix` / `suffix`: on strings. `contains`: substring on strings, element `==` (as for
  `in`) on arrays. `matches`: the whole string must match the regex (`fullmatch`); a string
  longer than 4096 characters is unknown.
* Any other type, a missing value, or a number that does not fit a double: unknown.
* `exists: true` / `false` only asks whether the leaf is present; it is never unknown.

**Fail closed.** Leaves combine per rule effect, so that doubt never opens a door:

* deny rules: the condition holds if ANY leaf is true or unknown (a missing value counts).
* allow and approve rules: the condition holds only if EVERY leaf is true (and there is one).

Examples, with the contract's `support-small-refunds` (allow, `$.amount <= 100`):

| body | leaf | allow holds? | a deny `$.amount > 1000` holds? |
| --- | --- | --- | --- |
| `{"amount": 50}` | true | yes | no (false) |
| `{"amount": "50"}` | unknown (string) | no | yes (unknown) |
| `{}` / no body | missing | no | yes |
| `{"amount": [50]}` | unknown (array) | no | yes |
| `{"amount": 1e400}` | refused by `parse_args` | | |

More examples:

* `$.items[*].amount <= 100` (allow) admits `[{"amount":5},{"amount":7}]` but not
  `[{"amount":5},{"amount":500}]`, `[{"amount":5},{}]` or `[]`; a deny on
  `$.items[*].amount > 1000` fires if any item is above 1000, lacks `amount`, or has a string.
* A query key given twice (`?limit=5&limit=500`) is two leaves: an allow on `limit == "5"`
  fails, a deny on `limit == "500"` fires.
* `exists: true` under allow needs every leaf present, under deny one present leaf is enough;
  `exists: false` is the mirror image (allow: none present; deny: any missing).
* `"b" in [1, "a"]` is unknown (one comparison is across types), `"b" in ["a"]` is false.
* A deny condition on an optional value also fires when the value is absent:
  `{query: format, op: ==, value: csv}` in a deny rule denies calls without `format`. Guard it
  with `exists` when absence is fine: `[{query: format, op: exists}, {query: format, op: ==,
  value: csv}]`.
* An approve rule is a grant: `$.items[*].amount > 100` approves only when every item is
  above 100; a mixed basket matches neither that rule nor an allow on `<= 100`, and is denied.

Selectors deeper than 128 levels yield an unknown leaf (`parse_args` refuses bodies deeper
than 64 levels before that matters).

`visible_functions(ctx)` (for MCP `tools/list`) answers the functions for which some allow or
approve rule passes the caller's principal test and its `claim` conditions (other sources are
assumed satisfiable), unless a deny rule that passes the principal test and has only `claim`
conditions, all holding, denies every call of this caller.
"""
from __future__ import annotations

import json
import math
from functools import cache
from types import ModuleType
from typing import Any

from fastgate._core import IMPLEMENTATIONS, load
from fastgate._core.policy_py import (
    ARG,
    CLAIM,
    CONTAINS,
    DESCEND,
    EQ,
    EXISTS,
    GE,
    GT,
    HEADER,
    IN,
    K_ARR,
    K_NUM,
    K_OTHER,
    K_STR,
    KIND_NAMES,
    LE,
    LT,
    MATCHES,
    MAX_MATCH_CHARS,
    MISSING,
    NE,
    NEEDS_ARGS,
    NEEDS_HEADERS,
    NEEDS_QUERY,
    NOT_IN,
    OP_NAMES,
    OPS,
    PARAM,
    PREFIX,
    QUERY,
    SOURCE_NAMES,
    STEP_KINDS,
    SUFFIX,
    TOO_DEEP,
    WILDCARD,
    CallContext,
    CondSpec,
    Decision,
    RuleSpec,
    Tables,
    U,
    condition_matches,
    deep_equal,
    equal3,
    finite,
    kind,
    leaves,
    outcome,
    principal_matches,
)
from fastgate.config import glob_match

__all__ = [
    "MISSING",
    "CallContext",
    "Decision",
    "Policy",
    "Tables",
    "check_warnings",
    "compile_tables",
    "policy_class",
]

_core = load("policy")
IMPLEMENTATION = IMPLEMENTATIONS["policy"]

RANK = {"deny": 0, "approve": 1, "allow": 2}
REASONS = {"deny": "denied by rule {}", "approve": "approval required by rule {}", "allow": "allowed by rule {}"}
MAX_NEAR = 10


# --------------------------------------------------------------------------- compile

def _compile_condition(index: int, cond: Any, deny: bool) -> CondSpec:
    kind_name, key = cond.source
    source = SOURCE_NAMES.index(kind_name)
    steps: tuple[tuple[int, Any], ...] = ()
    if source == ARG:
        steps = tuple((STEP_KINDS[step], arg) for step, arg in cond.selector)
    if source == HEADER:
        key = key.lower()
    return CondSpec(index=index, source=source, key=key, steps=steps, op=OPS[cond.op], value=cond.value,
                    regex=cond.regex if cond.op == "matches" else None, deny=deny)


def _compile_rule(index: int, rule: Any) -> RuleSpec:
    deny = rule.effect == "deny"
    return RuleSpec(
        index=index, id=rule.id, effect=rule.effect, functions=tuple(rule.functions),
        groups=frozenset(rule.groups), subjects=frozenset(rule.subjects),
        authenticated=bool(rule.authenticated),
        conditions=tuple(_compile_condition(k, c, deny) for k, c in enumerate(rule.when)),
        decision=Decision(rule.effect, rule.id, REASONS[rule.effect].format(rule.id),
                          rule.approval if rule.effect == "approve" else None))


def _priority(spec: RuleSpec) -> tuple[int, str]:
    return RANK[spec.effect], spec.id


def _needs(specs: tuple[RuleSpec, ...]) -> int:
    bits = 0
    for spec in specs:
        for c in spec.conditions:
            bits |= {ARG: NEEDS_ARGS, QUERY: NEEDS_QUERY, HEADER: NEEDS_HEADERS}.get(c.source, 0)
    return bits


def compile_tables(config: Any) -> Tables:
    """config.functions x config.rules -> per-function candidate tuples in decision order.

    Exact names index directly; each glob is matched once against every function name, so
    compile time is O(rules + globs x functions) and the per-call cost does not grow with
    rules that name other functions.
    """
    rules = tuple(_compile_rule(i, r) for i, r in enumerate(config.rules))
    names = [fn.name for fn in config.functions]
    chosen: dict[str, set[int]] = {name: set() for name in names}
    for spec in rules:
        for pattern in spec.functions:
            if "*" not in pattern:
                if pattern in chosen:
                    chosen[pattern].add(spec.index)
            elif pattern == "*":
                for bucket in chosen.values():
                    bucket.add(spec.index)
            else:
                for name in names:
                    if glob_match(pattern, name):
                        chosen[name].add(spec.index)
    functions = {name: tuple(sorted((rules[i] for i in picked), key=_priority))
                 for name, picked in chosen.items()}
    return Tables(functions=functions, rules=rules,
                  needs={name: _needs(specs) for name, specs in functions.items()})


# --------------------------------------------------------------------------- explain helpers

def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _why_unknown(cond: CondSpec, x: Any) -> str:
    kx = kind(x)
    if kx == K_NUM and not finite(x):
        return "not a finite number"
    if kx == K_OTHER:
        return f"{type(x).__name__} is not a JSON value"
    op = cond.op
    if op in (LT, LE, GT, GE):
        return f"{KIND_NAMES[kx]}, not a number"
    if op in (PREFIX, SUFFIX, MATCHES):
        if kx == K_STR:
            return f"longer than {MAX_MATCH_CHARS} characters"
        return f"{KIND_NAMES[kx]}, not a string"
    if op == CONTAINS:
        if kx not in (K_STR, K_ARR):
            return f"{KIND_NAMES[kx]}, not a string or array"
        return "compared with a value of another type"
    if op in (EQ, NE) and kind(cond.value) != kx:
        return f"{KIND_NAMES[kx]}, not {KIND_NAMES[kind(cond.value)]}"
    return "compared with a value of another type"


def _condition_failure(cond: CondSpec, ctx: Any) -> str | None:
    found = leaves(cond, ctx)
    outcomes = [outcome(cond, leaf) for leaf in found]
    holds = any(o != 0 for o in outcomes) if cond.deny else all(o == 1 for o in outcomes)
    if holds:
        return None
    prefix = f"when[{cond.index}]: {cond.label}"
    many = len(found) > 1
    if cond.deny:
        # Every leaf was false: report the first.
        leaf = found[0]
        if cond.op == EXISTS:
            return f"{prefix} is missing (exists is false)" if cond.value else f"{prefix} exists"
        tail = f" (all {len(found)} values)" if many else ""
        return f"{prefix} {_show(leaf)} {OP_NAMES[cond.op]} {_show(cond.value)} is false{tail}"
    # A grant: report the first leaf that was not true.
    pos = next(i for i, o in enumerate(outcomes) if o != 1)
    leaf, o = found[pos], outcomes[pos]
    tail = f" (value {pos + 1} of {len(found)}; every value must match)" if many else ""
    if cond.op == EXISTS:
        what = "is missing" if cond.value else "exists"
        return f"{prefix} {what}{tail}"
    if leaf is MISSING:
        return f"{prefix} is missing{tail}"
    if leaf is TOO_DEEP:
        return f"{prefix} is nested too deeply (unknown){tail}"
    expr = f"{prefix} {_show(leaf)} {OP_NAMES[cond.op]} {_show(cond.value)}"
    if o == U:
        return f"{expr} is unknown: {_why_unknown(cond, leaf)}{tail}"
    return f"{expr} is false{tail}"


def _principal_failure(spec: RuleSpec, ctx: Any) -> str | None:
    if principal_matches(spec, ctx):
        return None
    if spec.groups or spec.subjects:
        ok = bool(spec.groups) and not spec.groups.isdisjoint(ctx.groups)
        if not ok and spec.subjects:
            ok = ctx.subject in spec.subjects
        if not ok:
            parts = []
            if spec.groups:
                parts.append(f"groups {sorted(spec.groups)}")
            if spec.subjects:
                parts.append(f"subjects {sorted(spec.subjects)}")
            return f"caller {ctx.subject!r} is not in {' or '.join(parts)}"
    return "caller is not authenticated"


def _failures(spec: RuleSpec, ctx: Any) -> list[str]:
    out = []
    who = _principal_failure(spec, ctx)
    if who is not None:
        out.append(who)
    for cond in spec.conditions:
        why = _condition_failure(cond, ctx)
        if why is not None:
            out.append(why)
    return out


# --------------------------------------------------------------------------- Policy

class _PolicyMethods:
    """Everything but `decide`, which the core's Engine provides."""

    __slots__ = ()
    tables: Tables
    implementation: str

    @classmethod
    def from_config(cls, config: Any) -> Any:
        return cls(compile_tables(config))  # type: ignore[call-arg]  # the Engine base takes tables

    def needs_args(self, function: str) -> bool:
        """Some candidate rule has an `arg` condition: the body must be parsed (and refused if bad)."""
        return bool(self.tables.needs.get(function, 0) & NEEDS_ARGS)

    def needs_query(self, function: str) -> bool:
        return bool(self.tables.needs.get(function, 0) & NEEDS_QUERY)

    def needs_headers(self, function: str) -> bool:
        return bool(self.tables.needs.get(function, 0) & NEEDS_HEADERS)

    def explain(self, function: str, ctx: Any) -> dict[str, Any]:
        """The decision, every matching rule, and for the nearest others the first failed check.

        `near` is ordered by how many checks failed, then effect (deny first) and id; each entry
        has `rule`, `effect`, `failed` (the first failing check) and `failures` (how many).
        """
        decision = self.decide(function, ctx)  # type: ignore[attr-defined]
        result: dict[str, Any] = {"function": function, "decision": decision.effect, "rule": decision.rule,
                                  "reason": decision.reason, "matched": [], "near": []}
        candidates = self.tables.functions.get(function)
        if candidates is None:
            return result
        near = []
        for spec in candidates:
            failed = _failures(spec, ctx)
            if not failed:
                result["matched"].append(spec.id)
            else:
                near.append((len(failed), RANK[spec.effect], spec.id, spec.effect, failed[0]))
        near.sort()
        result["near"] = [{"rule": rid, "effect": effect, "failed": first, "failures": n}
                          for n, _, rid, effect, first in near[:MAX_NEAR]]
        return result

    def visible_functions(self, ctx: Any) -> set[str]:
        """Functions this caller could be allowed or approved for (see the module docstring)."""
        out: set[str] = set()
        for name, candidates in self.tables.functions.items():
            granted = False
            for spec in candidates:
                if not principal_matches(spec, ctx):
                    continue
                claims = [c for c in spec.conditions if c.source == CLAIM]
                if not all(condition_matches(c, ctx) for c in claims):
                    continue
                if spec.effect == "deny":
                    if len(claims) == len(spec.conditions):
                        break  # denies every call of this caller: hidden
                else:
                    granted = True
            else:
                if granted:
                    out.add(name)
        return out


@cache
def policy_class(core: ModuleType) -> type:
    """A Policy whose `decide` is the given core's Engine.decide, inherited, not wrapped:
    the pipeline's call goes straight into the compiled method."""

    class Policy(_PolicyMethods, core.Engine):  # type: ignore[misc, name-defined]
        __slots__ = ("tables",)
        implementation = "python" if core.__name__.endswith("_py") else "compiled"

        def __init__(self, tables: Tables) -> None:
            core.Engine.__init__(self, tables)
            self.tables = tables

    Policy.__qualname__ = Policy.__name__ = "Policy"
    Policy.__module__ = __name__
    return Policy


Policy: Any = policy_class(_core)


# --------------------------------------------------------------------------- check

_STRING_SOURCES = (PARAM, QUERY, HEADER)


def _single_valued(cond: CondSpec) -> bool:
    if cond.source == ARG:
        return all(kind_ not in (WILDCARD, DESCEND) for kind_, _ in cond.steps)
    return cond.source in (PARAM, CLAIM)


def _always_unknown(cond: CondSpec) -> str | None:
    """Why no present value can ever make this condition true or false, if that is so."""
    op, v = cond.op, cond.value
    if op == EXISTS:
        return None
    values = v if op in (IN, NOT_IN) else [v]
    if values and all(kind(x) == K_OTHER or (kind(x) == K_NUM and not finite(x)) for x in values):
        return f"{_show(v)} is not a comparable JSON value"
    if cond.source in _STRING_SOURCES:
        src = SOURCE_NAMES[cond.source]
        if op in (LT, LE, GT, GE):
            return f"{src} values are strings, and {OP_NAMES[op]} compares numbers"
        if op in (EQ, NE, IN, NOT_IN) and values and all(kind(x) != K_STR for x in values):
            return f"{src} values are strings, and {_show(v)} has none"
        if op == CONTAINS and kind(v) != K_STR:
            return f"{src} values are strings, and {_show(v)} is not one"
    return None


def _never_true(cond: CondSpec) -> str | None:
    if cond.op == IN and cond.value == []:
        return "'in []' is never true"
    return None


def _contradiction(conds: list[CondSpec]) -> str | None:
    """Conditions on one source key that no single value satisfies together."""
    lo, lo_strict, hi, hi_strict = -math.inf, False, math.inf, False
    eqs: list[Any] = []
    exists = set()
    for c in conds:
        v = c.value
        if c.op == EXISTS:
            exists.add(bool(v))
        elif c.op in (GT, GE) and (v > lo or (v == lo and c.op == GT)):
            lo, lo_strict = v, c.op == GT
        elif c.op in (LT, LE) and (v < hi or (v == hi and c.op == LT)):
            hi, hi_strict = v, c.op == LT
        elif c.op == EQ:
            eqs.append(v)
    if exists == {True, False}:
        return "'exists: true' and 'exists: false'"
    if lo > hi or (lo == hi and (lo_strict or hi_strict)):
        return "the numeric bounds leave no value"
    for a in eqs:
        if any(equal3(a, b) != 1 for b in eqs):
            return "two different '==' values"
        if kind(a) == K_NUM and finite(a) and (
                a < lo or a > hi or (a == lo and lo_strict) or (a == hi and hi_strict)):
            return f"'== {_show(a)}' is outside the numeric bounds"
        for c in conds:
            if c.op == NE and deep_equal(a, c.value):
                return f"'== {_show(a)}' and '!= {_show(c.value)}'"
            if c.op == IN and isinstance(c.value, list) and not any(equal3(a, e) == 1 for e in c.value):
                return f"'== {_show(a)}' is not in {_show(c.value)}"
            if c.op == NOT_IN and isinstance(c.value, list) and any(equal3(a, e) == 1 for e in c.value):
                return f"'== {_show(a)}' is excluded by not_in {_show(c.value)}"
    if False in exists and any(c.op != EXISTS for c in conds):
        return "'exists: false' and a comparison that needs a value"
    return None


def _rule_warnings(spec: RuleSpec, names: list[str]) -> tuple[list[str], bool]:
    """(messages, can_match) for one rule."""
    where = f"rules[{spec.index}] ({spec.id})"
    out: list[str] = []
    dead = False
    patterns_matching = 0
    for k, pattern in enumerate(spec.functions):
        if "*" in pattern and not any(glob_match(pattern, n) for n in names):
            out.append(f"{where}: functions[{k}] {pattern!r} matches no function")
        elif "*" not in pattern or names:
            patterns_matching += 1
    if patterns_matching == 0:
        dead = True
        out.append(f"{where}: the rule applies to no function and can never match")
    grant = spec.effect != "deny"
    for c in spec.conditions:
        why = _always_unknown(c)
        if why is not None:
            if grant:
                dead = True
                out.append(f"{where}: when[{c.index}] can never be true ({why}): the rule can never match")
            else:
                out.append(f"{where}: when[{c.index}] is always unknown ({why}), so it always holds for this "
                           "deny rule")
            continue
        why = _never_true(c)
        if why is not None:
            if grant:
                dead = True
                out.append(f"{where}: when[{c.index}] {why}: the rule can never match")
            else:
                out.append(f"{where}: when[{c.index}] {why}: the rule matches only when {c.label} is missing "
                           "or of another type")
    groups: dict[tuple[int, str], list[CondSpec]] = {}
    for c in spec.conditions:
        if _always_unknown(c) is None:
            groups.setdefault((c.source, c.key), []).append(c)
    for conds in groups.values():
        if len(conds) < 2:
            continue
        why = _contradiction(conds)
        if why is None:
            continue
        label = conds[0].label
        at = ", ".join(f"when[{c.index}]" for c in conds)
        if grant:
            dead = True
            out.append(f"{where}: {at} on {label} contradict ({why}): the rule can never match")
        elif _single_valued(conds[0]):
            exist_only = all(c.op == EXISTS for c in conds)
            if exist_only:
                dead = True
                out.append(f"{where}: {at} on {label} contradict ({why}): the rule can never match")
            else:
                out.append(f"{where}: {at} on {label} contradict ({why}): the rule matches only when "
                           f"{label} is missing or of another type")
    return out, not dead


def check_warnings(config: Any) -> list[str]:
    """Rules that can never match (or only when a value is missing) and functions always denied.

    These are warnings, not errors: the config is valid and fails closed as written.
    """
    tables = compile_tables(config)
    names = [fn.name for fn in config.functions]
    out: list[str] = []
    viable: set[int] = set()
    for spec in tables.rules:
        messages, can_match = _rule_warnings(spec, names)
        out.extend(messages)
        if can_match:
            viable.add(spec.index)
    for j, name in enumerate(names):
        candidates = tables.functions.get(name, ())
        blanket = next((s for s in candidates if s.effect == "deny" and not s.conditions and not s.groups
                        and not s.subjects and not s.authenticated), None)
        if blanket is not None:
            out.append(f"functions[{j}] ({name}): rule {blanket.id!r} denies every call")
        elif not any(s.effect != "deny" and s.index in viable for s in candidates):
            out.append(f"functions[{j}] ({name}): no allow or approve rule can match; every call is denied")
    return out
