"""fastgate.config: every refusal names its key path, all problems are reported at once,
secrets are expanded but never leak into messages, units parse and round-trip."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fastgate.config import (
    Condition,
    Config,
    ConfigError,
    Upstream,
    config_json_schema,
    format_path,
    glob_match,
    load_config,
    parse_config,
    parse_duration,
    parse_hostport,
    parse_path_template,
    parse_selector,
    parse_size,
)
from fastgate.units import format_duration, format_size

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_ENV = {"BILLING_TOKEN": "billing-token-value", "FASTGATE_WEBHOOK_SECRET": "webhook-secret-value"}

BASE: dict = {
    "version": 1,
    "upstreams": {"billing": {"url": "http://127.0.0.1:9001"}},
    "functions": [
        {"name": "refund", "upstream": "billing", "http": {"method": "POST", "path": "/refunds/{order_id}"}},
        {"name": "lookup", "upstream": "billing", "mcp": {"endpoint": "/mcp", "tool": "lookup"}},
    ],
    "rules": [
        {"id": "r0", "functions": ["refund"], "groups": ["support"], "effect": "allow",
         "when": [{"arg": "$.amount", "op": "<=", "value": 100}]},
    ],
}


def build(*changes: tuple[str, object]) -> dict:
    """BASE with changes applied; a change is (dotted path with [i] indexes, value)."""
    data = copy.deepcopy(BASE)
    for path, value in changes:
        parts: list[str | int] = []
        for piece in path.replace("[", ".[").split("."):
            if piece:
                parts.append(int(piece[1:-1]) if piece.startswith("[") else piece)
        node = data
        for part in parts[:-1]:
            if isinstance(part, str) and part not in node:
                node[part] = {}
            node = node[part]
        if isinstance(parts[-1], int) and parts[-1] == len(node):
            node.append(value)
        else:
            node[parts[-1]] = value
    return data


def errors(data: dict, env: dict | None = None, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env if env is not None else {}, **kw)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def assert_error(data: dict, path: str, fragment: str = "", env: dict | None = None) -> list[str]:
    errs = errors(data, env)
    hits = [e for e in errs if e.startswith(f"{path}: ") and fragment in e]
    assert hits, f"no error at {path!r} containing {fragment!r}; got:\n" + "\n".join(errs)
    return errs


# ---- the shipped files -----------------------------------------------------------------------------------

def test_example_config_loads():
    config = load_config(REPO / "configs" / "example.yaml", env=EXAMPLE_ENV)
    assert config.version == 1 and config.listen_port == 8080
    assert config.upstreams["billing"].inject_headers["Authorization"].get_secret_value() == \
        "Bearer billing-token-value"
    assert config.approvals.notify is not None and config.approvals.notify.format == "slack"
    assert config.secret_values == frozenset(EXAMPLE_ENV.values())
    assert config.rules[1].approval is not None and config.rules[1].approval.timeout == 900.0
    assert config.store.map_size == 4 * 2**30 and config.limits.max_body_bytes == 2**20
    assert set(config.function_by_name) == {"refund", "lookup_customer"}


def test_example_config_needs_its_secrets():
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / "example.yaml", env={"BILLING_TOKEN": "x"})
    assert info.value.errors == [
        "approvals.notify.secret: environment variable FASTGATE_WEBHOOK_SECRET is not set"]


def test_demo_config_loads():
    config = load_config(REPO / "configs" / "demo.yaml", env={"FASTGATE_DEMO_UPSTREAM_TOKEN": "t0k", "FASTGATE_DEMO_JWKS": "/tmp/jwks.json"})
    assert config.listen == "127.0.0.1:8080"
    up = config.upstreams["demo"]
    assert (up.host, up.port) == ("127.0.0.1", 9001)
    assert up.inject_headers["Authorization"].get_secret_value() == "Bearer t0k"
    assert {"refund", "get_customer", "list_orders", "echo"} <= set(config.function_by_name)
    assert config.store.path.startswith("var/demo/")


# ---- defaults and derived values -------------------------------------------------------------------------

def test_minimal_config_has_documented_defaults():
    config = parse_config({"version": 1}, env={})
    assert (config.listen_host, config.listen_port, config.workers) == ("127.0.0.1", 8080, 1)
    lim = config.limits
    assert (lim.max_header_bytes, lim.max_header_count, lim.max_request_line_bytes, lim.max_body_bytes) == \
        (16384, 100, 8192, 2**20)
    assert (lim.header_timeout, lim.body_timeout, lim.idle_timeout, lim.upstream_timeout, lim.connect_timeout,
            lim.drain_timeout) == (10.0, 30.0, 60.0, 30.0, 5.0, 30.0)
    assert (lim.max_connections, lim.max_pipelined) == (10000, 32)
    assert config.store.durability == "sync" and config.audit.fail_closed is True
    assert config.audit.max_body_bytes == 65536 and config.identity.forward == "none"
    assert config.pii.mask == "[REDACTED:{type}]" and config.log.level == "info"
    assert config.secret_values == frozenset() and config.function_by_name == {}


def test_config_is_frozen():
    config = parse_config(BASE, env={})
    with pytest.raises(ValidationError):
        config.workers = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.upstreams["billing"].url = "http://x"  # type: ignore[misc]


@pytest.mark.parametrize("url, parts", [
    ("http://127.0.0.1:9001", ("http", "127.0.0.1", 9001, "")),
    ("https://API.example.com", ("https", "api.example.com", 443, "")),
    ("http://h/", ("http", "h", 80, "")),
    ("http://h:8080/base/v1/", ("http", "h", 8080, "/base/v1")),
    ("https://[::1]:8443/x", ("https", "::1", 8443, "/x")),
])
def test_upstream_url_parts(url, parts):
    up = Upstream(url=url)
    assert (up.scheme, up.host, up.port, up.base_path) == parts


def test_derived_route_and_condition_values():
    config = parse_config(BASE, env={})
    route = config.function_by_name["refund"].http
    assert route is not None
    assert route.params == ("order_id",) and route.shape == "/refunds/{}"
    cond = config.rules[0].when[0]
    assert cond.source == ("arg", "$.amount") and cond.selector == (("key", "amount"),)
    assert Condition(header="X-Tenant", op="exists").value is True
    assert Condition(query="q", op="matches", value="^a+$").regex.match("aa")  # type: ignore[union-attr]


def test_ipv6_listen():
    config = parse_config(build(("listen", "[::1]:0")), env={})
    assert (config.listen_host, config.listen_port) == ("::1", 0)


def test_secret_values_are_hidden_in_repr():
    data = build(("upstreams.billing.inject_headers", {"X-Key": "${env:K}"}))
    config = parse_config(data, env={"K": "hush-hush"})
    assert "hush-hush" not in repr(config) and "hush-hush" not in str(config.upstreams)


# ---- one refusal per rule, each at its key path ----------------------------------------------------------

JWT = {"issuer": "https://idp.example.com", "audiences": ["fastgate"]}
A = {"arg": "$.a"}
W = "rules[0].when[0]"
KEYS = "identity.api_keys"
HDRS = "upstreams.billing.inject_headers"

REFUSALS = [
    # top level
    ([("lisen", "x")], "lisen", "unknown key"),
    ([("version", 2)], "version", "unsupported config version"),
    ([("version", "1")], "version", "unsupported config version"),
    ([("version", True)], "version", "unsupported config version"),
    ([("listen", "localhost")], "listen", "HOST:PORT"),
    ([("listen", "::1:80")], "listen", "brackets"),
    ([("listen", "127.0.0.1:65536")], "listen", "port"),
    ([("listen", "bad host:80")], "listen", "not a valid host"),
    ([("tls", {"cert": "c.pem"})], "tls.key", "required key is missing"),
    ([("workers", 0)], "workers", "at least 1"),
    ([("workers", 257)], "workers", "at most 256"),
    ([("workers", True)], "workers", "expected an integer, got boolean"),
    ([("workers", "2")], "workers", "expected an integer, got string"),
    # limits
    ([("limits.max_body_bytes", "1 MB")], "limits.max_body_bytes", "invalid size"),
    ([("limits.max_body_bytes", 0)], "limits.max_body_bytes", "greater than 0"),
    ([("limits.header_timeout", "0s")], "limits.header_timeout", "greater than 0"),
    ([("limits.idle_timeout", "-5s")], "limits.idle_timeout", "invalid duration"),
    ([("limits.max_pipelined", 0)], "limits.max_pipelined", "at least 1"),
    ([("limits.nope", 1)], "limits.nope", "unknown key"),
    ([("limits", [])], "limits", "expected a mapping, got list"),
    # admin, store, audit, log
    ([("admin.http", "9090")], "admin.http", "HOST:PORT"),
    ([("store.durability", "fast")], "store.durability", "'sync', 'batch' or 'none'"),
    ([("store.map_size", "4 GiB")], "store.map_size", "invalid size"),
    ([("audit.fail_closed", "yes")], "audit.fail_closed", "expected true or false"),
    ([("log.level", "trace")], "log.level", "must be"),
    # identity
    ([("identity.jwt", JWT)], "identity.jwt", "one of jwks_file, jwks_url"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "discovery": "https://i/d"})],
     "identity.jwt", "give only one"),
    ([("identity.jwt", {"issuer": "i", "audiences": [], "jwks_file": "j"})], "identity.jwt.audiences",
     "at least 1 item"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "algorithms": ["none"]})],
     "identity.jwt.algorithms[0]", "'none' is never accepted"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "algorithms": ["RS256", "NoNe"]})],
     "identity.jwt.algorithms[1]", "'none' is never accepted"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "algorithms": ["RS1"]})],
     "identity.jwt.algorithms[0]", "unsupported algorithm 'RS1'"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "algorithms": ["HS256", "RS256"]})],
     "identity.jwt.algorithms", "cannot mix"),
    ([("identity.jwt", {**JWT, "algorithms": ["HS256"]})],
     "identity.jwt.hmac_secret", "required when HS"),
    ([("identity.jwt", {**JWT, "algorithms": ["HS512"], "hmac_secret": "x" * 40})],
     "identity.jwt.hmac_secret", "at least 64 bytes"),
    ([("identity.jwt", {**JWT, "algorithms": ["HS256"], "hmac_secret": "x" * 32,
                        "jwks_file": "j"})], "identity.jwt.jwks_file", "not used with HS"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "hmac_secret": "x" * 32})],
     "identity.jwt.hmac_secret", "only used with HS"),
    ([("identity.jwt", {**JWT, "jwks_url": "http://idp.example.com/jwks"})],
     "identity.jwt.jwks_url", "https"),
    ([("identity.jwt", {**JWT, "jwks_file": "j", "leeway": "soon"})],
     "identity.jwt.leeway", "invalid duration"),
    ([(KEYS, [{"name": "a", "sha256": "abc"}])], f"{KEYS}[0].sha256", "64 lowercase hex"),
    ([(KEYS, [{"name": "a", "sha256": "A" * 64}])], f"{KEYS}[0].sha256", "use lowercase"),
    ([(KEYS, [{"name": "a", "sha256": "a" * 64}, {"name": "a", "sha256": "b" * 64}])],
     f"{KEYS}[1].name", "duplicate name 'a'"),
    ([(KEYS, [{"name": "a", "sha256": "a" * 64}, {"name": "b", "sha256": "a" * 64}])],
     f"{KEYS}[1].sha256", "same key as api_keys[0]"),
    ([("identity.forward", "cookies")], "identity.forward", "must be"),
    ([("identity.strip_headers", ["ok", "bad header"])], "identity.strip_headers[1]", "invalid header name"),
    # approvals
    ([("approvals.notify", {"url": "ftp://hooks"})], "approvals.notify.url", "http:// or https://"),
    ([("approvals.notify", {"url": "https://h", "format": "xml"})],
     "approvals.notify.format", "'slack' or 'json'"),
    ([("approvals.max_pending", 5)], "approvals.max_pending_per_caller", "must not exceed max_pending"),
    ([("approvals.reviewers", {"bob": "finance"})], "approvals.reviewers.bob", "expected a list"),
    # upstreams
    ([("upstreams.billing.url", "ftp://h")], "upstreams.billing.url", "http:// or https://"),
    ([("upstreams.billing.url", "http://")], "upstreams.billing.url", "missing host"),
    ([("upstreams.billing.url", "http://user:pw@h")], "upstreams.billing.url", "credentials"),
    ([("upstreams.billing.url", "http://h/api?x=1")], "upstreams.billing.url", "query"),
    ([("upstreams.billing.url", "http://h/api#top")], "upstreams.billing.url", "fragment"),
    ([("upstreams.billing.url", "http://h:0")], "upstreams.billing.url", "port"),
    ([("upstreams.billing.url", "http://h:99999")], "upstreams.billing.url", "port"),
    ([("upstreams.billing.url", "http://h/a/../b")], "upstreams.billing.url", "'..'"),
    ([("upstreams.billing.url", "http://h a")], "upstreams.billing.url", "whitespace"),
    ([(HDRS, {"Bad Name": "x"})], f'{HDRS}["Bad Name"]',
     "invalid header name"),
    ([(HDRS, {"X-Key": "a\r\nInjected: 1"})], f"{HDRS}.X-Key",
     "CR, LF or NUL"),
    ([(HDRS, {"X-Key": "a\x00"})], f"{HDRS}.X-Key",
     "CR, LF or NUL"),
    ([(HDRS, {"Host": "evil"})], f"{HDRS}.Host",
     "cannot be injected"),
    ([(HDRS, {"X-A": "1", "x-a": "2"})], f"{HDRS}.x-a",
     "case-insensitive"),
    ([("upstreams.billing.timeout", "0ms")], "upstreams.billing.timeout", "greater than 0"),
    ([("upstreams.billing.max_connections", 0)], "upstreams.billing.max_connections", "at least 1"),
    ([("upstreams.billing.retries", 3)], "upstreams.billing.retries", "unknown key"),
    ([("upstreams.bad name", {"url": "http://h"})], 'upstreams["bad name"]', "invalid name"),
    # functions
    ([("functions[0].name", "bad name")], "functions[0].name", "invalid name"),
    ([("functions[0].name", "x" * 129)], "functions[0].name", "invalid name"),
    ([("functions[0].upstream", "nope")], "functions[0].upstream", "unknown upstream 'nope'"),
    ([("functions[1].http", {"method": "GET", "path": "/x"})],
     "functions[1]", "only one of 'http' and 'mcp'"),
    ([("functions[2]", {"name": "f", "upstream": "billing"})],
     "functions[2]", "exactly one of 'http' or 'mcp'"),
    ([("functions[0].http.method", "post")], "functions[0].http.method", "uppercase"),
    ([("functions[0].http.method", "TRACE")], "functions[0].http.method", "unsupported method 'TRACE'"),
    ([("functions[0].http.path", "refunds")], "functions[0].http.path", "must start with '/'"),
    ([("functions[0].http.path", "/refunds/")], "functions[0].http.path", "trailing slash"),
    ([("functions[0].http.path", "/a//b")], "functions[0].http.path", "empty"),
    ([("functions[0].http.path", "/a/{id}/{id}")], "functions[0].http.path", "appears twice"),
    ([("functions[0].http.path", "/a/x{id}")], "functions[0].http.path", "whole segment"),
    ([("functions[0].http.path", "/a/{1x}")], "functions[0].http.path", "invalid parameter name"),
    ([("functions[0].http.path", "/a?x=1")], "functions[0].http.path", "'?'"),
    ([("functions[0].http.path", "/a#x")], "functions[0].http.path", "'#'"),
    ([("functions[0].http.path", "/a%20b")], "functions[0].http.path", "'%'"),
    ([("functions[0].http.path", "/a\\b")], "functions[0].http.path", "'\\\\'"),
    ([("functions[0].http.path", "/a;b")], "functions[0].http.path", "';'"),
    ([("functions[0].http.path", "/a/../b")], "functions[0].http.path", "dot segments"),
    ([("functions[0].http.path", "/a/./b")], "functions[0].http.path", "dot segments"),
    ([("functions[2]", {"name": "f", "upstream": "billing",
                        "http": {"method": "POST", "path": "/refunds/{x}"}})],
     "functions[2].http.path", "route POST /refunds/{} is already function 'refund'"),
    ([("functions[2]", {"name": "f", "upstream": "billing", "http": {"method": "GET", "path": "/mcp"}})],
     "functions[2].http.path", "MCP endpoint"),
    ([("functions[2]", {"name": "refund", "upstream": "billing", "http": {"method": "GET", "path": "/r"}})],
     "functions[2].name", "duplicate function name 'refund'"),
    ([("functions[1].mcp.endpoint", "mcp")], "functions[1].mcp.endpoint", "must start with '/'"),
    ([("functions[1].mcp.endpoint", "/mcp/{x}")], "functions[1].mcp.endpoint", "character '{'"),
    ([("functions[2]", {"name": "f", "upstream": "billing", "mcp": {"endpoint": "/mcp", "tool": "lookup"}})],
     "functions[2].mcp.tool", "already function 'lookup'"),
    ([("upstreams.other", {"url": "http://o"}),
      ("functions[2]", {"name": "f", "upstream": "other", "mcp": {"endpoint": "/mcp", "tool": "t2"}})],
     "functions[2].upstream", "one endpoint has one upstream"),
    ([("functions[0].redact", {"response": ["$.ok", "$"]})],
     "functions[0].redact.response[1]", "whole document"),
    ([("functions[0].redact", {"request": ["card.number"]})],
     "functions[0].redact.request[0]", "starts with '$'"),
    ([("functions[0].redact", {"request": ["$.a["]})], "functions[0].redact.request[0]", "invalid selector"),
    ([("functions[0].redact", {"request": ["$[-1]"]})], "functions[0].redact.request[0]", "invalid selector"),
    ([("functions[0].redact", {"request": ["$.a b"]})], "functions[0].redact.request[0]", "unexpected ' '"),
    ([("functions[0].redact", {"request": ["$.."]})], "functions[0].redact.request[0]", "field name"),
    ([("functions[0].redact", {"request": ['$["open']})], "functions[0].redact.request[0]", "unterminated"),
    ([("functions[0].redact", {"mask": ["$.a"]})], "functions[0].redact.mask", "unknown key"),
    # pii
    ([("pii.detectors", ["email", "ssn"])], "pii.detectors[1]", "must be"),
    ([("pii.scan", ["logs"])], "pii.scan[0]", "must be"),
    ([("pii.mask", "[{kind}]")], "pii.mask", "{type}"),
    ([("pii.custom", [{"name": "emp", "regex": "E-("}])],
     "pii.custom[0].regex", "invalid regular expression"),
    ([("pii.custom", [{"name": "emp", "regex": "x*"}])], "pii.custom[0].regex", "empty string"),
    ([("pii.custom", [{"name": "email", "regex": "x+"}])], "pii.custom[0].name", "built-in"),
    ([("pii.custom", [{"name": "e", "regex": "x+"}, {"name": "e", "regex": "y+"}])], "pii.custom[1].name",
     "duplicate name"),
    # rules
    ([("rules[1]", {"id": "r0", "functions": ["refund"],
     "effect": "deny"})], "rules[1].id", "duplicate rule id"),
    ([("rules[0].id", "has space")], "rules[0].id", "invalid name"),
    ([("rules[0].functions", [])], "rules[0].functions", "at least 1 item"),
    ([("rules[0].functions", ["refund", "ghost"])], "rules[0].functions[1]", "unknown function 'ghost'"),
    ([("rules[0].functions", ["re fund*"])], "rules[0].functions[0]", "invalid function name or pattern"),
    ([("rules[0].effect", "maybe")], "rules[0].effect", "must be"),
    ([("rules[0].effect", "approve")], "rules[0].approval", "required when effect is 'approve'"),
    ([("rules[0].approval", {"reviewers": ["finance"]})], "rules[0].approval", "only allowed when effect"),
    ([("rules[0].effect", "approve"), ("rules[0].approval", {"reviewers": []})],
     "rules[0].approval.reviewers",
     "at least 1 item"),
    ([("rules[0].effect", "approve"), ("rules[0].approval", {"reviewers": ["user:"]})],
     "rules[0].approval.reviewers[0]", "followed by a name"),
    ([("rules[0].effect", "approve"), ("rules[0].approval", {"reviewers": ["f"], "quorum": 0})],
     "rules[0].approval.quorum", "at least 1"),
    ([("rules[0].effect", "approve"), ("rules[0].approval", {"reviewers": ["f"], "mode": "wait"})],
     "rules[0].approval.mode", "'hold' or 'async'"),
    ([("rules[0].effect", "approve"), ("rules[0].approval", {"reviewers": ["f"], "timeout": "forever"})],
     "rules[0].approval.timeout", "invalid duration"),
    ([("rules[0].authenticated", "yes")], "rules[0].authenticated", "expected true or false"),
    # conditions
    ([(f"{W}.op", "=<")], f"{W}.op", "unknown operator '=<'"),
    ([(W, {"op": "==", "value": 1})], W, "exactly one source"),
    ([(W, {**A, "claim": "sub", "op": "==", "value": 1})], W,
     "only one source"),
    ([(W, {**A, "op": "=="})], f"{W}.value", "required for operator '=='"),
    ([(W, {**A, "op": "in", "value": "x"})], f"{W}.value", "needs a list"),
    ([(W, {**A, "op": "not_in", "value": 3})], f"{W}.value", "needs a list"),
    ([(W, {**A, "op": "<", "value": "5"})], f"{W}.value", "finite number"),
    ([(W, {**A, "op": ">=", "value": True})], f"{W}.value", "finite number"),
    ([(W, {**A, "op": ">", "value": math.nan})], f"{W}.value",
     "finite number"),
    ([(W, {**A, "op": "<=", "value": math.inf})], f"{W}.value",
     "finite number"),
    ([(W, {**A, "op": "prefix", "value": 5})], f"{W}.value", "needs a string"),
    ([(W, {**A, "op": "suffix", "value": None})], f"{W}.value",
     "needs a string"),
    ([(W, {**A, "op": "matches", "value": "(unclosed"})], f"{W}.value",
     "invalid regular expression"),
    ([(W, {**A, "op": "exists", "value": "yes"})], f"{W}.value",
     "true or false"),
    ([(W, {"arg": "amount", "op": "exists"})], f"{W}.arg", "invalid selector"),
    ([(W, {"header": "bad header", "op": "exists"})], f"{W}.header",
     "invalid header name"),
    ([(W, {"param": "order-id", "op": "exists"})], f"{W}.param",
     "invalid parameter name"),
    ([(W, {"param": "customer_id", "op": "==", "value": "c1"})], f"{W}.param",
     "'customer_id' is not a parameter of function 'refund'"),
    ([(W, {**A, "op": "==", "value": 1, "negate": True})], f"{W}.negate",
     "unknown key"),
]


@pytest.mark.parametrize("changes, path, fragment", REFUSALS,
                         ids=[f"{i}-{case[1]}" for i, case in enumerate(REFUSALS)])
def test_refusal_names_key_path(changes, path, fragment):
    assert_error(build(*changes), path, fragment)


def test_spec_example_error_line_exactly():
    data = build(("rules[1]", {"id": "r1", "functions": ["refund"], "effect": "deny"}),
                 ("rules[2]", {"id": "r2", "functions": ["refund"], "effect": "deny",
                               "when": [{"arg": "$.a", "op": "=<", "value": 1}]}),
                 ("functions[1].upstream", "nope"))
    errs = errors(data)
    assert any(e.startswith("rules[2].when[0].op: unknown operator '=<'") for e in errs), errs
    assert any(e.startswith("functions[1].upstream: unknown upstream 'nope'") for e in errs), errs


@pytest.mark.parametrize("changes", [
    [("rules[0].functions", ["ref*", "*"])],
    [("rules[0].functions", ["nothing-matches-*"])],
    [(W, {"param": "order_id", "op": "prefix", "value": "A"})],
    [("rules[0].functions", ["*"]), (W, {"param": "anything", "op": "exists"})],
    [("rules[0].functions", ["lookup"]), (W, {"param": "x", "op": "exists", "value": False})],
    [(W, {"claim": "email", "op": "in", "value": []})],
    [(W, {**A, "op": "==", "value": None})],
    [(W, {"arg": "$.items[*].sku", "op": "contains", "value": {"k": 1}})],
    [("functions[0].http.path", "/")],
    [("functions[0].http.method", "HEAD"), ("functions[0].http.path", "/items/{id}")],
    [("rules[0].effect", "approve"),
     ("rules[0].approval", {"reviewers": ["finance", "user:bob"], "quorum": 2})],
    [("identity.jwt", {**JWT, "algorithms": ["HS256"], "hmac_secret": "k" * 32})],
    [("identity.jwt", {**JWT, "jwks_url": "http://127.0.0.1:1/jwks", "leeway": 0})],
    [("upstreams.billing.url", "https://billing.internal_svc:8443/v1")],
    [(HDRS, {"Authorization": "Bearer a\tb"})],
])
def test_accepted_variants(changes):
    parse_config(build(*changes), env={})


def test_upstreams_may_be_empty_without_functions():
    parse_config({"version": 1, "upstreams": {}, "functions": []}, env={})
    errs = errors({"version": 1, "functions": [BASE["functions"][0]]})
    assert errs == ["functions[0].upstream: unknown upstream 'billing' (known: none defined)"]


# ---- all errors at once ----------------------------------------------------------------------------------

def test_every_problem_reported_in_one_run():
    data = build(
        ("workers", 0),
        ("limits.idle_timeout", "soon"),
        ("upstreams.billing.inject_headers", {"Host": "x"}),
        ("upstreams.billing.url", "ftp://x"),
        ("functions[0].http.method", "get"),
        ("functions[2]", {"name": "orphan", "upstream": "nope", "http": {"method": "GET", "path": "/o"}}),
        ("rules[0].functions", ["refund", "ghost"]),
        ("rules[0].effect", "approve"),
        ("rules[0].when[0].op", "=<"),
        ("rules[1]", {"id": "r0", "functions": ["refund"], "effect": "deny"}),
    )
    errs = errors(data)
    expected = [
        "workers: ", "limits.idle_timeout: invalid duration", "upstreams.billing.url: ",
        "upstreams.billing.inject_headers.Host: ", "functions[0].http.method: ",
        "functions[2].upstream: unknown upstream 'nope'", "rules[0].functions[1]: unknown function 'ghost'",
        "rules[0].approval: required", "rules[0].when[0].op: unknown operator '=<'",
        "rules[1].id: duplicate rule id 'r0'",
    ]
    for prefix in expected:
        assert any(e.startswith(prefix) for e in errs), f"{prefix!r} missing from:\n" + "\n".join(errs)
    assert len(errs) == len(set(errs)) == len(expected)


def test_cli_check_lists_errors_on_stderr(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nworkers: 0\nrules:\n  - {id: r, functions: [x], effect: allow}\n")
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ok = subprocess.run([sys.executable, "-m", "fastgate", "check", "-c", str(good)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run([sys.executable, "-m", "fastgate", "check", "-c", str(bad)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "workers: must be at least 1" in res.stderr
    assert "rules[0].functions[0]: unknown function 'x'" in res.stderr


def test_cli_config_schema_prints_json():
    res = subprocess.run([sys.executable, "-m", "fastgate", "config-schema"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["properties"]["version"]["const"] == 1


def test_json_schema_refuses_unknown_keys_everywhere():
    schema = json.loads(json.dumps(config_json_schema()))
    objects = [schema, *schema["$defs"].values()]
    assert len(objects) > 15
    for obj in objects:
        assert obj.get("additionalProperties") is False, obj.get("title")
    lim = schema["$defs"]["Limits"]["properties"]["max_body_bytes"]
    assert any(alt.get("type") == "string" for alt in lim["anyOf"])


# ---- YAML loading ----------------------------------------------------------------------------------------

def load_text(tmp_path: Path, text: str, env: dict | None = None) -> Config:
    path = tmp_path / "fastgate.yaml"
    path.write_text(text)
    return load_config(path, env=env if env is not None else {})


def load_errors(tmp_path: Path, text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value.errors


def test_duplicate_keys_refused_with_their_path(tmp_path):
    errs = load_errors(tmp_path, (
        "version: 1\n"
        "workers: 2\n"
        "upstreams:\n"
        "  billing:\n"
        "    url: http://a\n"
        "    url: http://b\n"
        "workers: 3\n"
    ))
    assert errs == ["upstreams.billing.url: duplicate key (line 6; first at line 5)",
                    "workers: duplicate key (line 7; first at line 2)"]


def test_duplicate_keys_inside_lists(tmp_path):
    errs = load_errors(tmp_path, "version: 1\nrules:\n  - {id: a, id: b}\n")
    assert errs == ["rules[0].id: duplicate key (line 3; first at line 3)"]


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    config = load_text(tmp_path, (
        "version: 1\n"
        "upstreams:\n"
        "  a: &up {url: 'http://a', max_connections: 3}\n"
        "  b: {<<: *up, url: 'http://b'}\n"
    ))
    assert config.upstreams["b"].max_connections == 3 and config.upstreams["b"].host == "b"


@pytest.mark.parametrize("text, fragment", [
    ("version: 1\nlisten: [\n", "invalid YAML at line"),
    ("", "empty document"),
    ("- 1\n- 2\n", "expected a mapping of settings, got list"),
    ("version: 1\n---\nversion: 1\n", "invalid YAML"),
    ("a: !!python/object:os.system {}\n", "invalid YAML"),
])
def test_unreadable_documents(tmp_path, text, fragment):
    errs = load_errors(tmp_path, text)
    assert len(errs) == 1 and errs[0].startswith("(root): ") and fragment in errs[0], errs


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    errs = load_errors(tmp_path, "\n".join(lines) + "\n")
    assert len(errs) == 1 and "more than" in errs[0]


# ---- secrets ---------------------------------------------------------------------------------------------

def header_config(value: str) -> dict:
    return build(("upstreams.billing.inject_headers", {"Authorization": value}))


def header_value(config: Config) -> str:
    return config.upstreams["billing"].inject_headers["Authorization"].get_secret_value()


def test_env_expansion_embedded_and_recorded():
    config = parse_config(header_config("Bearer ${env:TOK}.${env:SUFFIX}"),
                          env={"TOK": "abc123", "SUFFIX": "z9"})
    assert header_value(config) == "Bearer abc123.z9"
    assert config.secret_values == {"abc123", "z9"}


def test_expansion_reaches_nested_values_but_not_keys():
    data = build(("approvals.reviewers", {"${env:NAME}": ["${env:GROUP}"]}))
    config = parse_config(data, env={"NAME": "ignored", "GROUP": "finance"})
    assert config.approvals.reviewers == {"${env:NAME}": ["finance"]}


def test_dollar_escape_is_literal():
    data = build(("functions[0].description", "costs $$5, literal $${env:X} and $${file:y}; $ alone"))
    config = parse_config(data, env={})
    assert config.functions[0].description == "costs $$5, literal ${env:X} and ${file:y}; $ alone"
    assert config.secret_values == frozenset()


def test_file_expansion_strips_one_newline(tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "webhook").write_text("line1\nline2\n\n")
    data = build(("upstreams.billing.inject_headers", {"Authorization": "Bearer ${file:token}"}),
                 ("approvals.notify", {"url": "https://h/hook",
                                       "secret": f"${{file:{tmp_path / 'webhook'}}}"}))
    config = parse_config(data, env={}, base_dir=tmp_path)
    assert header_value(config) == "Bearer from-file"
    assert config.approvals.notify.secret.get_secret_value() == "line1\nline2\n"  # type: ignore[union-attr]
    assert config.secret_values == {"from-file", "line1\nline2\n"}


def test_relative_secret_files_resolve_against_cwd(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text("cwd-relative")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "fastgate.yaml").write_text(
        "version: 1\nupstreams:\n  u: {url: 'http://u', inject_headers: {X-Token: '${file:secrets/tok}'}}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(conf_dir / "fastgate.yaml", env={})
    assert config.upstreams["u"].inject_headers["X-Token"].get_secret_value() == "cwd-relative"


@pytest.mark.parametrize("value, env, fragment", [
    ("Bearer ${env:BILLING_TOKEN}", {}, "environment variable BILLING_TOKEN is not set"),
    ("Bearer ${env:EMPTY}", {"EMPTY": ""}, "environment variable EMPTY is empty"),
    ("${file:/nonexistent/fastgate-secret}", {}, "cannot read secret file '/nonexistent/fastgate-secret'"),
    ("${vault:kv/x}", {}, "unsupported reference '${vault:kv/x}'"),
    ("${env:}", {}, "unsupported reference"),
    ("${env:NOT VALID}", {}, "unsupported reference"),
    ("${TOKEN}", {"TOKEN": "x"}, "unsupported reference"),
    ("Bearer ${env:TOKEN", {"TOKEN": "x"}, "unterminated '${'"),
])
def test_bad_references_are_errors_at_their_path(value, env, fragment):
    errs = errors(header_config(value), env=env)
    assert errs == [f"upstreams.billing.inject_headers.Authorization: {fragment}"] or \
        (len(errs) == 1 and errs[0].startswith("upstreams.billing.inject_headers.Authorization: ") and
         fragment in errs[0]), errs


def test_empty_secret_file(tmp_path):
    (tmp_path / "empty").write_text("\n")
    errs = errors(header_config("${file:empty}"), base_dir=tmp_path)
    assert errs == ["upstreams.billing.inject_headers.Authorization: secret file 'empty' is empty"]


def test_secret_values_never_appear_in_errors(tmp_path):
    secret = "Sup3r-Secret-Value"
    (tmp_path / "s").write_text(f"{secret}\r\nX: y")
    data = build(
        ("listen", "${env:S}"),
        ("rules[0].when[0].op", "${env:S}"),
        ("store.durability", "${env:S}"),
        ("limits.idle_timeout", "${env:S}"),
        ("upstreams.billing.url", "http://${env:S}:99999"),
        ("upstreams.billing.inject_headers", {"X-Key": "${file:s}"}),
        ("functions[0].upstream", "${env:S}"),
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={"S": secret}, base_dir=tmp_path)
    text = str(info.value)
    assert len(info.value.errors) >= 6, text
    assert secret not in text and secret.lower() not in text
    assert "rules[0].when[0].op: unknown operator '***'" in text
    assert "upstreams.billing.inject_headers.X-Key: header value must not contain CR, LF or NUL" in text


def test_failed_expansion_is_not_validated_further():
    errs = errors(build(("upstreams.billing.url", "${env:URL}")))
    assert errs == ["upstreams.billing.url: environment variable URL is not set"]


# ---- units -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0), ("1.5s", 1.5),
    ("0s", 0.0), ("30", 30.0), (30, 30.0), (0.5, 0.5), ("0.5ms", 0.0005),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1 s", "-1s", -1, "1sec", "s", "1.s", ".5s", "1e3s", "1h30m", True,
                                  math.nan, math.inf, None, [], "30S", " 30s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("64KiB", 65536), ("1MiB", 2**20), ("4GiB", 4 * 2**30),
    ("1TiB", 2**40), ("10KB", 10000), ("2MB", 2 * 10**6),
    ("512", 512), ("512B", 512), (512, 512), (0, 0), ("1.5KiB", 1536), ("64kib", 65536), (1024.0, 1024),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1 MiB", "-1", -5, "1.5B", "1.0001KB", "10K", "10XB", "KiB", True, 1.5,
                                  None, "0x10"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_duration_units_property(n, unit):
    factor = {"ms": None, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[unit]
    expected = n / 1000 if factor is None else float(n) * factor
    assert parse_duration(f"{n}{unit}") == expected


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_format_round_trip(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**62))
def test_size_format_round_trip(size):
    text = format_size(size)
    assert parse_size(text) == size and len(text) <= len(str(size)) + 1


@given(st.integers(min_value=0, max_value=10**9),
       st.sampled_from(["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "kib", ""]))
def test_size_units_property(n, unit):
    factor = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}[unit.lower()]
    assert parse_size(f"{n}{unit}") == n * factor


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:8080", ("::1", 8080)),
    ("localhost:80", ("localhost", 80)),
    ("0.0.0.0:0", ("0.0.0.0", 0)), ("gw.example.com:65535", ("gw.example.com", 65535)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["8080", "localhost", ":8080", "::1:80", "[::1]", "[::1]8080", "[nope]:80",
                                  "h:65536", "h:-1", "h:+80", "h: 80", "h:", "256.1.1.1:80", "a b:80", 8080])
def test_parse_hostport_refuses(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


# ---- selectors, templates, helpers -----------------------------------------------------------------------

@pytest.mark.parametrize("selector, steps", [
    ("$.card.number", (("key", "card"), ("key", "number"))),
    ('$["odd key"][0]', (("key", "odd key"), ("index", 0))),
    ("$['it''s']", None),
    ("$.a[*].b", (("key", "a"), ("wildcard", None), ("key", "b"))),
    ("$.a.*", (("key", "a"), ("wildcard", None))),
    ("$..email", (("descend", "email"),)),
    ('$..["e-mail"]', (("descend", "e-mail"),)),
    ('$["a\\"b"]', (("key", 'a"b'),)),
])
def test_parse_selector(selector, steps):
    if steps is None:
        with pytest.raises(ValueError):
            parse_selector(selector)
    else:
        assert parse_selector(selector) == steps


def test_parse_path_template():
    assert parse_path_template("/a/{b}/c") == (("literal", "a"), ("param", "b"), ("literal", "c"))
    assert parse_path_template("/") == ()


def test_glob_and_path_helpers():
    assert glob_match("*", "anything") and glob_match("get_*", "get_customer")
    assert not glob_match("get_*", "list_get_x") and not glob_match("a?c", "abc")
    assert format_path(("rules", 2, "when", 0, "op")) == "rules[2].when[0].op"
    assert format_path(()) == "(root)"
    assert format_path(("a", "b.c")) == 'a["b.c"]'


def test_escaped_secret_forms_are_scrubbed_too():
    secret = "it's a \"quoted\" \\ secret"
    with pytest.raises(ConfigError) as info:
        parse_config(build(("rules[0].when[0].op", "${env:S}")), env={"S": secret})
    text = str(info.value)
    assert "secret" not in text and "quoted" not in text, text


@pytest.mark.parametrize("text, expected", [
    ("\x00", "(root): invalid YAML"),
    ("version: 1\n1: 2\n", "1: keys must be strings, got integer"),
    ("version: 1\napprovals: {reviewers: {7: [a]}}\n", "approvals.reviewers.7: keys must be strings"),
    ("a: &a [*a]\n", "nested more than 64 levels deep"),
])
def test_odd_yaml_is_a_config_error(tmp_path, text, expected):
    errs = load_errors(tmp_path, text)
    assert len(errs) == 1 and expected in errs[0] and "\n" not in errs[0], errs


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(), st.text(max_size=10),
    st.sampled_from(["${env:X}", "$${", "${", "http://h", "/a/{b}", "$.a", "==", "in", "approve", "HS256",
                     "1s", "1KiB", "user:", "*", "[::1]:80", "${file:/}"]))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _paths(node, prefix=()):
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzz_returns_config_or_raises_config_error(data):
    """Whatever a broken file holds, the answer is a Config or a ConfigError of key-path lines."""
    doc = copy.deepcopy(build(
        ("upstreams.billing.inject_headers", {"Authorization": "Bearer ${env:X}"}),
        ("identity", {"jwt": {**JWT, "jwks_file": "j"}, "api_keys": [{"name": "k", "sha256": "a" * 64}]})))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(doc), key=repr)))
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = copy.deepcopy(data.draw(_VALUES))
    try:
        parse_config(doc, env={"X": "v"})
    except ConfigError as exc:
        assert exc.errors and all(": " in line and "\n" not in line for line in exc.errors)
