"""catalog: exact, case-sensitive routing of normalized paths to declared functions.

The gate only holds if policy and upstream agree on which function a request is for
(threats.md §2), so matching never decodes, never folds case and never guesses a method.
"""
from __future__ import annotations

import re
from types import SimpleNamespace as NS

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgate.catalog as catalog
from fastgate._core import load, reference
from fastgate.catalog import Catalog, CatalogError, Match, PathError, normalize_target


def fn(name, method=None, path=None, *, endpoint=None, tool=None, upstream="http://up"):
    http = NS(method=method, path=path) if method else None
    mcp = NS(endpoint=endpoint, tool=tool or name) if endpoint else None
    return NS(name=name, upstream=upstream, http=http, mcp=mcp)


FUNCTIONS = [
    fn("refund", "POST", "/refunds/{order_id}", upstream="http://billing"),
    fn("customer_orders", "GET", "/customers/{customer_id}/orders"),
    fn("list_orders", "GET", "/orders"),
    fn("export_orders", "GET", "/orders/export"),
    fn("get_order", "GET", "/orders/{id}"),
    fn("order_item", "GET", "/orders/{id}/items/{item}"),
    fn("home", "GET", "/"),
    fn("reports_index", "GET", "/reports/"),
    fn("page", "GET", "/{page}"),
    fn("search_docs", endpoint="/mcp", tool="search"),
    fn("lookup", endpoint="/mcp", tool="lookup"),
    fn("admin_tool", endpoint="/mcp/admin", tool="search"),
]
CATALOG = Catalog.from_functions(FUNCTIONS)

MATCHES = [
    # (method, path, function, params, why)
    ("POST", "/refunds/A1", "refund", {"order_id": "A1"}, "param extraction"),
    ("GET", "/refunds/A1", None, None, "method must equal the declared one"),
    ("post", "/refunds/A1", None, None, "methods are case-sensitive (RFC 9110 §9.1)"),
    ("HEAD", "/orders", None, None, "HEAD does not borrow a GET route"),
    ("POST", "/refunds/", None, None, "a param never matches an empty segment"),
    ("POST", "/refunds/A1/", None, None, "trailing slash is significant"),
    ("POST", "/refunds/A1/x", None, None, "a param is exactly one segment"),
    ("GET", "/orders", "list_orders", {}, "literal route"),
    ("GET", "/orders/", None, None, "'/orders/' is not '/orders'"),
    ("GET", "/orders/export", "export_orders", {}, "literal beats param at the same level"),
    ("GET", "/orders/O-1", "get_order", {"id": "O-1"}, "param when no literal fits"),
    ("GET", "/orders/export/items/3", "order_item", {"id": "export", "item": "3"},
     "falls back to the param branch when the literal branch has no route"),
    ("GET", "/orders/caf%C3%A9", "get_order", {"id": "caf%C3%A9"}, "params stay percent-encoded"),
    ("GET", "/customers/C1/orders", "customer_orders", {"customer_id": "C1"}, "param in the middle"),
    ("GET", "/Orders", "page", {"page": "Orders"}, "case-sensitive: not the /orders literal"),
    ("GET", "/", "home", {}, "root"),
    ("GET", "/reports/", "reports_index", {}, "template with trailing slash"),
    ("GET", "/reports", "page", {"page": "reports"}, "without the slash it is another route"),
    ("GET", "/mcp", None, None, "MCP endpoint wins over /{page}"),
    ("POST", "/mcp", None, None, "MCP endpoint: handled by the MCP stage"),
    ("DELETE", "/mcp/admin", None, None, "second MCP endpoint"),
    ("GET", "/unknown/deep", None, None, "no route"),
    ("GET", "orders", None, None, "not a normalized path"),
    ("GET", "", None, None, "empty path"),
]


@pytest.mark.parametrize(("method", "path", "function", "params", "why"), MATCHES,
                         ids=[m[4] for m in MATCHES])
def test_match_table(method, path, function, params, why):
    found = CATALOG.match(method, path)
    if function is None:
        assert found is None
    else:
        assert found is not None
        assert (found.function, found.params) == (function, params)


