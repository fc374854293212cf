"""Sans-IO MCP core: parsing, header checks, refusals, tools/list filtering, session binding,
the sealed requestState of approval round trips, and the 2024-11-05 transport probe.

Pure functions only: no gateway process, no sockets (the e2e suite with the MCP SDK comes with
the pipeline wiring).
"""
from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.mcp import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    LegacyTransportProbe,
    McpError,
    ResultStateWrapper,
    StateSealer,
    ToolsListFilter,
    call_hash,
    gate_responses,
    input_required,
    metadata_url,
    param_header_paths,
    parse_message,
    refusal,
    resource_metadata,
    strip_gate_state,
    www_authenticate,
)

NEW = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": NEW}


def call(name="get_weather", arguments=None, id=1, **extra):
    params = {"name": name, "_meta": META}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params, **extra}


def stateless(method="tools/call", name="get_weather", **more):
    h = {"MCP-Protocol-Version": [NEW], "Mcp-Method": [method]}
    if name is not None:
        h["Mcp-Name"] = [name]
    h.update({k: [v] for k, v in more.items()})
    return h


def err(body, headers):
    with pytest.raises(McpError) as info:
        parse_message(body, headers)
    return info.value


# ---------------------------------------------------------------- parsing, both eras

ERAS = [
    pytest.param({}, "session", id="no-version-header"),
    pytest.param({"MCP-Protocol-Version": ["2025-06-18"]}, "session", id="2025-06-18"),
    pytest.param({"mcp-protocol-version": ["2025-11-25"]}, "session", id="2025-11-25-lower"),
    pytest.param(stateless(), "stateless", id="2026-07-28"),
]


@pytest.mark.parametrize("headers,era", ERAS)
@pytest.mark.parametrize("id", [1, 0, -7, "abc", ""])
def test_tools_call_parsed_in_both_eras(headers, era, id):
    """The decision reads the parsed body whatever the era and id type."""
    req = parse_message(orjson.dumps(call(arguments={"location": "Paris"}, id=id)), headers)
    assert (req.kind, req.era, req.id, req.tool) == ("request", era, id, "get_weather")
    assert req.arguments == {"location": "Paris"}


@pytest.mark.parametrize("text", [
    '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}',
    '{"params":{"arguments":{"a":1},"name":"t"},"method":"tools/call","id":3,"jsonrpc":"2.0"}',
    '{"method":"tools/call","params":{"name":"t","arguments":{"a":1}},"jsonrpc":"2.0","id":3}',
    (' \n{ "id" : 3 , "jsonrpc" : "2.0" , "method" : "tools/call" ,'
    ' "params" : { "name" : "t" , "arguments" : { "a" : 1 } } }\r\n'),
])
def test_key_order_and_whitespace_do_not_matter(text):
    """SDKs order keys differently; the gate never matches bytes."""
    req = parse_message(text.encode(), [])
    assert (req.id, req.tool, req.arguments) == (3, "t", {"a": 1})


def test_arguments_absent_means_empty_object():
    assert parse_message(orjson.dumps(call()), {}).arguments == {}


@pytest.mark.parametrize("arguments", [[], "x", 1, None, True])
def test_non_object_arguments_are_invalid_params(arguments):
    """Conditions read arguments as an object; anything else is -32602 with the id."""
    body = orjson.dumps(call(id=9) | {"params": {"name": "t", "arguments": arguments}})
    e = err(body, {})
    assert (e.code, e.id, e.http_status) == (-32602, 9, 200)


@pytest.mark.parametrize("body,code", [
    (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),
    (b"[]", -32600),
    (b'"tools/call"', -32600),
    (b"null", -32600),
    (b"42", -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","\\u006dethod":"tools/call"}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\\u0061me":"b"}}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping"', -32700),
    (b"", -32700),
    (b"\xef\xbb\xbf{}", -32700),
    (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', -32600),
    (b'{"id":1,"method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":7}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', -32600),
    (b'{"jsonrpc":"2.0","id":1}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"x"}}', -32600),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', -32602),
    (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}', -32602),
])
def test_malformed_messages_refused(body, code):
    """Batches, duplicates (also escaped), wrong types: refused before any policy runs."""
    e = err(body, {})
    assert e.code == code
    assert e.http_status == (200 if code == -32602 else 400)
    back = orjson.loads(e.body())
    assert back["error"]["code"] == code and back["jsonrpc"] == "2.0"


