"""Mapping expressions: Python expressions compiled once, evaluated per record.

An expression sees ``this`` (the record) and ``meta`` (a
:class:`~collector.components.Meta`: receiver, pipeline, window bounds, allowed
HTTP headers, a plugin's extra names...) and the curated functions
of :mod:`collector.functions` plus whatever plugins register.  Reading is
bloblang-like and forgiving:

* ``this.user.name`` is rewritten at compile time into safe lookups that yield
  ``None`` when a key is missing (or the value is ``None``) instead of raising;
* ``this["user"]`` likewise yields ``None`` for a missing key or index;
* method calls on plain values work, from a short allow-list
  (``this.path.startswith("/api")``, ``this.tags.items()``).

What is refused at compile time, with the line and column: names that are
neither ``this``, ``meta``, a registered function, a safe builtin nor a
comprehension/lambda variable; any name or attribute starting with ``_``
(no dunder access); frame and code attributes (``gi_frame``, ``f_back``...);
calls of ``.format``/``.format_map``/``.mro``; statements (it is an
expression); ``await``/``yield``.

What is refused when evaluated (:class:`NotAllowedError`, an error of the
record): an attribute or method outside the allow-list (attributes of
functions, types, generators...), and obviously unbounded work: integers
beyond :data:`MAX_INT_BITS`, strings and lists beyond :data:`MAX_LENGTH`,
more than :data:`MAX_ITEMS` items from ``range`` and comprehensions in one
evaluation, format widths beyond :data:`MAX_FORMAT_WIDTH`.  Everything an
expression may do is listed in docs/processors/mapping.md, "What an
expression may do".

This is configuration written by the operator: the checks close the known
ways out of the expression (to modules, the environment, the token), they do
not make it a place for code from untrusted input.

Speed: the expression is compiled into a plain Python function
``lambda this, meta: <expr>`` once, so evaluating it costs one call (plus
one per operator that can grow a value).
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from collector.components import Meta
from collector.errors import ConfigError

SAFE_BUILTINS: tuple[str, ...] = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance", "len",
    "list", "map", "max", "min", "range", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip",
)  # fmt: skip

_GET = "_collector_get"
_ITEM = "_collector_item"
_CALL = "_collector_call"
_ITER = "_collector_iter"
_SPEC = "_collector_spec"
_COALESCE = "_collector_coalesce"
_OPS = {ast.Add: "_collector_add", ast.Mult: "_collector_mul", ast.Pow: "_collector_pow",
        ast.LShift: "_collector_lshift", ast.Mod: "_collector_mod"}  # fmt: skip

#: Largest integer an operator may produce, in bits (an event carries 64-bit integers anyway).
MAX_INT_BITS = 4096
#: Longest string, list or tuple an operator or method may produce (characters or items).
MAX_LENGTH = 10_000_000
#: Most items ``range`` and comprehensions may produce together in one evaluation.
MAX_ITEMS = 1_000_000
#: Largest width or precision in a format (f-string spec or ``%``).
MAX_FORMAT_WIDTH = 1000


class NotAllowedError(Exception):
    """An expression did something a mapping may not do (an error of the record being mapped)."""


# Attributes of frames, code objects, generators, coroutines and tracebacks: reading any of
# them is refused at compile time, whatever the value (a record field of that name reads
# as this["f_back"]).
_FRAME_ATTRS = frozenset(
    {"gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "gi_suspended", "cr_frame", "cr_code", "cr_await",
     "cr_origin", "cr_running", "cr_suspended", "ag_frame", "ag_code", "ag_await", "ag_running", "f_back",
     "f_builtins", "f_code", "f_globals", "f_locals", "f_lasti", "f_lineno", "f_trace", "f_trace_lines",
     "f_trace_opcodes", "tb_frame", "tb_next", "tb_lasti", "tb_lineno", "co_code", "co_consts", "co_names",
     "co_varnames", "co_filename", "func_globals", "func_code"}
)  # fmt: skip
# Methods that are never called in a mapping (a field of that name can still be read).
_CALLS_REFUSED = {
    "format": "str.format is not allowed in a mapping: write an f-string, f'{this.a}-{this.b}'",
    "format_map": "str.format_map is not allowed in a mapping: write an f-string",
    "mro": "calling .mro() is not allowed in a mapping",
}

_STR_METHODS = frozenset(
    {"capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii", "isdecimal",
     "isdigit", "islower", "isnumeric", "isspace", "istitle", "isupper", "join", "lower", "lstrip", "partition",
     "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rpartition", "rsplit", "rstrip", "split",
     "splitlines", "startswith", "strip", "swapcase", "title", "upper"}
)  # fmt: skip
_SET_METHODS = frozenset(
    {"copy", "difference", "intersection", "isdisjoint", "issubset", "issuperset", "symmetric_difference", "union"}
)
#: The methods a mapping may call, by the type of the value (subclasses included).
ALLOWED_METHODS: dict[type, frozenset[str]] = {
    bool: frozenset(),
    int: frozenset({"bit_length"}),
    float: frozenset({"is_integer"}),
    str: _STR_METHODS,
    list: frozenset({"copy", "count", "index"}),
    tuple: frozenset({"count", "index"}),
    dict: frozenset({"copy", "get", "items", "keys", "values"}),
    set: _SET_METHODS,
    frozenset: _SET_METHODS,
}
_DICT_METHODS = ALLOWED_METHODS[dict]
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})
# What a pull receiver's window offers (meta.window.start_time ...).
_WINDOW_ATTRS = frozenset({"start", "end", "seconds", "start_time", "end_time"})
_SEQUENCES = (str, bytes, list, tuple)


def _methods_of(obj: Any) -> frozenset[str] | None:
    """The allowed methods of a plain value, None for anything else (functions, types, generators...)."""
    found = ALLOWED_METHODS.get(type(obj))
    if found is not None:
        return found
    for kind, names in ALLOWED_METHODS.items():
        if isinstance(obj, kind):
            return names
    return None


def _kind(obj: Any) -> str:
    return "type" if isinstance(obj, type) else type(obj).__name__


def _is_window(obj: Any) -> bool:
    """An object of the collector's own (a pull receiver's window), not a builtin one."""
    return type(obj).__module__ != "builtins" and not callable(obj)


def safe_get(obj: Any, name: str) -> Any:
    """``obj.name`` for mappings (None when missing), :class:`~collector.components.Meta`'s
    documented names (its window's bounds, its ``extra`` keys), the allowed methods of plain
    values (None for a name the value does not have); anything else is :class:`NotAllowedError`."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, Meta):
        return obj.lookup(name)
    if isinstance(obj, Mapping):
        return obj.get(name)
    methods = _methods_of(obj)
    if methods is not None:
        if name in methods:
            return getattr(obj, name)
        if hasattr(type(obj), name):
            raise NotAllowedError(f"{type(obj).__name__}.{name} is not allowed in a mapping")
        return None
    if name in _WINDOW_ATTRS and _is_window(obj):
        return getattr(obj, name, None)
    if _type_method(obj, name):
        return getattr(obj, name)
    raise NotAllowedError(f"reading .{name} of a {_kind(obj)} is not allowed in a mapping")


def _type_method(obj: Any, name: str) -> bool:
    """``str.lower`` (for ``key=str.lower``): an allowed method read from its type; not the
    size-checked ones, which would get round their check that way."""
    methods = ALLOWED_METHODS.get(obj) if isinstance(obj, type) else None
    return methods is not None and name in methods and name not in ("replace", "join")


def safe_call(obj: Any, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """``obj.name(...)``: an allowed method of a plain value, a mapping's get/keys/values/items
    (even when the record has a field of that name), ``meta.get``; nothing else."""
    if isinstance(obj, dict):
        if name in _DICT_METHODS:
            return getattr(obj, name)(*args, **kwargs)
        return _call_value(obj.get(name), name, args, kwargs)
    if isinstance(obj, Meta):
        if name == "get":
            return obj.get(*args, **kwargs)
        return _call_value(obj.lookup(name), name, args, kwargs)
    if isinstance(obj, Mapping):
        if name in _MAPPING_METHODS:
            return getattr(obj, name)(*args, **kwargs)
        return _call_value(obj.get(name), name, args, kwargs)
    if obj is None:
        raise TypeError(f"cannot call .{name}() on None (the value is missing)")
    methods = _methods_of(obj)
    if methods is None:
        if _type_method(obj, name):
            return getattr(obj, name)(*args, **kwargs)
        raise NotAllowedError(f"method calls on {_kind(obj)} are not allowed in a mapping (.{name}())")
    if name not in methods:
        if hasattr(type(obj), name):
            raise NotAllowedError(f"{type(obj).__name__}.{name} is not allowed in a mapping")
        raise AttributeError(f"{type(obj).__name__} has no method {name}()")
    if isinstance(obj, str):
        if name == "replace":
            return _replace(obj, *args, **kwargs)
        if name == "join":
            return _join(obj, *args, **kwargs)
    return getattr(obj, name)(*args, **kwargs)


def _call_value(value: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if value is None:
        raise TypeError(f"cannot call .{name}(): there is no such method and the field is missing")
    return value(*args, **kwargs)


def _too_long(n: int, what: str) -> NotAllowedError:
    size = f"{n:,}" if n < 10**18 else "over 10^18"
    return NotAllowedError(f"{what} would make {size} characters or items; the limit is {MAX_LENGTH:,}")


def _replace(s: str, old: str, new: str, count: int = -1) -> str:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        hits = s.count(old) if old else len(s) + 1
        if count >= 0:
            hits = min(hits, count)
        n = len(s) + hits * (len(new) - len(old))
        if n > MAX_LENGTH:
            raise _too_long(n, "str.replace")
    return s.replace(old, new, count)


def _join(sep: str, iterable: Iterable[Any]) -> str:
    items = list(iterable)
    n = sum(len(x) for x in items if isinstance(x, str)) + len(sep) * max(len(items) - 1, 0)
    if n > MAX_LENGTH:
        raise _too_long(n, "str.join")
    return sep.join(items)


def _check_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise NotAllowedError(f"{what} would make an integer of about {bits:,} bits; the limit is {MAX_INT_BITS:,}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int)


def safe_add(a: Any, b: Any) -> Any:
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        n = len(a) + len(b)
        if n > MAX_LENGTH:
            raise _too_long(n, "+")
    elif _is_int(a) and _is_int(b):
        _check_bits(max(a.bit_length(), b.bit_length()) + 1, "+")
    return a + b


def safe_mul(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b):
        _check_bits(a.bit_length() + b.bit_length(), "*")
    elif isinstance(a, _SEQUENCES) and _is_int(b):
        if len(a) * b > MAX_LENGTH:
            raise _too_long(len(a) * b, "*")
    elif _is_int(a) and isinstance(b, _SEQUENCES) and len(b) * a > MAX_LENGTH:
        raise _too_long(len(b) * a, "*")
    return a * b


def safe_pow(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b) and b > 0 and abs(a) > 1:
        _check_bits(a.bit_length() * b if b < MAX_INT_BITS * 2 else MAX_INT_BITS * 2, "**")
    return a**b


def safe_lshift(a: Any, b: Any) -> Any:
    if _is_int(a) and _is_int(b) and a and b > 0:
        _check_bits(a.bit_length() + min(b, MAX_INT_BITS * 2), "<<")
    return a << b


# A printf-style conversion: %[(key)][flags][width][.precision]type
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?")
_DIGITS = re.compile(r"\d+")


def _check_width(text: str) -> None:
    for digits in _DIGITS.findall(text):
        if len(digits) > 4 or int(digits) > MAX_FORMAT_WIDTH:
            raise NotAllowedError(f"a format width or precision of {digits} is over the limit of {MAX_FORMAT_WIDTH}")


def safe_mod(a: Any, b: Any) -> Any:
    if isinstance(a, str | bytes):
        text = a.decode("latin-1") if isinstance(a, bytes) else a
        for match in _PERCENT.finditer(text):
            if "*" in match.groups():
                raise NotAllowedError("a '*' width or precision in a % format is not allowed in a mapping")
            _check_width("".join(g for g in match.groups() if g))
    return a % b


def format_spec(spec: str) -> str:
    """An f-string's format spec (``{x:>10}``), with its widths checked."""
    _check_width(spec)
    return spec


def safe_sum(iterable: Iterable[Any], /, start: Any = 0) -> Any:
    """``sum``; with a list or tuple ``start`` (concatenation) every step is size-checked."""
    if not isinstance(start, list | tuple):
        return sum(iterable, start)
    total = start
    for item in iterable:
        total = safe_add(total, item)
    return total


def safe_range(*args: int) -> range:
    """``range``, charged against the evaluation's item budget when it has one."""
    r = range(*args)
    if len(r) > MAX_ITEMS:
        raise NotAllowedError(f"range of {len(r):,} items; the limit is {MAX_ITEMS:,} per record")
    return r


class _Budget:
    """Items that ``range`` and comprehensions may still produce in the current evaluation.

    One per compiled mapping, reset at each call; mappings are evaluated on one thread at a time.
    """

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_ITEMS

    def range(self, *args: int) -> range:
        r = safe_range(*args)
        self.left -= len(r)
        if self.left < 0:
            raise self._spent()
        return r

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.left -= 1
            if self.left < 0:
                raise self._spent()
            yield item

    def _spent(self) -> NotAllowedError:
        return NotAllowedError(f"range and comprehensions produced over {MAX_ITEMS:,} items for one record")


def lazy_coalesce(first: Any, *rest: Callable[[], Any]) -> Any:
    """``coalesce`` as a mapping compiles it: the later arguments come as functions, called in turn
    only while every value before was None."""
    if first is not None:
        return first
    for later in rest:
        value = later()
        if value is not None:
            return value
    return None


def safe_item(obj: Any, key: Any) -> Any:
    """``obj[key]``, None for a missing key, an index out of range, or None."""
    if obj is None:
        return None
    try:
        return obj[key]
    except (KeyError, IndexError):
        return None


class MappingCompileError(ConfigError):
    """A compile error with its position inside the expression."""

    def __init__(self, message: str, path: str | None, line: int | None, column: int | None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}", path)
        self.line = line
        self.column = column


class _Rewriter(ast.NodeTransformer):
    """Checks names and rewrites attribute and subscript reads into safe lookups."""

    def __init__(
        self,
        allowed: set[str],
        path: str | None,
        shift: Callable[..., tuple[Any, Any]],
        lazy_coalesce: bool = False,
    ) -> None:
        self.allowed = allowed
        # coalesce() is the curated one and the expression binds the name nowhere (no lambda parameter,
        # comprehension target or walrus): its later arguments may be left unevaluated (see visit_Call).
        self.lazy_coalesce = lazy_coalesce
        self.path = path
        self.scopes: list[set[str]] = []
        self.shift = shift  # positions in the stripped text -> positions in the source as written
        self.budgeted = False  # whether range or a comprehension is used: then each call resets a budget

    def fail(self, node: ast.AST, message: str, column: int | None = None) -> MappingCompileError:
        line = getattr(node, "lineno", None)
        col = column if column is not None else getattr(node, "col_offset", -1) + 1
        line, col = self.shift(line, col)
        return MappingCompileError(message, self.path, line, col)

    def _bound(self, name: str) -> bool:
        return name in self.allowed or any(name in s for s in self.scopes)

    def _visit_name(self, node: ast.Name) -> ast.AST:
        if node.id.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: {node.id}")
        if isinstance(node.ctx, ast.Load) and not self._bound(node.id):
            hint = " (read fields with this.<field>)" if node.id.isidentifier() else ""
            raise self.fail(node, f"unknown name {node.id!r}{hint}")
        return node

    def _attr_column(self, node: ast.Attribute) -> int | None:
        """The column of the attribute's name, not of the start of the expression it hangs off."""
        same_line = node.end_lineno == node.lineno and node.end_col_offset is not None
        return node.end_col_offset - len(node.attr) + 1 if same_line else None  # type: ignore[operator]

    def _check_attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            raise self.fail(
                node, f"attributes starting with '_' are not allowed: .{node.attr}", self._attr_column(node)
            )
        if node.attr in _FRAME_ATTRS:
            raise self.fail(
                node,
                f"attribute .{node.attr} is not allowed in a mapping (frames and code are out of reach)",
                self._attr_column(node),
            )
        if not isinstance(node.ctx, ast.Load):
            raise self.fail(node, "assignment is not allowed in a mapping")

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self._check_attribute(node)
        value = self.visit(node.value)
        call = ast.Call(ast.Name(_GET, ast.Load()), [value, ast.Constant(node.attr)], [])
        return ast.copy_location(call, node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "coalesce" and self._lazy(node):
            return self._coalesce(node)
        if not isinstance(func, ast.Attribute):
            return self.generic_visit(node)
        # value.name(args): a method call, through safe_call and its allow-list.
        self._check_attribute(func)
        if func.attr in _CALLS_REFUSED:
            raise self.fail(func, _CALLS_REFUSED[func.attr], self._attr_column(func))
        value = self.visit(func.value)
        args = [self.visit(a) for a in node.args]
        keywords = [self.visit(k) for k in node.keywords]
        call = ast.Call(ast.Name(_CALL, ast.Load()), [value, ast.Constant(func.attr), *args], keywords)
        return ast.copy_location(call, node)

    def _lazy(self, node: ast.Call) -> bool:
        """Whether this ``coalesce(...)`` call may skip the arguments after the first value that is not None."""
        return (
            self.lazy_coalesce
            and len(node.args) >= 2
            and not node.keywords
            and not any(isinstance(a, ast.Starred) for a in node.args)
            # a walrus in a later argument binds a name for the rest of the expression: keep it evaluated
            and not any(isinstance(n, ast.NamedExpr) for a in node.args[1:] for n in ast.walk(a))
        )

    def _coalesce(self, node: ast.Call) -> ast.AST:
        """``coalesce(a, b, c)`` as ``_coalesce(a, lambda: b, lambda: c)``: as SQL's COALESCE, the arguments
        are evaluated left to right up to the first that is not None.  A fallback such as ``stable_id(...)``
        then costs nothing for the records that carry their own value (the usual case)."""
        none = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
        first = self.visit(node.args[0])
        rest = [ast.copy_location(ast.Lambda(none, self.visit(a)), a) for a in node.args[1:]]
        return ast.copy_location(ast.Call(ast.Name(_COALESCE, ast.Load()), [first, *rest], []), node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        name = _OPS.get(type(node.op))
        if name is None:
            return self.generic_visit(node)
        call = ast.Call(ast.Name(name, ast.Load()), [self.visit(node.left), self.visit(node.right)], [])
        return ast.copy_location(call, node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node.value = self.visit(node.value)  # type: ignore[assignment]
        if node.format_spec is not None:
            spec = self.visit(node.format_spec)
            checked = ast.Call(ast.Name(_SPEC, ast.Load()), [spec], [])
            node.format_spec = ast.JoinedStr([ast.FormattedValue(checked, -1, None)])
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        result = self._visit_name(node)
        if node.id == "range" and not any("range" in s for s in self.scopes):
            self.budgeted = True
        return result

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if not isinstance(node.ctx, ast.Load):
            raise self.fail(node, "assignment is not allowed in a mapping")
        value = self.visit(node.value)
        key = self.visit(node.slice)
        if isinstance(node.slice, ast.Slice):
            return ast.copy_location(ast.Subscript(value, key, ast.Load()), node)
        call = ast.Call(ast.Name(_ITEM, ast.Load()), [value, key], [])
        return ast.copy_location(call, node)

    def _with_scope(self, names: set[str], node: ast.AST) -> ast.AST:
        self.scopes.append(names)
        try:
            return self.generic_visit(node)
        finally:
            self.scopes.pop()

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        a = node.args
        names = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
        names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        for n in names:
            if n.startswith("_"):
                raise self.fail(node, f"names starting with '_' are not allowed: {n}")
        return self._with_scope(names, node)

    def _comprehension(self, node: ast.AST, generators: list[ast.comprehension]) -> ast.AST:
        names: set[str] = set()
        for gen in generators:
            for target in ast.walk(gen.target):
                if isinstance(target, ast.Name):
                    if target.id.startswith("_"):
                        raise self.fail(target, f"names starting with '_' are not allowed: {target.id}")
                    names.add(target.id)
            # A walrus in a condition binds before the element is computed: [y for x in a if (y := f(x))]
            names |= {sub.target.id for cond in gen.ifs for sub in ast.walk(cond) if isinstance(sub, ast.NamedExpr)}
        node = self._with_scope(names, node)
        # Every item a comprehension takes is charged to the evaluation's budget.
        self.budgeted = True
        for gen in generators:
            gen.iter = ast.copy_location(ast.Call(ast.Name(_ITER, ast.Load()), [gen.iter], []), gen.iter)
        return node

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._comprehension(node, node.generators)

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._comprehension(node, node.generators)

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._comprehension(node, node.generators)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        return self._comprehension(node, node.generators)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> ast.AST:
        if node.target.id.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: {node.target.id}")
        self.allowed.add(node.target.id)  # a walrus binds for the rest of the expression
        node.value = self.visit(node.value)  # type: ignore[assignment]
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Await | ast.Yield | ast.YieldFrom):
            raise self.fail(node, f"{type(node).__name__.lower()} is not allowed in a mapping")
        return super().generic_visit(node)


@dataclass(frozen=True)
class CompiledMapping:
    """A compiled expression: call it with a record and metadata."""

    source: str
    function: Callable[[Any, Any], Any]
    path: str | None = None

    def __call__(self, this: Any, meta: Any = None) -> Any:
        return self.function(this, meta if meta is not None else {})

    def snippet(self, width: int = 60) -> str:
        flat = " ".join(self.source.split())
        return flat if len(flat) <= width else flat[: width - 3] + "..."

    def to_event(self, this: Any, meta: Any, defaults: Mapping[str, Any]) -> dict[str, Any] | None:
        """What a receiver's ``mapping`` setting makes of one record: None when the mapping drops it, else a
        new event with ``defaults`` for the fields it left out or set to None (docs/plugin-api.md).

        Raises :class:`MappingResultError` (a ValueError) when the mapping fails or returns something that
        is not an object; its message ("failed: ...", "returned ...") ends with the expression, and the
        receiver puts where it happened in front.
        """
        try:
            result = self(this, meta)
        except Exception as exc:
            raise MappingResultError(f"failed: {type(exc).__name__}: {exc} (expression: {self.snippet()})") from None
        if result is None:
            return None
        if not isinstance(result, dict):
            raise MappingResultError(
                f"returned {type(result).__name__}, not an object or None (expression: {self.snippet()})"
            )
        event = dict(result)
        for key, default in defaults.items():
            if event.get(key) is None:
                event[key] = default
        return event


class MappingResultError(ValueError):
    """A mapping failed on one record, or returned something that is not an object or None."""


def compile_expression(
    source: str,
    functions: Mapping[str, Callable[..., Any]] | None = None,
    *,
    path: str | None = None,
    extra_names: Mapping[str, Any] | None = None,
) -> CompiledMapping:
    """Compile ``source`` or raise :class:`MappingCompileError` with its position.

    ``functions`` are the callables in scope (defaults: the curated set);
    ``path`` is the config location used in errors (``processors.mapping/x.expression``).
    """
    if functions is None:
        from collector.functions import builtin_functions

        functions = builtin_functions()
    text = source.strip()
    if not text:
        raise MappingCompileError("the expression is empty", path, None, None)
    # Positions are reported in the source as written, although the parser sees it stripped.
    leading = source[: len(source) - len(source.lstrip())]
    line_shift = leading.count("\n")
    col_shift = len(leading) - (leading.rfind("\n") + 1)

    def shift(line: int | None, col: int | None) -> tuple[int | None, int | None]:
        if line is None:
            return None, col
        return line + line_shift, (col + col_shift if line == 1 and col is not None else col)

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        line, col = exc.lineno, exc.offset
        lines = text.splitlines()
        if line is not None and (col is None or col < 1) and 1 <= line <= len(lines):
            col = len(lines[line - 1]) + 1  # Python 3.11 gives offset 0 at an unexpected end
        line, col = shift(line, col)
        raise MappingCompileError(f"syntax error: {exc.msg}", path, line, col) from None
    scope: dict[str, Any] = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    scope["range"] = safe_range
    scope["sum"] = safe_sum
    scope.update(functions)
    scope.update(extra_names or {})
    allowed = set(scope) | {"this", "meta", "True", "False", "None"}
    from collector.functions import coalesce

    rebound = any(
        (isinstance(n, ast.Name) and n.id == "coalesce" and not isinstance(n.ctx, ast.Load))
        or (isinstance(n, ast.arg) and n.arg == "coalesce")
        for n in ast.walk(tree)
    )
    rewriter = _Rewriter(allowed, path, shift, lazy_coalesce=scope.get("coalesce") is coalesce and not rebound)
    body = rewriter.visit(tree.body)
    args = ast.arguments(
        posonlyargs=[], args=[ast.arg("this"), ast.arg("meta")], kwonlyargs=[], kw_defaults=[], defaults=[]
    )
    module = ast.Expression(ast.Lambda(args, body))
    ast.fix_missing_locations(module)
    code = compile(module, f"<mapping {path or ''}>", "eval")
    scope.update({_GET: safe_get, _ITEM: safe_item, _CALL: safe_call, _SPEC: format_spec})
    scope[_COALESCE] = lazy_coalesce
    scope.update({"_collector_add": safe_add, "_collector_mul": safe_mul, "_collector_pow": safe_pow})
    scope.update({"_collector_lshift": safe_lshift, "_collector_mod": safe_mod})
    scope["__builtins__"] = {}  # nothing beyond what is in scope above
    if not rewriter.budgeted:
        return CompiledMapping(text, eval(code, scope), path)
    budget = _Budget()
    scope[_ITER] = budget.iterate
    if scope.get("range") is safe_range:
        scope["range"] = budget.range
    inner = eval(code, scope)

    def function(this: Any, meta: Any) -> Any:
        budget.left = MAX_ITEMS
        return inner(this, meta)

    return CompiledMapping(text, function, path)


#: Mapping functions by name, as components get them (``ctx.functions``); None means the curated set.
FunctionMap = Mapping[str, Callable[..., Any]] | None


def registry_functions(registry: Any) -> dict[str, Callable[..., Any]] | None:
    """The functions a registry offers (None: the curated set)."""
    if registry is None:
        return None
    return {name: spec.func for name, spec in registry.functions().items()}