def test_match_carries_route_details():
    assert CATALOG.match("POST", "/refunds/A1") == Match(
        function="refund", upstream="http://billing", params={"order_id": "A1"},
        template="/refunds/{order_id}")


def test_literal_beats_param_regardless_of_declaration_order():
    """Priority is structural, so reordering the config cannot reroute a request."""
    for functions in ([fn("by_id", "GET", "/orders/{id}"), fn("export", "GET", "/orders/export")],
                      [fn("export", "GET", "/orders/export"), fn("by_id", "GET", "/orders/{id}")]):
        cat = Catalog.from_functions(functions)
        assert cat.match("GET", "/orders/export").function == "export"
        assert cat.match("GET", "/orders/exports").function == "by_id"


def test_same_path_different_methods():
    cat = Catalog.from_functions([fn("read", "GET", "/items/{id}"), fn("drop", "DELETE", "/items/{id}")])
    assert cat.match("GET", "/items/7").function == "read"
    assert cat.match("DELETE", "/items/7").function == "drop"
    assert cat.match("PUT", "/items/7") is None


def test_different_param_names_at_the_same_position():
    cat = Catalog.from_functions([fn("one", "GET", "/o/{order_id}"), fn("two", "GET", "/o/{oid}/lines")])
    assert cat.match("GET", "/o/9").params == {"order_id": "9"}
    assert cat.match("GET", "/o/9/lines").params == {"oid": "9"}


def test_mcp_endpoint():
    assert CATALOG.mcp_endpoint("/mcp") == ["search_docs", "lookup"]
    assert CATALOG.mcp_endpoint("/mcp/admin") == ["admin_tool"]
    assert CATALOG.mcp_endpoint("/mcp/") is None
    assert CATALOG.mcp_endpoint("/MCP") is None
    assert CATALOG.mcp_endpoint("/orders") is None
    CATALOG.mcp_endpoint("/mcp").append("intruder")
    assert CATALOG.mcp_endpoint("/mcp") == ["search_docs", "lookup"]


def test_names():
    assert CATALOG.names == frozenset(f.name for f in FUNCTIONS)
    assert len(CATALOG.routes) == 9


def test_function_without_http_or_mcp_is_only_a_name():
    cat = Catalog.from_functions([fn("idle")])
    assert cat.names == frozenset({"idle"}) and cat.routes == ()


@pytest.mark.parametrize(("functions", "message"), [
    ([fn("a", "GET", "/x"), fn("a", "GET", "/y")], "declared twice"),
    ([fn("a", "GET", "/o/{id}"), fn("b", "GET", "/o/{oid}")], "overlaps"),
    ([fn("a", "GET", "/o"), fn("b", "GET", "/o")], "overlaps"),
    ([fn("a", "GET", "/o/{x}/{x}")], "repeats a parameter"),
    ([fn("a", "GET", "orders")], "must start with '/'"),
    ([fn("a", "GET", "/orders?x=1")], "no query"),
    ([fn("a", "GET", "/a/../b")], "not normalized"),
    ([fn("a", "GET", "/a//b")], "not normalized"),
    ([fn("a", "GET", "/%7euser")], "not normalized"),
    ([fn("a", "GET", "/caf%c3%a9")], "not normalized"),
    ([fn("a", "GET", "/a;b")], "not a valid request path"),
    ([fn("a", "GET", "/a%2Fb")], "not a valid request path"),
    ([fn("a", "GET", "/..")], "not a valid request path"),
    ([fn("a", "GET", "/caf\u00e9")], "not a valid request path"),
    ([fn("a", "GET", "/o/{id")], "not a valid request path"),
    ([fn("a", "GET", "/o/x{id}")], "not a valid request path"),
    ([fn("a", "GET", "/o/{1d}")], "not a valid request path"),
    ([fn("a", "GET POST", "/o")], "not an HTTP method token"),
    ([fn("a", "GET", "/mcp"), fn("b", endpoint="/mcp")], "also an MCP endpoint"),
    ([fn("a", endpoint="/mcp/{tenant}")], "cannot contain parameters"),
    ([fn("a", endpoint="/mcp", tool="t"), fn("b", endpoint="/mcp", tool="t")], "already declared"),
    ([fn("a", endpoint="/mcp/../x")], "not normalized"),
])
def test_refused_catalogs(functions, message):
    """A catalog that could route one request two ways, or never route it, is a config error."""
    with pytest.raises(CatalogError, match=re.escape(message)):
        Catalog.from_functions(functions)