def test_notification_and_response_kinds():
    """Client notifications and answers to server requests (e.g. elicitation) are kinds."""
    n = parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', {})
    assert (n.kind, n.id) == ("notification", None)
    r = parse_message(b'{"jsonrpc":"2.0","id":"g-1","result":{"action":"accept"}}',
                      {"Mcp-Session-Id": ["s1"]})
    assert (r.kind, r.id, r.session_id) == ("response", "g-1", "s1")
    # A notification naming a tool is still a tool call for policy (issue 8).
    t = parse_message(b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}', {})
    assert (t.kind, t.tool) == ("notification", "t")


def test_responses_refused_in_stateless_era():
    e = err(b'{"jsonrpc":"2.0","id":1,"result":{}}', stateless(method="x", name=None))
    assert (e.http_status, e.code) == (400, -32600)


@pytest.mark.parametrize("version", ["2099-01-01", "latest", "2025-06-18, 2026-07-28"])
def test_unknown_protocol_version_is_400(version):
    e = err(orjson.dumps(call(id="m-1")), {"MCP-Protocol-Version": [version]})
    assert e.http_status == 400 and "supported" in e.data
    assert orjson.loads(e.body())["id"] == "m-1"  # the request's id, readable from the body


def test_repeated_version_header_error_names_the_id():
    e = err(orjson.dumps(call(id=5)), {"MCP-Protocol-Version": [NEW, NEW]})
    assert (e.http_status, e.code, e.id) == (400, HEADER_MISMATCH, 5)
    assert err(b"[1]", {"MCP-Protocol-Version": [NEW, NEW]}).id is None


def test_raw_header_list_form():
    """The pipeline may pass raw (bytes, bytes) pairs straight from the HTTP parser."""
    raw = [(b"mcp-protocol-version", NEW.encode()), (b"MCP-METHOD", b"tools/call"),
           (b"mcp-name", b" get_weather ")]
    assert parse_message(orjson.dumps(call()), raw).tool == "get_weather"


def test_session_id_recorded_in_session_era_ignored_in_stateless():
    body = orjson.dumps(call())
    assert parse_message(body, {"mcp-session-id": ["abc"]}).session_id == "abc"
    assert parse_message(body, stateless(**{"Mcp-Session-Id": "abc"})).session_id is None
    assert err(body, {"mcp-session-id": ["a b"]}).http_status == 400


# ---------------------------------------------------------------- header/body agreement

@pytest.mark.parametrize("names", [
    ("MCP-Protocol-Version", "Mcp-Method", "Mcp-Name"),
    ("mcp-protocol-version", "mcp-method", "mcp-name"),
    ("MCP-PROTOCOL-VERSION", "MCP-METHOD", "MCP-NAME"),
    ("Mcp-Protocol-Version", "mCp-MeThOd", "MCP-name"),
])
def test_header_names_case_insensitive(names):
    v, m, n = names
    req = parse_message(orjson.dumps(call()), {v: [NEW], m: ["tools/call"], n: ["get_weather"]})
    assert req.tool == "get_weather"


@pytest.mark.parametrize("headers", [
    pytest.param(stateless(name="other_tool"), id="name-differs"),
    pytest.param(stateless(name="GET_WEATHER"), id="name-values-case-sensitive"),
    pytest.param(stateless(method="tools/list"), id="method-differs"),
    pytest.param(stateless(method="Tools/Call"), id="method-values-case-sensitive"),
    pytest.param(stateless(name=None), id="name-missing"),
    pytest.param({"MCP-Protocol-Version": [NEW], "Mcp-Name": ["get_weather"]}, id="method-missing"),
    pytest.param(stateless() | {"mcp-name": ["get_weather", "x"]}, id="name-repeated"),
    pytest.param(stateless(name="get\x01weather"), id="name-control-char"),
    pytest.param(stateless(name="=?base64?b3RoZXI=?="), id="base64-name-differs"),
    pytest.param(stateless(name="=?base64?!!!?="), id="base64-invalid"),
])
def test_header_body_mismatch_is_32020(headers):
    e = err(orjson.dumps(call(id="r1")), headers)
    assert (e.http_status, e.code, e.id) == (400, HEADER_MISMATCH, "r1")


