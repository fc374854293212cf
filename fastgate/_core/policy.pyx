# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled twin of policy_py: the same tables, the same Decision for every call.

`Engine(tables)` turns each RuleSpec / CondSpec into a small typed object once; `decide()`
then does one dict lookup for the function and walks its candidate tuple (deny, approve,
allow; each by id), so rules of other functions cost nothing. Caller attributes are read
lazily, only when some candidate needs them. Numbers are compared with CPython's own exact
rich comparisons (fast paths only for double/double and small int/small int), so the results
cannot drift from the reference on int/float edge cases.
"""
from cpython.bool cimport PyBool_Check
from cpython.dict cimport PyDict_CheckExact, PyDict_GetItem, PyDict_GetItemWithError
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact, PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.object cimport PyObject, PyObject_IsTrue, PyObject_RichCompareBool, Py_EQ, Py_GE, Py_GT, Py_LE, Py_LT
from cpython.set cimport PyAnySet_Check, PySet_Contains
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_Contains, PyUnicode_GET_LENGTH, PyUnicode_Tailmatch
from libc.math cimport isfinite

from fastgate._core import policy_py as _ref
from fastgate._core.policy_py import (
    MAX_MATCH_CHARS, MAX_WALK_DEPTH, MISSING, CallContext, CondSpec, Decision, RuleSpec, Tables,
)

__all__ = ["CallContext", "CondSpec", "Decision", "Engine", "MISSING", "RuleSpec", "Tables",
           "MAX_MATCH_CHARS", "MAX_WALK_DEPTH"]

cdef enum:
    ARG, PARAM, QUERY, HEADER, CLAIM
cdef enum:
    KEY, INDEX, WILDCARD, DESCEND
cdef enum:
    EQ, NE, LT, LE, GT, GE, IN, NOT_IN, PREFIX, SUFFIX, CONTAINS, MATCHES, EXISTS
cdef enum:
    K_NULL, K_BOOL, K_NUM, K_STR, K_ARR, K_OBJ, K_OTHER
cdef enum:
    F = 0
    T = 1
    U = 2

# The switches below hard-code the reference's numbering; refuse to load if it ever changes.
if ((_ref.ARG, _ref.CLAIM, _ref.KEY, _ref.DESCEND, _ref.EQ, _ref.GE, _ref.EXISTS, _ref.K_NULL, _ref.K_OTHER,
     _ref.F, _ref.T, _ref.U) != (ARG, CLAIM, KEY, DESCEND, EQ, GE, EXISTS, K_NULL, K_OTHER, F, T, U)):
    raise ImportError("fastgate._core.policy is out of date with policy_py; rebuild it")

cdef object _MISSING = MISSING
cdef Py_ssize_t _MAX_DEPTH = MAX_WALK_DEPTH
cdef Py_ssize_t _MAX_MATCH = MAX_MATCH_CHARS
cdef tuple _ATTRS = ("args", "params", "query", "headers", "claims")
cdef int[6] _RICH_OP
_RICH_OP[LT] = Py_LT
_RICH_OP[LE] = Py_LE
_RICH_OP[GT] = Py_GT
_RICH_OP[GE] = Py_GE


# --------------------------------------------------------------------------- values

cdef inline int _kind(object x) noexcept:
    if x is None:
        return K_NULL
    if PyUnicode_CheckExact(x):
        return K_STR
    if PyLong_CheckExact(x) or PyFloat_CheckExact(x):
        return K_NUM
    if PyBool_Check(x):
        return K_BOOL
    if PyList_CheckExact(x):
        return K_ARR
    if PyDict_CheckExact(x):
        return K_OBJ
    return K_OTHER


cdef bint _finite(object x) except -1:
    """x is an exact int or float."""
    cdef int overflow = 0
    if PyFloat_CheckExact(x):
        return isfinite(PyFloat_AS_DOUBLE(x))
    PyLong_AsLongLongAndOverflow(x, &overflow)
    if overflow == 0:
        return True
    try:
        float(x)
    except OverflowError:
        return False
    return True


cdef inline int _not3(int o) noexcept:
    return U if o == U else (F if o == T else T)


cdef bint _deep_equal(object a, object b) except -1:
    cdef int ka = _kind(a)
    cdef Py_ssize_t i, n
    cdef PyObject* p
    if ka != _kind(b) or ka == K_OTHER:
        return False
    if ka == K_ARR:
        n = PyList_GET_SIZE(a)
        if n != PyList_GET_SIZE(b):
            return False
        for i in range(n):
            if not _deep_equal(<object>PyList_GET_ITEM(a, i), <object>PyList_GET_ITEM(b, i)):
                return False
        return True
    if ka == K_OBJ:
        if len(<dict>a) != len(<dict>b):
            return False
        for k, v in (<dict>a).items():
            p = PyDict_GetItemWithError(b, k)
            if p == NULL or not _deep_equal(v, <object>p):
                return False
        return True
    if ka == K_NULL:
        return True
    if ka == K_BOOL:
        return a is b
    if ka == K_NUM:
        # Not PyObject_RichCompareBool: its identity shortcut would make a NaN equal to itself.
        if PyFloat_CheckExact(a) and PyFloat_CheckExact(b):
            return PyFloat_AS_DOUBLE(a) == PyFloat_AS_DOUBLE(b)
        return a == b
    return PyObject_RichCompareBool(a, b, Py_EQ)


cdef int _equal3(object x, object v) except -1:
    cdef int kx = _kind(x)
    if kx == K_OTHER or kx != _kind(v):
        return U
    if kx == K_NUM:
        if not (_finite(x) and _finite(v)):
            return U
        return T if PyObject_RichCompareBool(x, v, Py_EQ) else F
    return T if _deep_equal(x, v) else F


cdef int _any_equal3(object seq, object v) except -1:
    """OR over `equal3(element, v)`; seq is an exact list."""
    cdef int result = F, o
    cdef Py_ssize_t i
    for i in range(PyList_GET_SIZE(seq)):
        o = _equal3(<object>PyList_GET_ITEM(seq, i), v)
        if o == T:
            return T
        if o == U:
            result = U
    return result


# --------------------------------------------------------------------------- conditions

cdef struct Walk:
    Py_ssize_t count
    bint stop
    bint result


cdef class _Cond:
    cdef int source, op, nsteps
    cdef bint deny, simple, exists_value, v_float, v_small_int
    cdef double vd
    cdef long long vll
    cdef object attr, key, value, fullmatch, strset, numset
    cdef tuple step_args
    cdef bytes step_kinds_obj
    cdef const unsigned char* step_kinds

    def __init__(self, spec):
        cdef int overflow = 0
        self.source = spec.source
        self.op = spec.op
        self.deny = bool(spec.deny)
        self.attr = _ATTRS[self.source]
        self.key = spec.key
        self.value = spec.value
        self.step_args = tuple(arg for _, arg in spec.steps)
        self.step_kinds_obj = bytes(kind for kind, _ in spec.steps)
        self.step_kinds = <const unsigned char*>self.step_kinds_obj
        self.nsteps = len(self.step_args)
        self.simple = all(kind in (KEY, INDEX) for kind, _ in spec.steps)
        self.exists_value = self.op == EXISTS and spec.value is True
        self.fullmatch = spec.regex.fullmatch if self.op == MATCHES else None
        self.strset = self.numset = None
        value = spec.value
        if self.op in (IN, NOT_IN) and PyList_CheckExact(value) and len(value) > 0:
            # Exact-type sets answer `in` exactly like the reference's loop of equal3.
            if all(_kind(e) == K_STR for e in value):
                self.strset = frozenset(value)
            elif all(_kind(e) == K_NUM and _finite(e) for e in value):
                self.numset = frozenset(value)
        self.v_float = self.v_small_int = False
        if LT <= self.op <= GE:
            if PyFloat_CheckExact(value):
                self.v_float = True
                self.vd = PyFloat_AS_DOUBLE(value)
            elif PyLong_CheckExact(value):
                self.vll = PyLong_AsLongLongAndOverflow(value, &overflow)
                self.v_small_int = overflow == 0


cdef int _order(_Cond c, object x) except -1:
    """x is an exact int or float; c.value a finite number."""
    cdef double a
    cdef long long ll
    cdef int overflow = 0, op = c.op
    cdef bint r
    if PyFloat_CheckExact(x):
        a = PyFloat_AS_DOUBLE(x)
        if not isfinite(a):
            return U
        if c.v_float:
            r = a < c.vd if op == LT else a <= c.vd if op == LE else a > c.vd if op == GT else a >= c.vd
            return T if r else F
    else:
        ll = PyLong_AsLongLongAndOverflow(x, &overflow)
        if overflow == 0:
            if c.v_small_int:
                r = ll < c.vll if op == LT else ll <= c.vll if op == LE else ll > c.vll if op == GT else ll >= c.vll
                return T if r else F
        elif not _finite(x):
            return U
    return T if PyObject_RichCompareBool(x, c.value, _RICH_OP[op]) else F


cdef int _in3(_Cond c, object x) except -1:
    cdef int result = F, o
    cdef int kx
    cdef Py_ssize_t i
    if c.strset is not None:
        if not PyUnicode_CheckExact(x):
            return U
        return T if PySet_Contains(c.strset, x) else F
    if c.numset is not None:
        kx = _kind(x)
        if kx != K_NUM or not _finite(x):
            return U
        return T if PySet_Contains(c.numset, x) else F
    for i in range(PyList_GET_SIZE(c.value)):
        o = _equal3(x, <object>PyList_GET_ITEM(c.value, i))
        if o == T:
            return T
        if o == U:
            result = U
    return result


cdef int _test(_Cond c, object x) except -1:
    cdef int op = c.op
    cdef int kx
    if op == EQ:
        return _equal3(x, c.value)
    if op == NE:
        return _not3(_equal3(x, c.value))
    if op == IN:
        return _in3(c, x)
    if op == NOT_IN:
        return _not3(_in3(c, x))
    kx = _kind(x)
    if op <= GE:
        if kx != K_NUM:
            return U
        return _order(c, x)
    if op == PREFIX or op == SUFFIX:
        if kx != K_STR:
            return U
        return T if PyUnicode_Tailmatch(x, c.value, 0, PyUnicode_GET_LENGTH(x), -1 if op == PREFIX else 1) else F
    if op == CONTAINS:
        if kx == K_STR:
            if not PyUnicode_CheckExact(c.value):
                return U
            return T if PyUnicode_Contains(x, c.value) else F
        if kx == K_ARR:
            return _any_equal3(x, c.value)
        return U
    if op == MATCHES:
        if kx != K_STR or PyUnicode_GET_LENGTH(x) > _MAX_MATCH:
            return U
        return F if c.fullmatch(x) is None else T
    raise AssertionError("unknown operator")


cdef inline int _leaf(_Cond c, object x) except -1:
    if c.op == EXISTS:
        return T if (x is not _MISSING) == c.exists_value else F
    if x is _MISSING:
        return U
    return _test(c, x)


cdef inline bint _verdict(_Cond c, int o) noexcept:
    """A condition with exactly this one leaf: deny takes true or unknown, grants need true."""
    return o != F if c.deny else o == T


cdef inline int _emit(_Cond c, int o, Walk* w) noexcept:
    w.count += 1
    if c.deny:
        if o != F:
            w.stop = True
            w.result = True
    elif o != T:
        w.stop = True
        w.result = False
    return 0


cdef int _walk(_Cond c, object node, Py_ssize_t i, Py_ssize_t depth, Walk* w) except -1:
    cdef int step
    cdef PyObject* p
    cdef Py_ssize_t j, idx
    if i == c.nsteps:
        return _emit(c, _leaf(c, node), w)
    if depth > _MAX_DEPTH:
        return _emit(c, U, w)
    step = c.step_kinds[i]
    arg = <object>PyTuple_GET_ITEM(c.step_args, i)
    if step == KEY:
        if PyDict_CheckExact(node):
            p = PyDict_GetItemWithError(node, arg)
            if p != NULL:
                return _walk(c, <object>p, i + 1, depth + 1, w)
        return _emit(c, _leaf(c, _MISSING), w)
    if step == INDEX:
        idx = arg
        if PyList_CheckExact(node) and idx < PyList_GET_SIZE(node):
            return _walk(c, <object>PyList_GET_ITEM(node, idx), i + 1, depth + 1, w)
        return _emit(c, _leaf(c, _MISSING), w)
    if step == WILDCARD:
        if PyDict_CheckExact(node):
            for child in (<dict>node).values():
                _walk(c, child, i + 1, depth + 1, w)
                if w.stop:
                    return 0
        elif PyList_CheckExact(node):
            j = 0
            while j < PyList_GET_SIZE(node):
                _walk(c, <object>PyList_GET_ITEM(node, j), i + 1, depth + 1, w)
                if w.stop:
                    return 0
                j += 1
        else:
            _emit(c, _leaf(c, _MISSING), w)
        return 0
    return _descend(c, node, arg, i + 1, depth, w)


cdef int _descend(_Cond c, object node, object name, Py_ssize_t nxt, Py_ssize_t depth, Walk* w) except -1:
    cdef PyObject* p
    cdef Py_ssize_t j
    if depth > _MAX_DEPTH:
        return _emit(c, U, w)
    if PyDict_CheckExact(node):
        p = PyDict_GetItemWithError(node, name)
        if p != NULL:
            _walk(c, <object>p, nxt, depth + 1, w)
            if w.stop:
                return 0
        for child in (<dict>node).values():
            if PyDict_CheckExact(child) or PyList_CheckExact(child):
                _descend(c, child, name, nxt, depth + 1, w)
                if w.stop:
                    return 0
    elif PyList_CheckExact(node):
        j = 0
        while j < PyList_GET_SIZE(node):
            child = <object>PyList_GET_ITEM(node, j)
            if PyDict_CheckExact(child) or PyList_CheckExact(child):
                _descend(c, child, name, nxt, depth + 1, w)
                if w.stop:
                    return 0
            j += 1
    return 0


cdef bint _arg_matches(_Cond c, object node) except -1:
    cdef Walk w
    cdef Py_ssize_t i, idx
    cdef PyObject* p
    if node is _MISSING:
        return _verdict(c, _leaf(c, _MISSING))
    if c.simple:
        # Plain $.a.b / $.a[0]: one leaf, no recursion.
        for i in range(c.nsteps):
            if i > _MAX_DEPTH:
                return _verdict(c, U)
            if c.step_kinds[i] == KEY:
                if not PyDict_CheckExact(node):
                    return _verdict(c, _leaf(c, _MISSING))
                p = PyDict_GetItemWithError(node, <object>PyTuple_GET_ITEM(c.step_args, i))
            else:
                idx = <object>PyTuple_GET_ITEM(c.step_args, i)
                if not PyList_CheckExact(node) or idx >= PyList_GET_SIZE(node):
                    return _verdict(c, _leaf(c, _MISSING))
                p = PyList_GET_ITEM(node, idx)
            if p == NULL:
                return _verdict(c, _leaf(c, _MISSING))
            node = <object>p
        return _verdict(c, _leaf(c, node))
    w.count = 0
    w.stop = False
    w.result = False
    _walk(c, node, 0, 0, &w)
    if w.stop:
        return w.result
    if w.count == 0:
        return _verdict(c, _leaf(c, _MISSING))
    return not c.deny


cdef bint _values_match(_Cond c, object v) except -1:
    """query / header: a list of values (repeats included) or one value."""
    cdef Py_ssize_t i, n
    cdef int o
    cdef bint is_list
    if v is not _MISSING:
        is_list = PyList_CheckExact(v)
        if is_list or PyTuple_CheckExact(v):
            n = PyList_GET_SIZE(v) if is_list else PyTuple_GET_SIZE(v)
            if n == 0:
                return _verdict(c, _leaf(c, _MISSING))
            for i in range(n):
                o = _leaf(c, <object>(PyList_GET_ITEM(v, i) if is_list else PyTuple_GET_ITEM(v, i)))
                if c.deny:
                    if o != F:
                        return True
                elif o != T:
                    return False
            return not c.deny
    return _verdict(c, _leaf(c, v))


cdef inline object _mget(object mapping, object key):
    cdef PyObject* p
    if PyDict_CheckExact(mapping):
        p = PyDict_GetItemWithError(mapping, key)
        return _MISSING if p == NULL else <object>p
    return mapping.get(key, _MISSING)


cdef bint _cond_matches(_Cond c, object ctx) except -1:
    source = getattr(ctx, c.attr)
    if c.source == ARG:
        return _arg_matches(c, source)
    value = _mget(source, c.key)
    if c.source == QUERY or c.source == HEADER:
        return _values_match(c, value)
    return _verdict(c, _leaf(c, value))


# --------------------------------------------------------------------------- rules

cdef class _Rule:
    cdef object decision
    cdef frozenset groups, subjects
    cdef bint has_groups, has_subjects, authenticated
    cdef tuple conds
    cdef Py_ssize_t nconds

    def __init__(self, spec):
        self.decision = spec.decision
        self.groups = frozenset(spec.groups)
        self.subjects = frozenset(spec.subjects)
        self.has_groups = len(self.groups) > 0
        self.has_subjects = len(self.subjects) > 0
        self.authenticated = bool(spec.authenticated)
        self.conds = tuple(_Cond(c) for c in spec.conditions)
        self.nconds = len(self.conds)


cdef bint _overlap(frozenset mine, object theirs) except -1:
    """not mine.isdisjoint(theirs), iterating the smaller side when both are sets."""
    if PyAnySet_Check(theirs) and len(theirs) > len(mine):
        for g in mine:
            if PySet_Contains(theirs, g):
                return True
        return False
    for g in theirs:
        if PySet_Contains(mine, g):
            return True
    return False


cdef class Engine:
    """`decide(function, ctx)`: the first matching candidate decides; none -> tables.default."""

    cdef dict _functions
    cdef object _default, _unknown

    def __init__(self, tables):
        compiled = {}
        self._functions = {}
        for name, specs in tables.functions.items():
            rules = []
            for spec in specs:
                rule = compiled.get(id(spec))
                if rule is None:
                    rule = compiled[id(spec)] = _Rule(spec)
                rules.append(rule)
            self._functions[name] = tuple(rules)
        self._default = tables.default
        self._unknown = tables.unknown

    def decide(self, function, ctx):
        cdef PyObject* p = PyDict_GetItemWithError(self._functions, function)
        cdef tuple rules
        cdef _Rule r
        cdef Py_ssize_t i, k
        cdef int authed = -1
        cdef bint ok, have_groups = False, have_subject = False
        cdef object groups = None, subject = None
        if p == NULL:
            return self._unknown
        rules = <tuple>p
        for i in range(PyTuple_GET_SIZE(rules)):
            r = <_Rule>PyTuple_GET_ITEM(rules, i)
            if r.has_groups or r.has_subjects:
                ok = False
                if r.has_groups:
                    if not have_groups:
                        groups = ctx.groups
                        have_groups = True
                    ok = _overlap(r.groups, groups)
                if not ok and r.has_subjects:
                    if not have_subject:
                        subject = ctx.subject
                        have_subject = True
                    ok = PySet_Contains(r.subjects, subject)
                if not ok:
                    continue
            if r.authenticated:
                if authed < 0:
                    authed = PyObject_IsTrue(ctx.authenticated)
                if not authed:
                    continue
            ok = True
            for k in range(r.nconds):
                if not _cond_matches(<_Cond>PyTuple_GET_ITEM(r.conds, k), ctx):
                    ok = False
                    break
            if ok:
                return r.decision
        return self._default
