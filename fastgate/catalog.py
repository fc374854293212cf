"""Which function a request is for: method + normalized path, resolved through a segment trie.

Paths reaching `Catalog.match` come out of `normalize_target`, so the catalog compares exact,
case-sensitive strings and never decodes anything: the policy sees the same bytes the upstream
receives (threats.md §2). The trie prefers a literal segment over a `{param}` at every level
and falls back to the param only when the literal branch has no route.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from fastgate._core import load

_pathnorm = load("pathnorm")
normalize_target = _pathnorm.normalize_target
PathError = _pathnorm.PathError

__all__ = ["Catalog", "CatalogError", "Match", "PathError", "Route", "normalize_target"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token


class CatalogError(ValueError):
    """The declared functions cannot be compiled into an unambiguous catalog."""


@dataclass(frozen=True, slots=True)
class Route:
    function: str
    method: str
    template: str
    upstream: str


@dataclass(frozen=True, slots=True)
class Match:
    function: str
    upstream: str
    params: dict[str, str]
    template: str


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    route: Route | None = None
    param_names: tuple[str, ...] = ()


def _split_template(template: str, where: str) -> list[str | None]:
    """Segments of a template; None stands for a `{param}`.

    The template must already be in the form normalize_target produces, or it could
    never match a request and would only hide a typo.
    """
    if not isinstance(template, str) or not template.startswith("/") or "?" in template:
        raise CatalogError(f"{where}: path {template!r} must start with '/' and have no query")
    segments = template[1:].split("/")
    probe = "/".join(["", *("p" if _PARAM.fullmatch(seg) else seg for seg in segments)])
    try:
        normalized, _ = normalize_target(probe.encode("ascii"))
    except (UnicodeEncodeError, PathError) as exc:
        raise CatalogError(f"{where}: path {template!r} is not a valid request path ({exc})") from None
    if normalized != probe:
        raise CatalogError(f"{where}: path {template!r} is not normalized (would be {normalized!r})")
    return [None if _PARAM.fullmatch(seg) else seg for seg in segments]


class Catalog:
    """Immutable once built; `from_functions` is the only constructor meant for callers."""

    __slots__ = ("names", "routes", "_roots", "_mcp")

    names: frozenset[str]
    routes: tuple[Route, ...]

    def __init__(self, routes: Iterable[Route], mcp: dict[str, list[str]], names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self.routes = tuple(routes)
        self._mcp = {path: list(funcs) for path, funcs in mcp.items()}
        self._roots: dict[str, _Node] = {}
        for route in self.routes:
            self._insert(route)

    @classmethod
    def from_functions(cls, functions: Iterable[Any]) -> Catalog:
        """Compile declared functions (duck-typed: .name, .upstream, .http, .mcp)."""
        names: dict[str, None] = {}
        routes: list[Route] = []
        mcp: dict[str, list[str]] = {}
        tools: set[tuple[str, str]] = set()
        for fn in functions:
            name = fn.name
            if name in names:
                raise CatalogError(f"function {name!r} is declared twice")
            names[name] = None
            http = getattr(fn, "http", None)
            if http is not None:
                routes.append(Route(function=name, method=http.method, template=http.path,
                                    upstream=fn.upstream))
            spec = getattr(fn, "mcp", None)
            if spec is not None:
                where = f"function {name!r} mcp.endpoint"
                if any(seg is None for seg in _split_template(spec.endpoint, where)):
                    raise CatalogError(f"{where}: {spec.endpoint!r} cannot contain parameters")
                if (spec.endpoint, spec.tool) in tools:
                    raise CatalogError(f"{where}: tool {spec.tool!r} is already declared on "
                                       f"{spec.endpoint!r}")
                tools.add((spec.endpoint, spec.tool))
                mcp.setdefault(spec.endpoint, []).append(name)
        for route in routes:
            if route.template in mcp:
                raise CatalogError(f"function {route.function!r} http.path {route.template!r} "
                                   f"is also an MCP endpoint")
        return cls(routes, mcp, names)

    def _insert(self, route: Route) -> None:
        where = f"function {route.function!r} http"
        if not isinstance(route.method, str) or not _METHOD.fullmatch(route.method):
            raise CatalogError(f"{where}.method: {route.method!r} is not an HTTP method token")
        node = self._roots.setdefault(route.method, _Node())
        for seg in _split_template(route.template, f"{where}.path"):
            if seg is None:
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.literals.setdefault(seg, _Node())
        if node.route is not None:
            raise CatalogError(f"{where}: {route.method} {route.template!r} overlaps "
                               f"{node.route.template!r} of function {node.route.function!r}")
        names = tuple(_PARAM.findall(route.template))
        if len(set(names)) != len(names):
            raise CatalogError(f"{where}.path: {route.template!r} repeats a parameter name")
        node.route = route
        node.param_names = names

    def match(self, method: str, path: str) -> Match | None:
        """The route for a normalized path, or None.

        Any method on an MCP endpoint path gives None: the MCP stage owns those paths,
        even when an HTTP template with a parameter would also fit.
        """
        if path in self._mcp:
            return None
        root = self._roots.get(method)
        if root is None or not path.startswith("/"):
            return None
        segments = path[1:].split("/")
        found = _greedy(root, segments) or _search(root, segments)
        if found is None:
            return None
        route, names, values = found
        return Match(function=route.function, upstream=route.upstream,
                     params=dict(zip(names, values)) if names else {}, template=route.template)

    def mcp_endpoint(self, path: str) -> list[str] | None:
        """Functions declared on this MCP endpoint path, in declaration order."""
        funcs = self._mcp.get(path)
        return None if funcs is None else list(funcs)


_Found = tuple[Route, tuple[str, ...], Sequence[str]]


def _greedy(root: _Node, segments: list[str]) -> _Found | None:
    """The first path a literal-first depth-first search would try; when it ends on a route
    it is the answer, and it covers almost every request without backtracking."""
    node = root
    values: list[str] = []
    for seg in segments:
        child = node.literals.get(seg)
        if child is None:
            if node.param is None or not seg:
                return None
            child = node.param
            values.append(seg)
        node = child
    return None if node.route is None else (node.route, node.param_names, values)


def _search(root: _Node, segments: list[str]) -> _Found | None:
    """Depth-first with an explicit stack, the literal child tried before the param child.

    Each trie node sits at one depth, so a lookup visits every node at most once whatever
    the path, and deep templates cannot hit the recursion limit.
    """
    n = len(segments)
    stack: list[tuple[_Node, int, tuple[str, ...]]] = [(root, 0, ())]
    while stack:
        node, i, values = stack.pop()
        if i == n:
            if node.route is not None:
                return node.route, node.param_names, values
            continue
        seg = segments[i]
        if node.param is not None and seg:
            stack.append((node.param, i + 1, (*values, seg)))
        child = node.literals.get(seg)
        if child is not None:
            stack.append((child, i + 1, values))
    return None