def test_base64_sentinel_name_decoded():
    enc = "=?base64?" + base64.b64encode("wetter_überall".encode()).decode() + "?="
    req = parse_message(orjson.dumps(call(name="wetter_überall")), stateless(name=enc))
    assert req.tool == "wetter_überall"
    # Markers are case-sensitive: an upper-case sentinel is a literal value, so it mismatches.
    upper = "=?BASE64?" + base64.b64encode(b"get_weather").decode() + "?="
    assert err(orjson.dumps(call()), stateless(name=upper)).code == HEADER_MISMATCH


def test_meta_version_must_match_header():
    body = call()
    body["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2025-11-25"}
    assert err(orjson.dumps(body), stateless()).code == HEADER_MISMATCH


def test_name_header_on_a_method_without_name_refused():
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}})
    assert parse_message(body, stateless("tools/list", name=None)).method == "tools/list"
    assert err(body, stateless("tools/list", name="x")).code == HEADER_MISMATCH


def test_session_era_ignores_stateless_headers():
    """Mcp-Method/Mcp-Name are not defined before 2026-07-28: not checked there."""
    h = {"MCP-Protocol-Version": ["2025-11-25"], "Mcp-Method": ["other"], "Mcp-Name": ["other"]}
    assert parse_message(orjson.dumps(call()), h).tool == "get_weather"


SCHEMA_TOOL = {"name": "execute_sql", "inputSchema": {"type": "object", "properties": {
    "region": {"type": "string", "x-mcp-header": "Region"},
    "limit": {"type": "integer", "x-mcp-header": "Limit"},
    "dry": {"type": "boolean", "x-mcp-header": "Dry"},
    "opts": {"type": "object", "properties": {"tenant": {"type": "string", "x-mcp-header": "Tenant"}}},
    "query": {"type": "string"}}}}
PATHS = {"execute_sql": param_header_paths(SCHEMA_TOOL)}


def sql(args, **hdrs):
    body = orjson.dumps(call("execute_sql", args))
    return parse_message(body, stateless(name="execute_sql", **hdrs), param_headers=PATHS)


def test_param_header_paths_from_schema():
    assert PATHS["execute_sql"] == {"mcp-param-region": ("region",), "mcp-param-limit": ("limit",),
                                    "mcp-param-dry": ("dry",), "mcp-param-tenant": ("opts", "tenant")}
    dup = {"name": "t", "inputSchema": {"properties": {"a": {"x-mcp-header": "X"}, "b": {"x-mcp-header": "x"}}}}
    assert param_header_paths(dup) is None


@pytest.mark.parametrize("args,hdrs", [
    ({"region": "us-west1", "query": "q"}, {"Mcp-Param-Region": "us-west1"}),
    ({"region": "us-west1"}, {"mcp-param-region": "us-west1"}),
    ({"region": "us-west1"}, {"MCP-PARAM-REGION": "us-west1"}),
    ({"region": " padded "}, {"Mcp-Param-Region": "=?base64?IHBhZGRlZCA=?="}),
    ({"limit": 42}, {"Mcp-Param-Limit": "42"}),
    ({"limit": 42}, {"Mcp-Param-Limit": "42.0"}),
    ({"dry": False}, {"Mcp-Param-Dry": "false"}),
    ({"opts": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "acme"}),
    ({"region": None}, {}),
    ({}, {"Mcp-Param-Unknown": "x"}),
])
def test_param_headers_agree(args, hdrs):
    req = sql(args, **hdrs)
    assert req.unchecked_params == tuple(sorted(h.lower() for h in hdrs if "unknown" in h.lower()))


