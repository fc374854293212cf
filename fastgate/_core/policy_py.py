"""Reference policy engine: the specification the compiled `policy` core must reproduce.

This module owns the value types the data path sees (`Decision`, `CallContext`, `MISSING`),
the compiled-table format both engines consume (`RuleSpec`, `CondSpec`, `Tables`; built by
`fastgate.policy.compile_tables`), and `Engine`, whose `decide()` is written for clarity,
not speed. The compiled `fastgate._core.policy` has the same names and must give the same
`Decision` for every input; tests/test_policy_parity.py checks that with hypothesis.

The semantics are documented in `fastgate.policy`. In short, every condition evaluates
each selected value ("leaf") to true / false / unknown; a deny rule needs ANY leaf true or
unknown (no leaf at all counts as one missing leaf), an allow or approve rule needs EVERY leaf
true (and at least one). `exists` looks only at presence and is never unknown.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "MAX_MATCH_CHARS",
    "MAX_WALK_DEPTH",
    "MISSING",
    "CallContext",
    "CondSpec",
    "Decision",
    "Engine",
    "RuleSpec",
    "Tables",
]

# Sources, step kinds, operators and JSON kinds as small ints: the compiled core switches on them.
ARG, PARAM, QUERY, HEADER, CLAIM = range(5)
SOURCE_NAMES = ("arg", "param", "query", "header", "claim")
ATTRS = ("args", "params", "query", "headers", "claims")     # where each source lives on CallContext
KEY, INDEX, WILDCARD, DESCEND = range(4)
STEP_KINDS = {"key": KEY, "index": INDEX, "wildcard": WILDCARD, "descend": DESCEND}
EQ, NE, LT, LE, GT, GE, IN, NOT_IN, PREFIX, SUFFIX, CONTAINS, MATCHES, EXISTS = range(13)
OP_NAMES = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "prefix", "suffix", "contains", "matches",
            "exists")
OPS = {name: i for i, name in enumerate(OP_NAMES)}
K_NULL, K_BOOL, K_NUM, K_STR, K_ARR, K_OBJ, K_OTHER = range(7)
KIND_NAMES = ("null", "boolean", "number", "string", "array", "object", "non-JSON value")
F, T, U = 0, 1, 2          # a leaf's outcome: false, true, unknown

MAX_MATCH_CHARS = 4096     # `matches` on a longer string is unknown: bounds regex work per call
MAX_WALK_DEPTH = 128       # a selector walking deeper than this yields an unknown leaf


class _Missing:
    """No value: the function has no body, or a selector / key found nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


class _TooDeep:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TOO_DEEP"


MISSING: Any = _Missing()
TOO_DEEP: Any = _TooDeep()
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one call. Preallocated per rule: compare with ==, never mutate."""

    effect: str                 # "allow" | "deny" | "approve"
    rule: str | None            # deciding rule id; None when nothing matched (default deny)
    reason: str = ""            # short, for people
    approval: Any = None        # the rule's ApprovalSpec when effect == "approve"

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


class CallContext:
    """What the pipeline knows about one call; the engines only read attributes.

    `args` is the parsed JSON body / MCP arguments, or MISSING. `params` are path parameters as
    the catalog matched them; `query` and `headers` map a key (header names lowercase) to the
    list of its values in request order; `claims` are the verified token's claims.
    """

    __slots__ = ("args", "authenticated", "claims", "groups", "headers", "params", "query", "subject")

    def __init__(self, subject: str = "anonymous", groups: frozenset[str] = frozenset(),
                 authenticated: bool = False, claims: Mapping[str, Any] = _EMPTY, args: Any = MISSING,
                 params: Mapping[str, str] = _EMPTY, query: Mapping[str, list[str]] = _EMPTY,
                 headers: Mapping[str, list[str]] = _EMPTY) -> None:
        self.subject = subject
        self.groups = groups
        self.authenticated = authenticated
        self.claims = claims
        self.args = args
        self.params = params
        self.query = query
        self.headers = headers

    def __repr__(self) -> str:
        return (f"CallContext(subject={self.subject!r}, groups={set(self.groups)!r}, "
                f"authenticated={self.authenticated!r}, args={self.args!r})")


# --------------------------------------------------------------------------- table format

@dataclass(frozen=True, slots=True)
class CondSpec:
    """One `when` entry, compiled. `deny` is the owning rule's effect: it picks the quantifier."""

    index: int                  # position in the rule's `when`
    source: int                 # ARG .. CLAIM
    key: str                    # selector text, parameter, query key, lowercase header, claim name
    steps: tuple[tuple[int, Any], ...]   # ARG only: (KEY|INDEX|WILDCARD|DESCEND, name or index)
    op: int                     # EQ .. EXISTS
    value: Any
    regex: Any                  # compiled pattern for MATCHES, else None
    deny: bool

    @property
    def label(self) -> str:
        return self.key if self.source == ARG else f"{SOURCE_NAMES[self.source]} {self.key}"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    index: int                  # position in config.rules
    id: str
    effect: str
    functions: tuple[str, ...]  # names and globs as written
    groups: frozenset[str]
    subjects: frozenset[str]
    authenticated: bool
    conditions: tuple[CondSpec, ...]
    decision: Decision


