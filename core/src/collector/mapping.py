"""Mapping expressions: Python expressions compiled once, evaluated per record.

An expression sees ``this`` (the record) and ``meta`` (a
:class:`~collector.components.Meta`: receiver, pipeline, window bounds, allowed
HTTP headers, a plugin's extra names...) and the curated functions
of :mod:`collector.functions` plus whatever plugins register.  Reading is
bloblang-like and forgiving:

* ``this.user.name`` is rewritten at compile time into safe lookups that yield
  ``None`` when a key is missing (or the value is ``None``) instead of raising;
* ``this["user"]`` likewise yields ``None`` for a missing key or index;
* method calls on values still work (``this.path.startswith("/api")``).

What is refused at compile time, with the line and column: names that are
neither ``this``, ``meta``, a registered function, a safe builtin nor a
comprehension/lambda variable; any name or attribute starting with ``_``
(no dunder access); statements (it is an expression); ``await``/``yield``.

This is configuration written by the operator, **not a sandbox for untrusted
input**: the checks stop mistakes and casual escapes, not a determined attacker
who can write the collector's configuration.

Speed: the expression is compiled into a plain Python function
``lambda this, meta: <expr>`` once, so evaluating it costs one call.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Mapping
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


def safe_get(obj: Any, name: str) -> Any:
    """``obj.name`` for mappings (None when missing), :class:`~collector.components.Meta`'s
    documented names (its window's bounds, its ``extra`` keys), attributes otherwise."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, Meta):
        return obj.lookup(name)
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


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

    def __init__(self, allowed: set[str], path: str | None, shift: Callable[..., tuple[Any, Any]]) -> None:
        self.allowed = allowed
        self.path = path
        self.scopes: list[set[str]] = []
        self.shift = shift  # positions in the stripped text -> positions in the source as written

    def fail(self, node: ast.AST, message: str, column: int | None = None) -> MappingCompileError:
        line = getattr(node, "lineno", None)
        col = column if column is not None else getattr(node, "col_offset", -1) + 1
        line, col = self.shift(line, col)
        return MappingCompileError(message, self.path, line, col)

    def _bound(self, name: str) -> bool:
        return name in self.allowed or any(name in s for s in self.scopes)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed: {node.id}")
        if isinstance(node.ctx, ast.Load) and not self._bound(node.id):
            hint = " (read fields with this.<field>)" if node.id.isidentifier() else ""
            raise self.fail(node, f"unknown name {node.id!r}{hint}")
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr.startswith("_"):
            # Point at the attribute name, not at the start of the expression it hangs off.
            same_line = node.end_lineno == node.lineno and node.end_col_offset is not None
            column = node.end_col_offset - len(node.attr) + 1 if same_line else None  # type: ignore[operator]
            raise self.fail(node, f"attributes starting with '_' are not allowed: .{node.attr}", column)
        if not isinstance(node.ctx, ast.Load):
            raise self.fail(node, "assignment is not allowed in a mapping")
        value = self.visit(node.value)
        call = ast.Call(ast.Name(_GET, ast.Load()), [value, ast.Constant(node.attr)], [])
        return ast.copy_location(call, node)

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
        return self._with_scope(names, node)

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
    scope.update(functions)
    scope.update(extra_names or {})
    allowed = set(scope) | {"this", "meta", "True", "False", "None"}
    body = _Rewriter(allowed, path, shift).visit(tree.body)
    args = ast.arguments(
        posonlyargs=[], args=[ast.arg("this"), ast.arg("meta")], kwonlyargs=[], kw_defaults=[], defaults=[]
    )
    module = ast.Expression(ast.Lambda(args, body))
    ast.fix_missing_locations(module)
    code = compile(module, f"<mapping {path or ''}>", "eval")
    scope[_GET] = safe_get
    scope[_ITEM] = safe_item
    scope["__builtins__"] = {}  # nothing beyond what is in scope above
    function = eval(code, scope)
    return CompiledMapping(text, function, path)


#: Mapping functions by name, as components get them (``ctx.functions``); None means the curated set.
FunctionMap = Mapping[str, Callable[..., Any]] | None


def registry_functions(registry: Any) -> dict[str, Callable[..., Any]] | None:
    """The functions a registry offers (None: the curated set)."""
    if registry is None:
        return None
    return {name: spec.func for name, spec in registry.functions().items()}