@pytest.mark.parametrize("args,hdrs", [
    ({"region": "us-west1"}, {"Mcp-Param-Region": "eu-west1"}),
    ({"region": "us-west1"}, {"Mcp-Param-Region": "US-WEST1"}),
    ({"region": "us-west1"}, {}),
    ({}, {"Mcp-Param-Region": "us-west1"}),
    ({"region": None}, {"Mcp-Param-Region": "null"}),
    ({"limit": 42}, {"Mcp-Param-Limit": "42.5"}),
    ({"limit": 42}, {"Mcp-Param-Limit": "0x2a"}),
    ({"dry": True}, {"Mcp-Param-Dry": "True"}),
    ({"region": {"x": 1}}, {"Mcp-Param-Region": "x"}),
    ({"opts": {"tenant": "acme"}}, {"Mcp-Param-Tenant": "evil"}),
])
def test_param_headers_mismatch(args, hdrs):
    with pytest.raises(McpError) as info:
        sql(args, **hdrs)
    assert (info.value.http_status, info.value.code) == (400, HEADER_MISMATCH)


def test_param_headers_unchecked_without_schema():
    """Unknown tools' Mcp-Param-* are forwarded and ignored (spec) but reported."""
    req = parse_message(orjson.dumps(call("execute_sql", {"region": "a"})),
                        stateless(name="execute_sql", **{"Mcp-Param-Region": "b"}))
    assert req.unchecked_params == ("mcp-param-region",)


# ---------------------------------------------------------------- refusals

REFUSALS = [
    ("denied", {"rule": "no-interns"}, -31001, "denied by rule no-interns",
     {"error": "denied", "rule": "no-interns", "request_id": "rq1"}),
    ("approval_denied", {"approval_id": "ap_1"}, -31002, "approval ap_1 was denied",
     {"error": "approval_denied", "approval_id": "ap_1", "request_id": "rq1"}),
    ("approval_expired", {"approval_id": "ap_1"}, -31002, "approval ap_1 was not given in time",
     {"error": "approval_expired", "approval_id": "ap_1", "request_id": "rq1"}),
    ("approval_pending", {"approval_id": "ap_1"}, -31003, "waiting for approval ap_1",
     {"status": "pending", "approval_id": "ap_1", "request_id": "rq1"}),
    ("unknown_tool", {}, -32602, "Unknown tool: get_weather", None),
]


@pytest.mark.parametrize("headers,era", ERAS)
@pytest.mark.parametrize("kind,kw,code,message,data", REFUSALS)
@pytest.mark.parametrize("id", [7, "abc"])
def test_refusal_bodies(headers, era, kind, kw, code, message, data, id):
    req = parse_message(orjson.dumps(call(id=id)), headers)
    back = json.loads(refusal(req, kind, request_id="rq1", **kw))
    expect = {"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}
    if data is not None:
        expect["error"]["data"] = data
        assert not -32768 <= code <= -32000
    assert back == expect


@pytest.mark.parametrize("headers,era", ERAS)
def test_refusal_as_tool_result(headers, era):
    req = parse_message(orjson.dumps(call(id=3)), headers)
    back = json.loads(refusal(req, "denied", rule="r", as_tool_result=True))
    result = {"content": [{"type": "text", "text": "denied by rule r"}], "isError": True,
              "_meta": {"fastgate": {"error": "denied", "rule": "r"}}}
    if era == "stateless":
        result["resultType"] = "complete"
    assert back == {"jsonrpc": "2.0", "id": 3, "result": result}


def test_refusal_of_notification_is_none_and_message_override():
    n = parse_message(b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}', {})
    assert refusal(n, "denied") is None
    req = parse_message(orjson.dumps(call()), {})
    assert json.loads(refusal(req, "denied", message="nope"))["error"]["message"] == "nope"
    assert json.loads(refusal(req, "denied"))["error"]["data"] == {"error": "denied", "rule": None}
    with pytest.raises(ValueError):
        refusal(req, "maybe")


# ---------------------------------------------------------------- tools/list filtering

TOOLS = {"jsonrpc": "2.0", "id": 2, "result": {
    "tools": [{"name": "a", "inputSchema": {"type": "object"}},
              {"name": "secret", "description": "x"},
              {"name": "b", "inputSchema": {"properties": {"r": {"x-mcp-header": "R"}}}},
              "junk", {"name": 5}],
    "nextCursor": "c2", "_meta": {"k": 1}}}


def test_filter_json_keeps_other_fields():
    f = ToolsListFilter({"a", "b"})
    out = orjson.loads(f.filter_json(orjson.dumps(TOOLS)))
    assert [t["name"] for t in out["result"]["tools"]] == ["a", "b"]
    assert out["result"]["nextCursor"] == "c2" and out["result"]["_meta"] == {"k": 1} and out["id"] == 2
    assert f.param_headers == {"b": {"mcp-param-r": ("r",)}}


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no"}}',
    b'{"jsonrpc":"2.0","method":"notifications/message","params":{}}',
    b'{"jsonrpc":"2.0","id":2,"result":{}}',
])
def test_filter_passes_non_list_messages_verbatim(body):
    assert ToolsListFilter(set()).filter_json(body) == body


