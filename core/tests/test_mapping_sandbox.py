"""What a mapping expression may reach and how much work it may do (issue 10, points 8, 13 and 14).

A mapping is operator-written configuration, but one in a shared config repository is code that
runs with the collector's privileges: these tests pin down that the known escapes (frames of
generators and coroutines, ``str.format`` reading attributes, methods of types) are closed, that
obviously unbounded work is refused, and that values the encoder cannot represent exactly (NaN,
infinity, integers beyond 64 bits, nesting deeper than the limit) are refused with the record's
index instead of being delivered as ``null``/a float or failing the commit with a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from collector.errors import PermanentError
from collector.events import MAX_DEPTH, validate_cloudevents, validate_event, value_errors
from collector.mapping import MappingCompileError, NotAllowedError, compile_expression

SECRET = "s3cr3t-openmeter-token"


def run(expression: str, this: Any = None) -> Any:
    return compile_expression(expression, path="processors.mapping.expression")(this if this is not None else {})


# -- point 8: escapes ---------------------------------------------------------------------------------------------

# Each reached __import__, a module's globals or the environment on the code before the fix.
ESCAPES = [
    "(x for x in [1]).gi_frame.f_back.f_globals",
    "(x for x in [1]).gi_frame.f_globals",
    "(x for x in [1]).gi_code",
    "[f.f_back.f_locals for f in [(x for x in [1]).gi_frame]]",
    "'{0.__globals__}'.format(lower)",
    "'{0.__class__}'.format(this)",
    "'{x.__globals__}'.format_map({'x': lower})",
    "str.format('{0.__globals__}', lower)",
    "str.mro()",
    "list(map('{0.__globals__}'.format, [lower]))",
    "(lambda f: f('{0.__globals__}', lower))(str.format)",
    "dict.fromkeys([1])",
    "lower.__globals__",
]


@pytest.mark.parametrize("expression", ESCAPES)
def test_known_escapes_are_refused(expression):
    """Refused when the configuration is loaded where the shape gives it away, else when evaluated."""
    try:
        fn = compile_expression(expression, path="processors.mapping.expression")
    except MappingCompileError as exc:
        assert exc.path == "processors.mapping.expression"
        assert exc.line == 1 and exc.column is not None
        return
    with pytest.raises(NotAllowedError):
        fn({})


@pytest.mark.parametrize(
    ("expression", "column", "message"),
    [
        ("(x for x in [1]).gi_frame", 18, "attribute .gi_frame is not allowed"),
        ("this.a.f_back", 8, "attribute .f_back is not allowed"),
        ("this.a.f_globals", 8, "attribute .f_globals is not allowed"),
        ("this.a.cr_frame", 8, "attribute .cr_frame is not allowed"),
        ("this.a.mro()", 8, "calling .mro() is not allowed"),
        ("'{}'.format(this.a)", 6, "str.format is not allowed"),
        ("this.name.format_map({})", 11, "str.format_map is not allowed"),
    ],
)
def test_escapes_are_refused_at_compile_time_with_the_position(expression, column, message):
    with pytest.raises(MappingCompileError) as exc:
        compile_expression(expression, path="processors.m.expression")
    assert exc.value.path == "processors.m.expression"
    assert (exc.value.line, exc.value.column) == (1, column)
    assert message in str(exc.value)


def test_the_environment_is_not_readable(monkeypatch):
    monkeypatch.setenv("OPENMETER_TOKEN", SECRET)
    for expression in ESCAPES:
        try:
            result = run(expression)
        except (MappingCompileError, NotAllowedError):
            continue
        assert SECRET not in repr(result), expression
        assert "environ" not in repr(result), expression


def test_methods_outside_the_allow_list_are_refused_at_run_time():
    with pytest.raises(NotAllowedError, match=r"str\.center is not allowed"):
        run("this.s.center(10)", {"s": "x"})
    with pytest.raises(NotAllowedError, match=r"list\.append is not allowed"):
        run("this.items.append(1)", {"items": []})
    with pytest.raises(NotAllowedError, match="method calls on function are not allowed"):
        run("lower.x()")


def test_allowed_methods_and_forgiving_reads_still_work():
    this = {"s": " Ab,c ", "tags": {"k": "v"}, "items": [3, 1, 3], "n": 3}
    assert run("this.s.strip().lower().split(',')", this) == ["ab", "c"]
    assert run("this.s.startswith(' A') and this.s.endswith(' ')", this) is True
    assert run("this.s.replace(',', ';')", this) == " Ab;c "
    assert run("{k: v for k, v in this.tags.items()}", this) == {"k": "v"}
    assert run("sorted(this.tags.keys()) + list(this.tags.values())", this) == ["k", "v"]
    assert run("this.tags.get('k'), this.tags.get('nope', 0)", this) == ("v", 0)
    assert run("this.items.index(1), this.items.count(3)", this) == (1, 2)
    assert run("'-'.join(str(i) for i in this.items)", this) == "3-1-3"
    assert run("f'{this.n:03d}/{this.s.strip()!r}'", this) == "003/'Ab,c'"
    assert run("'%s=%d' % ('n', this.n)", this) == "n=3"
    assert run("sorted(['b', 'A'], key=str.lower), str.upper('x')") == (["A", "b"], "X")
    assert run("sum(this.items), sum([[1], [2]], [])", this) == (7, [1, 2])
    # Reading a field is still a read of the record, whatever the field is called.
    assert run("this.format", {"format": "json"}) == "json"
    assert run("this.items", {"items": [1]}) == [1]
    assert run("this.s.missing", this) is None
    assert run("this.n.whatever.deeper", this) is None


def test_meta_and_windows_are_still_readable():
    from collector.components import Meta

    class Window:
        start, end, seconds = 0.0, 60.0, 60.0
        start_time, end_time = "1970-01-01T00:00:00.000Z", "1970-01-01T00:01:00.000Z"

    meta = Meta(receiver="r", window=Window(), extra={"signal": "metrics"})  # type: ignore[arg-type]
    fn = compile_expression("[meta.receiver, meta.get('signal'), meta.window.start_time, meta.window_end_unix]")
    assert fn({}, meta) == ["r", "metrics", "1970-01-01T00:00:00.000Z", 60.0]


# -- point 8: unbounded work ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "10 ** 10 ** 8",
        "this.n ** 10 ** 9",
        "2 ** (this.n * 10 ** 9)",
        "'a' * 10 ** 9",
        "[0] * 10 ** 9",
        "this.s * 10 ** 9",
        "1 << 10 ** 10",
        "len(range(10 ** 12))",
        "sum(range(10 ** 12))",
        "[x for x in range(10 ** 9)]",
        "[1 for a in range(10 ** 5) for b in range(10 ** 5)]",
        "[(s := s + s) for i in range(80)] if (s := 'a') else 0",
        "f'{this.n:>1000000000}'",
        "'%*d' % (10 ** 9, 1)",
        "'%1000000000d' % 1",
        "this.s.replace('', 'x' * 10 ** 6) if len(this.s) else 0",
        "('x' * 10 ** 6).join(['a'] * 10 ** 4)",
        "str.join('x' * 10 ** 6, ['a'] * 10 ** 4)",
        "str.replace('a' * 100, '', 'x' * 10 ** 6)",
        "sum([[0] * 10 ** 6] * 10 ** 6, [])",
    ],
)
def test_obviously_unbounded_work_is_refused(expression):
    fn = compile_expression(expression)
    with pytest.raises(NotAllowedError):
        fn({"n": 7, "s": "a" * 100})


# -- points 13 and 14: values the encoder cannot represent -------------------------------------------------------


def event(**data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "e1",
        "source": "s",
        "type": "t",
        "subject": "c",
        "time": "2024-05-01T12:00:00Z",
        "data": data,
    }


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        (float("nan"), "data.v", "NaN"),
        (float("inf"), "data.v", "infinity"),
        (-float("inf"), "data.v", "infinity"),
        (2**64, "data.v", "64-bit"),
        (-(2**63) - 1, "data.v", "64-bit"),
        ({"x": [1, {"y": float("nan")}]}, "data.v.x[1].y", "NaN"),
        ({1: 2}, "data.v", "keys"),
        ({1, 2}, "data.v", "set"),
        (nested(300), "data.v", f"{MAX_DEPTH} levels"),
    ],
)
def test_values_that_cannot_be_encoded_exactly_are_refused(value, field, message):
    for errors in (
        value_errors(event(v=value), 3),
        validate_event(event(v=value), 3),
        validate_cloudevents([event(v=value)]),
    ):
        (err,) = errors
        assert err.index in (0, 3)
        assert err.field is not None and err.field.startswith(field)
        assert message in err.message


def test_values_that_encode_exactly_pass():
    # event (1) > data (2) > e (3) > {"f": ...} (4) > MAX_DEPTH - 4 arrays: exactly MAX_DEPTH levels
    ok = event(a=2**64 - 1, b=-(2**63), c=1.5, d=None, e=[True, "x", {"f": nested(MAX_DEPTH - 4)}])
    assert value_errors(ok, 0) == []
    assert validate_event(ok, 0) == []
    orjson.dumps([ok])  # what the queue does with it
    one_more = event(e=[True, "x", {"f": nested(MAX_DEPTH - 3)}])
    assert [e.field[:10] for e in value_errors(one_more, 0)] == ["data.e[2].f"[:10]]


def test_extension_attributes_are_checked_too():
    bad = {**event(), "cost": float("nan")}
    assert [(e.field, "NaN" in e.message) for e in validate_event(bad, 0)] == [("cost", True)]


FAST = "exporters: {memory: {batch: {period: 0.01}}}\n"
TO_EVENT = '{"specversion": "1.0", "id": this.id, "source": "s", "type": "t", "subject": "c", "data": {"v": %s}}'


def mapping(expression: str, on_error: str = "reject") -> str:
    expr = orjson.dumps(expression).decode()
    return (
        f"receivers: {{scripted: {{}}}}\nprocessors:\n  mapping: {{expression: {expr}, on_error: {on_error}}}\n{FAST}"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [("float('nan')", "NaN"), ("1e308 * 10", "infinity"), ("2 ** 64", "64-bit"), ("this.n * 10 ** 20", "64-bit")],
)
async def test_a_mapping_producing_an_unrepresentable_value_refuses_the_record(collector_run_pipeline, value, message):
    async with collector_run_pipeline(mapping(TO_EVENT % value)) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([{"id": "a", "n": 0}, {"id": "b", "n": 5}])
        assert p.service.exporters["memory"].queue.stats().events == 0
    errors = exc.value.records
    assert {e.index for e in errors} <= {0, 1} and 1 in {e.index for e in errors}
    assert all(e.field is None or e.field.startswith("data.v") for e in errors)
    assert message in errors[-1].message


async def test_on_error_applies_to_unrepresentable_values(collector_run_pipeline):
    async with collector_run_pipeline(mapping(TO_EVENT % "this.n ** 30", on_error="drop")) as p:
        await p.receiver().send([{"id": "a", "n": 2}, {"id": "b", "n": 10}, {"id": "c", "n": 3}])
        events = await p.exporter().wait_for(2)
    assert [(e["id"], e["data"]["v"]) for e in events] == [("a", 2**30), ("c", 3**30)]


# -- point 13 through the HTTP receiver -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def http(run_pipeline, receiver: str = "", processors: str = "") -> AsyncIterator[tuple[Any, str]]:
    extra = ", " + receiver if receiver else ""
    text = f"receivers: {{http: {{endpoint: '127.0.0.1:0'{extra}}}}}\n{processors}{FAST}"
    async with run_pipeline(text) as p:
        yield p, f"http://127.0.0.1:{p.service.receivers['http'].port}"


async def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers={"Content-Type": content_type}) as r:
        return r.status, orjson.loads(await r.read() or b"{}")


def deep_json(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"1" + b"]" * levels + b"}"


@pytest.mark.parametrize("levels", [254, 300, 1000])
async def test_deeply_nested_json_is_a_400_not_a_500(collector_run_pipeline, caplog, levels):
    body = b'[{"specversion":"1.0","id":"ok","source":"s","type":"t","subject":"c","data":{"n":1}},'
    body += (
        b'{"specversion":"1.0","id":"deep","source":"s","type":"t","subject":"c","data":' + deep_json(levels) + b"}]"
    )
    async with http(collector_run_pipeline) as (p, base):
        status, problem = await post(base + "/api/v1/events", body)
        assert status == 400, problem
        assert p.service.exporters["memory"].queue.stats().events == 0
    (entry,) = problem["invalid"]
    assert (entry["index"], entry["id"]) == (1, "deep")
    assert entry["field"].startswith("data.a[0]")
    assert f"{MAX_DEPTH} levels" in entry["message"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged for a client's mistake"


async def test_raw_json_mapped_to_a_huge_integer_is_a_400(collector_run_pipeline, caplog):
    expression = orjson.dumps(TO_EVENT % "this.n ** 5").decode()
    processors = f"processors:\n  mapping: {{expression: {expression}}}\n"
    async with http(collector_run_pipeline, "format: json", processors) as (p, base):
        body = orjson.dumps([{"id": "a", "n": 2}, {"id": "b", "n": 2**20}])
        status, problem = await post(base + "/ingest", body)
        assert status == 400, problem
        assert p.service.exporters["memory"].queue.stats().events == 0
        assert "64-bit" in problem["detail"]
        assert [e["index"] for e in problem["invalid"]] == [1]
    assert not [r for r in caplog.records if r.exc_info]


async def test_raw_json_passed_through_deeply_nested_is_a_400(collector_run_pipeline, caplog):
    processors = "processors:\n  mapping: {expression: this}\n"
    async with http(collector_run_pipeline, "format: json", processors) as (p, base):
        event_text = b'{"specversion":"1.0","id":"d","source":"s","type":"t","subject":"c","data":' + deep_json(400)
        status, problem = await post(base + "/ingest", event_text + b"}")
        assert status == 400, problem
        assert problem["invalid"][0]["index"] == 0
        assert p.service.exporters["memory"].queue.stats().events == 0
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_posted_integer_beyond_64_bits_is_refused_not_rounded(collector_run_pipeline, caplog):
    # orjson alone would read 2**64 as the float 1.8446744073709552e+19 and bill a rounded number.
    head = b'{"specversion":"1.0","source":"s","type":"t","subject":"c",'
    body = b"[" + head + b'"id":"ok","data":{"n":18446744073709551615}},' + head
    body += b'"id":"big","data":{"n":18446744073709551616}}]'
    async with http(collector_run_pipeline) as (p, base):
        status, problem = await post(base + "/api/v1/events", body)
        assert status == 400, problem
        assert [(e["index"], e["field"]) for e in problem["invalid"]] == [(1, "data.n")]
        assert "64-bit" in problem["invalid"][0]["message"]
        assert p.service.exporters["memory"].queue.stats().events == 0
        # The largest exact value still goes through exactly, as an integer.
        status, _ = await post(base + "/api/v1/events", b"[" + head + b'"id":"ok","data":{"n":18446744073709551615}}]')
        assert status == 204
        [event] = await p.exporter().wait_for(1)
        assert event["data"]["n"] == 2**64 - 1 and isinstance(event["data"]["n"], int)
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_long_digit_string_is_not_mistaken_for_a_number(collector_run_pipeline):
    async with http(collector_run_pipeline) as (p, base):
        event = b'{"specversion":"1.0","id":"123456789012345678901234","source":"s","type":"t","subject":"c",'
        status, _ = await post(base + "/api/v1/events", event + b'"data":{"n":1.5}}')
        assert status == 204
        [got] = await p.exporter().wait_for(1)
        assert got["id"] == "123456789012345678901234" and got["data"]["n"] == 1.5