@dataclass(frozen=True, slots=True)
class Tables:
    """`functions` maps every configured function to its candidate rules, deny first, then
    approve, then allow, each group by rule id: the first rule that matches decides."""

    functions: Mapping[str, tuple[RuleSpec, ...]]
    rules: tuple[RuleSpec, ...] = ()            # config order, for explain and warnings
    default: Decision = Decision("deny", None, "no rule allows this call")
    unknown: Decision = Decision("deny", None, "unknown function")
    needs: Mapping[str, int] = field(default_factory=dict)   # function -> NEEDS_* bits


NEEDS_ARGS, NEEDS_QUERY, NEEDS_HEADERS = 1, 2, 4


# --------------------------------------------------------------------------- values

def kind(x: Any) -> int:
    """JSON kind by exact type: subclasses (IntEnum, str subclasses, tuples) are not JSON."""
    t = type(x)
    if x is None:
        return K_NULL
    if t is str:
        return K_STR
    if t is int or t is float:
        return K_NUM
    if t is bool:
        return K_BOOL
    if t is list:
        return K_ARR
    if t is dict:
        return K_OBJ
    return K_OTHER


def finite(x: Any) -> bool:
    """A number fits a double: NaN, +-inf and integers beyond +-1.8e308 do not."""
    if type(x) is float:
        return math.isfinite(x)
    try:
        float(x)
    except OverflowError:
        return False
    return True


def deep_equal(a: Any, b: Any) -> bool:
    """Strict JSON equality inside arrays and objects: true != 1, "1" != 1, 1 == 1.0."""
    ka, kb = kind(a), kind(b)
    if ka != kb or ka == K_OTHER:
        return False
    if ka == K_ARR:
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if ka == K_OBJ:
        if len(a) != len(b):
            return False
        for k, v in a.items():
            if k not in b or not deep_equal(v, b[k]):
                return False
        return True
    if ka == K_NULL:
        return True
    if ka == K_BOOL:
        return a is b
    return bool(a == b)


def equal3(x: Any, v: Any) -> int:
    """`==` on one leaf: unknown for other kinds and for numbers that do not fit a double."""
    kx, kv = kind(x), kind(v)
    if kx == K_OTHER or kv == K_OTHER or kx != kv:
        return U
    if kx == K_NUM and not (finite(x) and finite(v)):
        return U
    return T if deep_equal(x, v) else F


def not3(o: int) -> int:
    return U if o == U else (F if o == T else T)


def any3(outcomes: Any) -> int:
    """Three-valued OR; an empty sequence is false."""
    result = F
    for o in outcomes:
        if o == T:
            return T
        if o == U:
            result = U
    return result


def test(cond: CondSpec, x: Any) -> int:
    """Outcome of one present value under the condition's operator (not `exists`)."""
    op, v = cond.op, cond.value
    if op == EQ:
        return equal3(x, v)
    if op == NE:
        return not3(equal3(x, v))
    if op == IN:
        return any3(equal3(x, e) for e in v)
    if op == NOT_IN:
        return not3(any3(equal3(x, e) for e in v))
    kx = kind(x)
    if op in (LT, LE, GT, GE):
        if kx != K_NUM or not finite(x):
            return U
        if op == LT:
            r = x < v
        elif op == LE:
            r = x <= v
        elif op == GT:
            r = x > v
        else:
            r = x >= v
        return T if r else F
    if op == PREFIX:
        return U if kx != K_STR else (T if x.startswith(v) else F)
    if op == SUFFIX:
        return U if kx != K_STR else (T if x.endswith(v) else F)
    if op == CONTAINS:
        if kx == K_STR:
            return U if kind(v) != K_STR else (T if v in x else F)
        if kx == K_ARR:
            return any3(equal3(e, v) for e in x)
        return U
    if op == MATCHES:
        if kx != K_STR or len(x) > MAX_MATCH_CHARS:
            return U
        return T if cond.regex.fullmatch(x) is not None else F
    raise AssertionError(f"unknown op {op}")