@pytest.mark.parametrize("body", [b"{", b'{"result":{"tools":{}}}', b'{"a":1,"a":2}', b""])
def test_filter_fails_closed_on_unreadable(body):
    with pytest.raises(McpError) as info:
        ToolsListFilter({"a"}).filter_json(body)
    assert info.value.http_status == 502


def _sse(eol: bytes) -> bytes:
    listed = orjson.dumps(TOOLS)
    half = len(listed) // 2
    return eol.join([
        b"id: 0", b"data: ", b"",                        # priming event
        b": ping", b"",
        b"event: message", b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}", b"",
        b"event: message", b"id: 1", b"data: " + listed[:half], b"data:" + listed[half:], b"retry: 5", b"",
    ]) + eol


def _run(stream, data: bytes, cuts) -> bytes:
    out, pos = [], 0
    for cut in cuts:
        out.append(stream.feed(data[pos:cut]))
        pos = cut
    out.append(stream.feed(data[pos:]))
    out.append(stream.close())
    return b"".join(out)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_sse_filter_independent_of_split(eol):
    """The same output for every single split point and for byte-at-a-time feeding."""
    data = _sse(eol)
    whole = _run(ToolsListFilter({"a"}).stream(), data, [])
    assert b"secret" not in whole and b'"name":"a"' in whole
    assert whole.startswith(eol.join([b"id: 0", b"data: ", b"", b": ping", b""]))
    assert b"notifications/progress" in whole and b"retry: 5" + eol in whole
    events = [e for e in whole.split(eol * 2) if b'"tools"' in e]
    assert len(events) == 1 and events[0].count(b"data:") == 1
    for cut in range(len(data) + 1):
        assert _run(ToolsListFilter({"a"}).stream(), data, [cut]) == whole
    assert _run(ToolsListFilter({"a"}).stream(), data, range(1, len(data))) == whole


def test_sse_last_event_without_blank_line_and_unreadable_event():
    listed = b"data: " + orjson.dumps(TOOLS)
    out = _run(ToolsListFilter(set()).stream(), listed, [])
    assert orjson.loads(out[6:])["result"]["tools"] == []
    with pytest.raises(McpError):
        _run(ToolsListFilter(set()).stream(), b"data: {nope\n\n", [])


# ---------------------------------------------------------------- authorization

def test_resource_metadata_and_challenge():
    doc = resource_metadata("https://gw.example/mcp", "https://idp.example", ["tools"])
    assert doc == {"resource": "https://gw.example/mcp", "authorization_servers": ["https://idp.example"],
                   "bearer_methods_supported": ["header"], "scopes_supported": ["tools"]}
    assert "scopes_supported" not in resource_metadata("https://gw.example/mcp", ["a", "b"], None)
    url = metadata_url("https://gw.example/mcp")
    assert url == "https://gw.example/.well-known/oauth-protected-resource/mcp"
    assert metadata_url("https://gw.example") == "https://gw.example/.well-known/oauth-protected-resource"
    assert www_authenticate(url) == f'Bearer resource_metadata="{url}"'
    assert www_authenticate(url, "invalid_token", 'bad "x"') == (
        f'Bearer resource_metadata="{url}", error="invalid_token", error_description="bad \\"x\\""')
    with pytest.raises(ValueError):
        www_authenticate(url, description="a\r\nSet-Cookie: x")


