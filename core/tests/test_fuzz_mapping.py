"""Fuzzing the mapping compiler (issue 10): random expressions from a small grammar, random records.

Properties, for every generated expression and record:

* compiling raises nothing but :class:`MappingCompileError` (a ConfigError naming the position);
* evaluating raises nothing but an ``Exception`` (the mapping processor makes it a record error
  and applies ``on_error``), never ``SystemExit``/``KeyboardInterrupt`` or the like;
* the result never holds a way out: no frame, code object, module, traceback, function globals
  or the process environment;
* what :func:`collector.events.value_errors` lets through, the encoder writes, and exactly
  (no NaN turned into null, no integer the queue refuses).

Bounded: a fixed number of examples, no per-example deadline (a 1,000,000-item budget may be
spent by one example), the whole file well under 20 s.
"""

from __future__ import annotations

import math
import types
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.events import value_errors
from collector.mapping import MappingCompileError, compile_expression

SECRET = "fuzz-secret-token-5f1c"

# `x is 1`, `(1)[0]`: Python's compiler warns, the expression is still an expression.
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")

FUZZ = settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    database=None,
)

# Names an attacker (or a typo) would try after a dot: frames, code, dunders, format, methods in and out
# of the allow-list, and ordinary field names.
ATTRIBUTES = [
    "a", "b", "items", "get", "keys", "values", "format", "format_map", "mro", "upper", "lower", "strip",
    "split", "join", "replace", "center", "append", "startswith", "count", "index", "gi_frame", "gi_code",
    "f_back", "f_globals", "f_locals", "cr_frame", "tb_frame", "co_code", "__class__", "__globals__",
    "__init__", "__subclasses__", "__dict__", "real", "bit_length", "start_time", "window", "receiver",
]  # fmt: skip
FUNCTIONS = [
    "len", "str", "int", "float", "list", "dict", "tuple", "set", "sorted", "sum", "min", "max", "abs", "any",
    "all", "range", "map", "filter", "zip", "enumerate", "reversed", "round", "bool", "isinstance", "divmod",
    "lower", "upper", "coalesce", "to_int", "to_float", "to_str", "get", "join", "split", "stable_id",
    "regex_match", "replace", "trim", "parse_duration", "format_time", "unix_time",
]  # fmt: skip
ATOMS = [
    "this", "meta", "this.a", "this.b", "this.s", "this.n", "this.l", "this['x']", "meta.receiver", "None",
    "True", "False", "0", "1", "-1", "7", "2 ** 63", "10 ** 20", "1e308", "float('nan')", "float('inf')", "''",
    "'a'", "'{0.__globals__}'", "'{}'", "'%s'", "'%*d'", "[]", "{}", "x", "lower", "str", "range(3)",
    "(x for x in [1])", "(lambda: 1)",
]  # fmt: skip
BINARY = ["+", "-", "*", "/", "//", "%", "**", "<<", ">>", "&", "|", "^", "and", "or", "==", "<", "in", "is"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(children, children)
    return st.one_of(
        st.builds(lambda ab, op: f"({ab[0]} {op} {ab[1]})", pair, st.sampled_from(BINARY)),
        st.builds(lambda a, op: f"({op}{a})", children, st.sampled_from(["-", "not ", "~"])),
        st.builds(lambda a, name: f"({a}).{name}", children, st.sampled_from(ATTRIBUTES)),
        st.builds(
            lambda a, name, args: f"({a}).{name}({', '.join(args)})",
            children,
            st.sampled_from(ATTRIBUTES),
            st.lists(children, max_size=2),
        ),
        st.builds(
            lambda f, args: f"{f}({', '.join(args)})", st.sampled_from(FUNCTIONS), st.lists(children, max_size=3)
        ),
        st.builds(lambda ab: f"({ab[0]})[{ab[1]}]", pair),
        st.builds(lambda a: f"({a})[1:3]", children),
        st.builds(lambda items: f"[{', '.join(items)}]", st.lists(children, max_size=3)),
        st.builds(lambda ab: f"{{'k': {ab[0]}, 'v': {ab[1]}}}", pair),
        st.builds(lambda ab: f"[{ab[0]} for x in {ab[1]}]", pair),
        st.builds(lambda ab: f"{{x: {ab[0]} for x in {ab[1]}}}", pair),
        st.builds(lambda a: f"(lambda x: {a})", children),
        st.builds(lambda a, spec: f"f'{{{a}{spec}}}'", children, st.sampled_from(["", "!r", ":>5", ":.2f", ":03d"])),
        st.builds(lambda abc: f"({abc[0]} if {abc[1]} else {abc[2]})", st.tuples(children, children, children)),
    )


EXPRESSIONS = st.recursive(st.sampled_from(ATOMS), _combine, max_leaves=8)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "a": JSON_VALUES,
        "b": JSON_VALUES,
        "s": st.text(max_size=12),
        "n": st.integers(-1000, 1000),
        "l": st.lists(st.integers(-5, 5), max_size=5),
        "x": JSON_VALUES,
    },
)

_ESCAPE_TYPES = (types.FrameType, types.CodeType, types.ModuleType, types.TracebackType)