def outcome(cond: CondSpec, leaf: Any) -> int:
    if leaf is TOO_DEEP:
        return U
    if cond.op == EXISTS:
        return T if (leaf is not MISSING) == cond.value else F
    if leaf is MISSING:
        return U
    return test(cond, leaf)


# --------------------------------------------------------------------------- selection

def select(steps: tuple[tuple[int, Any], ...], root: Any) -> list[Any]:
    """Every leaf a selector reaches: values, MISSING where a path breaks, TOO_DEEP past the limit.

    A key on a non-object or absent key, an index on a non-array or out of range, and a
    wildcard on a scalar each give one MISSING leaf; a wildcard over an empty container and
    `..name` that finds nothing give no leaf at all (the caller treats that as missing).
    """
    out: list[Any] = []
    _walk(steps, root, 0, 0, out)
    return out


def _walk(steps: tuple[tuple[int, Any], ...], node: Any, i: int, depth: int, out: list[Any]) -> None:
    # Module-level, not a closure: a self-referencing closure is a reference cycle per call,
    # and the garbage collector pauses it would cause show up in the p99.
    if i == len(steps):
        out.append(node)
        return
    if depth > MAX_WALK_DEPTH:
        out.append(TOO_DEEP)
        return
    step, arg = steps[i]
    if step == KEY:
        if type(node) is dict and arg in node:
            _walk(steps, node[arg], i + 1, depth + 1, out)
        else:
            out.append(MISSING)
    elif step == INDEX:
        if type(node) is list and arg < len(node):
            _walk(steps, node[arg], i + 1, depth + 1, out)
        else:
            out.append(MISSING)
    elif step == WILDCARD:
        if type(node) is dict:
            for child in node.values():
                _walk(steps, child, i + 1, depth + 1, out)
        elif type(node) is list:
            for child in node:
                _walk(steps, child, i + 1, depth + 1, out)
        else:
            out.append(MISSING)
    else:
        _descend(steps, node, arg, i + 1, depth, out)


def _descend(steps: tuple[tuple[int, Any], ...], node: Any, name: str, nxt: int, depth: int,
             out: list[Any]) -> None:
    # Pre-order: the node's own `name` member, then every child container.
    if depth > MAX_WALK_DEPTH:
        out.append(TOO_DEEP)
        return
    if type(node) is dict:
        if name in node:
            _walk(steps, node[name], nxt, depth + 1, out)
        children: Any = node.values()
    elif type(node) is list:
        children = node
    else:
        return
    for child in children:
        t = type(child)
        if t is dict or t is list:
            _descend(steps, child, name, nxt, depth + 1, out)


def leaves(cond: CondSpec, ctx: Any) -> list[Any]:
    """The condition's leaves for this call; never empty (nothing selected = one MISSING)."""
    src = cond.source
    if src == ARG:
        args = ctx.args
        found = [MISSING] if args is MISSING else select(cond.steps, args)
    else:
        value = getattr(ctx, ATTRS[src]).get(cond.key, MISSING)
        if src in (QUERY, HEADER) and type(value) in (list, tuple):
            found = list(value)
        else:
            found = [value]
    return found or [MISSING]


def condition_matches(cond: CondSpec, ctx: Any) -> bool:
    """Deny: any leaf true or unknown. Allow / approve: every leaf true."""
    outcomes = [outcome(cond, leaf) for leaf in leaves(cond, ctx)]
    if cond.deny:
        return any(o != F for o in outcomes)
    return all(o == T for o in outcomes)


def principal_matches(rule: RuleSpec, ctx: Any) -> bool:
    """groups (any overlap) OR subjects (subject listed); AND authenticated when required."""
    if rule.groups or rule.subjects:
        ok = bool(rule.groups) and not rule.groups.isdisjoint(ctx.groups)
        if not ok and rule.subjects:
            ok = ctx.subject in rule.subjects
        if not ok:
            return False
    return not rule.authenticated or bool(ctx.authenticated)


def rule_matches(rule: RuleSpec, ctx: Any) -> bool:
    return principal_matches(rule, ctx) and all(condition_matches(c, ctx) for c in rule.conditions)


class Engine:
    """`decide(function, ctx)`: the first matching candidate decides; none -> tables.default."""

    def __init__(self, tables: Tables) -> None:
        self._functions = dict(tables.functions)
        self._default = tables.default
        self._unknown = tables.unknown

    def decide(self, function: str, ctx: Any) -> Decision:
        rules = self._functions.get(function)
        if rules is None:
            return self._unknown
        for rule in rules:
            if rule_matches(rule, ctx):
                return rule.decision
        return self._default