# ---------------------------------------------------------------- sessions

def test_session_ids_are_sealed_to_the_caller():
    sealer = StateSealer(KEY)
    sid = sealer.session_id("abc.123", "alice", "jwt", elicitation=True)
    assert sid.startswith("abc.123.e") and all(0x21 <= ord(c) <= 0x7E for c in sid)
    assert sealer.open_session(sid, "alice", "jwt") == ("abc.123", True)
    plain = sealer.session_id("abc", "alice", "jwt", elicitation=False)
    assert sealer.open_session(plain, "alice", "jwt") == ("abc", False)
    for bad, who in ((sid, ("bob", "jwt")), (sid, ("alice", "api_key")), ("abc.123", ("alice", "jwt")),
                     (sid.replace(".e", ".n", 1), ("alice", "jwt")), (sid[:-1], ("alice", "jwt")),
                     (StateSealer(bytes(32)).session_id("abc.123", "alice", "jwt", True), ("alice", "jwt")),
                     ("", ("alice", "jwt")), (".", ("alice", "jwt")), ("x.e", ("alice", "jwt"))):
        assert sealer.open_session(bad, *who) is None, bad
    with pytest.raises(ValueError):
        sealer.session_id("a b", "alice", "jwt", False)


# ---------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "1.0"])},
    optional={"id": json_values, "method": st.sampled_from(["tools/call", "ping", "initialize"]) | json_values,
              "params": st.fixed_dictionaries({}, optional={"name": json_values, "arguments": json_values})
              | json_values, "result": json_values, "error": json_values})
header_sets = st.sampled_from([{}, stateless(), {"MCP-Protocol-Version": ["2025-06-18"]},
                               {"MCP-Protocol-Version": ["bogus"]}])


@settings(max_examples=300, deadline=None)
@given(value=json_values | messages, headers=header_sets)
def test_fuzz_returns_or_raises_mcp_error(value, headers):
    body = json.dumps(value).encode()  # json, not orjson: out-of-range integers reach the parser too
    try:
        req = parse_message(body, headers)
    except McpError as e:
        assert orjson.loads(e.body())["error"]["code"] == e.code
        return
    assert req.kind in ("request", "notification", "response")
    if req.kind == "request":
        assert type(req.id) in (int, str)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_fuzz_bytes(raw):
    try:
        parse_message(raw, [])
    except McpError:
        pass


# -- approval round trips (2026-07-28) ------------------------------------------------------------

KEY = bytes(range(32))


def test_sealed_state_opens_only_unaltered_and_unexpired():
    sealer = StateSealer(KEY)
    token = sealer.seal({"k": "pending", "a": "ap_1", "e": 2_000, "up": None})
    assert token.startswith("fastgate1.")
    assert sealer.open(token, 7, now=1_000)["a"] == "ap_1"
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"),        # altered signature
                token.replace("fastgate1.", "fastgate1.x", 1),            # altered body
                StateSealer(bytes(32)).seal({"a": "ap_1", "e": 2_000}),  # another key
                "fastgate1.", "fastgate1.e30", "", "\u00e9.\u00e9"):
        with pytest.raises(McpError) as exc:
            sealer.open(bad, 7, now=1_000)
        assert exc.value.code == INVALID_PARAMS and exc.value.http_status == 200 and exc.value.id == 7
    with pytest.raises(McpError):
        sealer.open(token, 7, now=2_000)  # expired
    with pytest.raises(ValueError):
        StateSealer(b"short")


@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(-10, 10), st.text(max_size=8)), max_size=4),
       st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_sealed_state_round_trips_and_garbage_is_refused(fields, garbage):
    sealer = StateSealer(KEY)
    fields = {**fields, "e": 10.0}
    assert sealer.open(sealer.seal(fields), 1, now=0) == fields
    with pytest.raises(McpError):
        sealer.open("fastgate1." + garbage.decode("latin-1"), 1, now=0)