def test_same_tool_on_different_endpoints_is_fine():
    cat = Catalog.from_functions([fn("a", endpoint="/mcp/one", tool="t"),
                                  fn("b", endpoint="/mcp/two", tool="t")])
    assert cat.mcp_endpoint("/mcp/one") == ["a"] and cat.mcp_endpoint("/mcp/two") == ["b"]


def test_reexports_come_from_the_selected_core():
    """Other modules import these from fastgate.catalog; they must be the loaded core's."""
    assert normalize_target is load("pathnorm").normalize_target
    assert PathError is reference("pathnorm").PathError
    assert catalog.__all__ and {"Catalog", "PathError", "normalize_target"} <= set(catalog.__all__)


def test_deep_template_does_not_recurse():
    depth = 2000
    template = "/" + "/".join("{p%d}" % i for i in range(depth))
    cat = Catalog.from_functions([fn("deep", "GET", template)])
    found = cat.match("GET", "/" + "/".join(["x"] * depth))
    assert found is not None and len(found.params) == depth


PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
LITERALS = ["orders", "export", "a", "items", "~x", "v1.2"]
VALUE_TOKENS = list("aZ09-._~!$&'()*+,=:@") + ["%20", "%C3%A9"] + LITERALS


def _template(spec: list[str | None], trailing: bool) -> str:
    parts = [seg if seg is not None else "{p%d}" % i for i, seg in enumerate(spec)]
    return "/" + "/".join(parts) + ("/" if trailing and parts else "")


def _shape(method: str, template: str) -> tuple[str, str]:
    return method, PARAM.sub("{}", template)


route_specs = st.tuples(
    st.sampled_from(["GET", "POST"]),
    st.lists(st.one_of(st.sampled_from(LITERALS), st.none()), max_size=4),
    st.booleans(),
).map(lambda t: (t[0], _template(t[1], t[2])))
catalogs = st.lists(route_specs, min_size=1, max_size=8, unique_by=lambda r: _shape(*r))
param_values = st.lists(st.sampled_from(VALUE_TOKENS), min_size=1, max_size=3).map("".join).filter(
    lambda v: v not in (".", ".."))


def _oracle(specs: list[tuple[str, str]], method: str, path: str) -> int | None:
    """Brute force: among templates that fit, the one with literals earliest wins."""
    segs = path[1:].split("/")
    best = None
    for index, (m, template) in enumerate(specs):
        tsegs = template[1:].split("/")
        if m != method or len(tsegs) != len(segs):
            continue
        key = []
        for t, s in zip(tsegs, segs):
            if PARAM.fullmatch(t) and s:
                key.append(1)
            elif t == s:
                key.append(0)
            else:
                break
        else:
            if best is None or key < best[0]:
                best = (key, index)
    return None if best is None else best[1]


@settings(max_examples=200, deadline=None)
@given(specs=catalogs, data=st.data())
def test_generated_paths_match_their_template(specs, data):
    """Every concrete path of a template is routed, to that template unless a more literal one fits."""
    cat = Catalog.from_functions([fn(f"f{i}", m, t) for i, (m, t) in enumerate(specs)])
    index = data.draw(st.integers(min_value=0, max_value=len(specs) - 1))
    method, template = specs[index]
    values = {name[1:-1]: data.draw(param_values) for name in PARAM.findall(template)}
    path = PARAM.sub(lambda m: values[m.group(0)[1:-1]], template)
    assert normalize_target(path.encode("ascii")) == (path, "")

    found = cat.match(method, path)
    expected = _oracle(specs, method, path)
    assert found is not None and expected is not None
    assert found.function == f"f{expected}"
    assert PARAM.sub(lambda m: found.params[m.group(0)[1:-1]], found.template) == path
    if expected == index:
        assert found.params == values
    alone = Catalog.from_functions([fn("only", method, template)]).match(method, path)
    assert alone is not None and (alone.function, alone.params) == ("only", values)
