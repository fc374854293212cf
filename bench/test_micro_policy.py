"""Micro-benchmarks of the decision stage: one Policy.decide() per call.

Rule sets of 10, 1,000 and 10,000 rules, nearly all naming other functions (one function per
ten rules), plus the contract's two rules that reach `refund`: a `*` deny for interns and the
support allow, with or without the `$.amount <= 100` condition. The caller is in `support`,
so both candidates are evaluated on every call. Compiled core (`c`) vs reference (`py`).

pytest-benchmark reports the median per call; `extra_info` adds a p99 from a plain
perf_counter_ns loop of single calls, with the timer's own median cost subtracted (the
raw figure is kept beside it). The asserts only check that the benchmarked call did its job.
"""
from __future__ import annotations

import os
import time
from functools import cache

import pytest

from fastgate._core import compiled, reference
from fastgate.config import parse_config
from fastgate.jsonargs import parse_args
from fastgate.policy import CallContext, policy_class

CTX = CallContext(subject="alice", groups=frozenset({"support"}), authenticated=True, args={"amount": 50})
P99_CALLS = 200_000


def _core(impl: str):
    if impl == "py":
        return reference("policy")
    if os.environ.get("FASTGATE_NO_EXTENSIONS"):
        pytest.skip("FASTGATE_NO_EXTENSIONS is set")
    try:
        return compiled("policy")
    except ImportError:
        pytest.skip("compiled policy not built")


@cache
def _config(n_rules: int, condition: bool):
    others = max(1, n_rules // 10)
    functions = [{"name": f"fn{i}", "upstream": "u", "http": {"method": "POST", "path": f"/fn{i}"}}
                 for i in range(others)]
    functions.append({"name": "refund", "upstream": "u", "http": {"method": "POST", "path": "/refunds/{order_id}"}})
    rules = [{"id": f"r{i}", "functions": [f"fn{i % others}"], "groups": [f"g{i % 7}"], "effect": "allow"}
             for i in range(n_rules - 2)]
    rules.append({"id": "no-interns", "functions": ["*"], "groups": ["interns"], "effect": "deny"})
    target = {"id": "support-small-refunds", "functions": ["refund"], "groups": ["support"], "effect": "allow"}
    if condition:
        target["when"] = [{"arg": "$.amount", "op": "<=", "value": 100}]
    rules.append(target)
    return parse_config({"version": 1, "upstreams": {"u": {"url": "http://127.0.0.1:9"}},
                         "functions": functions, "rules": rules})


def _p99(decide, function: str, ctx: CallContext) -> tuple[float, float, float]:
    """(p99 - timer, raw p99, timer median) in ns over single calls."""
    clock = time.perf_counter_ns
    overhead = []
    for _ in range(20_000):
        t0 = clock()
        overhead.append(clock() - t0)
    overhead.sort()
    timer = overhead[len(overhead) // 2]
    samples = []
    append = samples.append
    for _ in range(P99_CALLS):
        t0 = clock()
        decide(function, ctx)
        append(clock() - t0)
    samples.sort()
    raw = samples[int(len(samples) * 0.99)]
    return raw - timer, raw, timer


@pytest.mark.parametrize("condition", [False, True], ids=["plain", "condition"])
@pytest.mark.parametrize("n_rules", [10, 1000, 10000])
@pytest.mark.parametrize("impl", ["c", "py"])
def test_decide(benchmark, impl, n_rules, condition):
    policy = policy_class(_core(impl)).from_config(_config(n_rules, condition))
    assert policy.decide("refund", CTX).rule == "support-small-refunds"
    p99, raw, timer = _p99(policy.decide, "refund", CTX)
    benchmark.extra_info.update({"p99_ns": p99, "p99_raw_ns": raw, "timer_ns": timer})
    benchmark.group = f"policy.decide {'with' if condition else 'without'} condition"
    decision = benchmark(policy.decide, "refund", CTX)
    assert decision.allowed
    print(f"\n{impl} {n_rules} rules {'condition' if condition else 'plain'}: p99 {p99:.0f} ns "
          f"(raw {raw} ns, timer {timer} ns)")


@pytest.mark.parametrize("impl", ["c", "py"])
def test_decide_default_deny(benchmark, impl):
    """The miss path: a caller no rule admits walks every candidate and gets the default."""
    policy = policy_class(_core(impl)).from_config(_config(1000, True))
    ctx = CallContext(subject="mallory", groups=frozenset({"guests"}), authenticated=True)
    benchmark.group = "policy.decide default deny"
    assert benchmark(policy.decide, "refund", ctx).rule is None


SMALL_BODY = b'{"amount": 50, "currency": "USD", "reason": "damaged item", "order_id": "A1"}'


@pytest.mark.parametrize("parser", ["parse_args", "orjson.loads"])
def test_parse_small_body(benchmark, parser):
    import orjson
    fn = parse_args if parser == "parse_args" else orjson.loads
    benchmark.group = "argument parsing (77-byte body)"
    assert benchmark(fn, SMALL_BODY)["amount"] == 50