def test_call_hash_ignores_key_order_but_not_values():
    assert call_hash("t", {"a": 1, "b": {"x": 1, "y": 2}}) == call_hash("t", {"b": {"y": 2, "x": 1}, "a": 1})
    assert call_hash("t", {"a": 1}) != call_hash("t", {"a": 2}) != call_hash("u", {"a": 2})


def test_strip_gate_state_restores_the_upstream_round_trip():
    msg = call(arguments={"id": 1}, id=9)
    msg["params"].update(requestState="fastgate1.x.y",
                         inputResponses={"fastgate-ap_1": {"action": "accept"}, "confirm": {"action": "accept"}})
    assert gate_responses(msg["params"]) == {"fastgate-ap_1": {"action": "accept"}}
    out = orjson.loads(strip_gate_state(msg, "up-1", {"earlier": {"action": "accept"}}))
    assert out["id"] == 9 and out["params"]["requestState"] == "up-1"
    assert out["params"]["inputResponses"] == {"earlier": {"action": "accept"}, "confirm": {"action": "accept"}}
    bare = orjson.loads(strip_gate_state(msg | {"params": {**msg["params"], "inputResponses": {
        "fastgate-ap_1": {}}}}, None))
    assert "requestState" not in bare["params"] and "inputResponses" not in bare["params"]


def test_input_required_names_the_approval():
    req = parse_message(orjson.dumps(call(arguments={})), {
        "mcp-protocol-version": [NEW], "mcp-method": ["tools/call"], "mcp-name": ["get_weather"]})
    body = orjson.loads(input_required(req, "ap_9", "waiting for ap_9", "fastgate1.s.m"))
    result = body["result"]
    assert body["id"] == 1 and result["resultType"] == "input_required" and result["requestState"] == "fastgate1.s.m"
    assert result["inputRequests"]["fastgate-ap_9"]["method"] == "elicitation/create"


@pytest.mark.parametrize("sse", [False, True])
def test_result_state_wrapper_wraps_only_input_required(sse):
    wrapper = ResultStateWrapper(lambda up: f"sealed({up})")
    asks = {"jsonrpc": "2.0", "id": 3, "result": {"resultType": "input_required", "requestState": "u",
                                                  "inputRequests": {"q": {"method": "elicitation/create"}}}}
    done = {"jsonrpc": "2.0", "id": 3, "result": {"resultType": "complete", "content": []}}
    for msg, want in ((asks, "sealed(u)"), (done, None)):
        raw = orjson.dumps(msg)
        if sse:
            stream = wrapper.stream()
            out = b"".join(stream.feed(bytes([b])) for b in b"event: message\r\ndata: " + raw + b"\r\n\r\n")
            out += stream.close()
            got = orjson.loads(out.split(b"data: ", 1)[1].split(b"\r\n")[0])
        else:
            got = orjson.loads(wrapper.filter_json(raw))
        assert got["result"].get("requestState") == (want or msg["result"].get("requestState"))
    with pytest.raises(McpError):
        wrapper.filter_json(b"{not json")


# -- the 2024-11-05 HTTP+SSE transport ----------------------------------------------------------------

@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_legacy_probe_refuses_an_endpoint_event_at_any_split(eol):
    stream = b"event: endpoint" + eol + b"data: /messages?session_id=1" + eol + eol + b": ping" + eol + eol
    for cut in range(len(stream) + 1):
        probe = LegacyTransportProbe()
        with pytest.raises(McpError) as exc:
            probe.feed(stream[:cut])
            probe.feed(stream[cut:])
        assert exc.value.http_status == 501


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_legacy_probe_passes_other_streams_unchanged_at_any_split(eol):
    stream = b"id: 0" + eol + b"data: " + eol + eol + b"event: message" + eol + b"data: {}" + eol + eol
    for cut in range(len(stream) + 1):
        probe = LegacyTransportProbe()
        assert probe.feed(stream[:cut]) + probe.feed(stream[cut:]) + probe.close() == stream