def _assert_no_way_out(value: Any, seen: int = 0) -> int:
    """Walk a result (bounded) and fail on anything that leads out of the expression."""
    seen += 1
    if seen > 2000:
        return seen
    assert not isinstance(value, _ESCAPE_TYPES), f"reached a {type(value).__name__}"
    if isinstance(value, types.GeneratorType):
        return seen  # its frame is unreachable from the expression (gi_frame is refused)
    if isinstance(value, dict):
        assert "__builtins__" not in value and "__name__" not in value, "reached a namespace"
        for k, v in list(value.items())[:50]:
            seen = _assert_no_way_out(k, seen)
            seen = _assert_no_way_out(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in list(value)[:50]:
            seen = _assert_no_way_out(v, seen)
    elif isinstance(value, str):
        assert SECRET not in value, "the environment was read"
        assert "__builtins__" not in value, "a namespace was formatted into a string"
    return seen


def _check_encoder_agrees(result: Any) -> None:
    """What value_errors accepts, the queue's encoder writes, exactly."""
    if not isinstance(result, dict):
        return
    try:
        errors = value_errors(result, 0)
    except RecursionError:
        pytest.fail("value_errors recursed without bound")
    if errors:
        return
    try:
        encoded = orjson.dumps([result])
    except TypeError:
        return  # a value the encoder refuses but that is not JSON at all (a function): the pipeline's rules say so
    assert orjson.loads(encoded)[0].keys() == {k for k in result}


@pytest.fixture(autouse=True)
def _secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENMETER_TOKEN", SECRET)


def _compile_and_run(expression: str, record: dict[str, Any]) -> None:
    try:
        mapping = compile_expression(expression, path="processors.mapping.expression")
    except MappingCompileError as exc:
        assert exc.path == "processors.mapping.expression"
        assert exc.line is None or exc.line >= 1
        return
    try:
        result = mapping(record, {"receiver": "http"})
    except Exception:  # a record error: on_error applies
        return
    _assert_no_way_out(result)
    _check_encoder_agrees(result)


@FUZZ
@given(expression=EXPRESSIONS, record=RECORDS)
def test_random_expressions_compile_or_say_where_and_never_escape(expression: str, record: dict[str, Any]) -> None:
    _compile_and_run(expression, record)


# Escape-shaped expressions: an object that has a way out (a generator, a lambda, a function, a type, a
# format string) followed by a few steps through attributes, calls and subscripts that lead out.
STARTS = [
    "(x for x in [1])", "(x for x in this.l)", "(lambda: 1)", "lower", "stable_id", "str", "dict", "int",
    "meta", "this", "'{0.__globals__}'", "'{0.gi_frame.f_back}'", "'{x.__class__}'", "range(2)", "map(str, [1])",
]  # fmt: skip
STEPS = [
    ".gi_frame", ".gi_code", ".f_back", ".f_globals", ".f_locals", ".f_builtins", ".cr_frame", ".tb_frame",
    ".co_consts", ".__globals__", ".__class__", ".mro()", ".format(lower)", ".format_map({'x': lower})",
    ".format(this)", ".get('os')", "['__builtins__']", "['os']", "[0]", ".real", ".items()", ".values()",
    ".__self__", ".func_globals", ".fromkeys([1])", ".maketrans('a', 'b')", ".start_time", ".join([])",
]  # fmt: skip
ESCAPES = st.builds(
    lambda start, steps, wrap: wrap.format("(" + start + ")" + "".join(steps)),
    st.sampled_from(STARTS),
    st.lists(st.sampled_from(STEPS), min_size=1, max_size=4),
    st.sampled_from(["{}", "[{}]", "list(map(lambda f: f, [{}]))", "[y for y in [{}]]", "f'{{{}}}'"]),
)


@FUZZ
@given(expression=ESCAPES, record=RECORDS)
def test_escape_shaped_expressions_never_escape(expression: str, record: dict[str, Any]) -> None:
    _compile_and_run(expression, record)


@FUZZ
@given(record=RECORDS, value=JSON_VALUES | st.floats() | st.integers())
def test_value_errors_agree_with_the_encoder(record: dict[str, Any], value: Any) -> None:
    event = {"specversion": "1.0", "id": "e", "data": {**record, "v": value}}
    errors = value_errors(event, 0)
    try:
        encoded = orjson.dumps([event])
    except TypeError:
        assert errors, "the encoder refuses what value_errors let through"
        return
    if errors:
        # Refused although encodable: only for values that would not come back as sent.
        assert any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(event))
    else:
        assert orjson.loads(encoded)[0] == event


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


@settings(max_examples=60, deadline=None, database=None)
@given(record=RECORDS)
def test_documented_idioms_work_on_any_record(record: dict[str, Any]) -> None:
    """The forgiving reads never fail on a record, whatever its shape."""
    for expression in ("this.a.b.c", "this['x']", "coalesce(this.a, this.b, 0)", "get(this, 'a.b.0')", "meta.receiver"):
        compile_expression(expression)(record, {"receiver": "r"})
