"""Mapping expressions (the compiler and the curated functions) and the mapping and filter processors."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from collector.errors import PermanentError, RecordError
from collector.events import STABLE_ID_NAMESPACE, stable_id
from collector.functions import (
    builtin_functions,
    coalesce,
    format_time,
    get,
    join,
    lower,
    now,
    parse_duration,
    parse_time,
    regex_match,
    regex_replace,
    replace,
    split,
    to_float,
    to_int,
    to_str,
    trim,
    unix_time,
    upper,
    uuid4,
)
from collector.hookspecs import hookimpl
from collector.mapping import MappingCompileError, compile_expression
from collector.specs import FunctionSpec
from collector.testing import testing_registry

FAST = "exporters: {memory: {batch: {period: 0.01}}}\n"
TO_EVENT = (
    '{"specversion": "1.0", "id": this.rid, "source": "app", "type": "call", "subject": this.user, '
    '"data": {"n": this.n}}'
)


def raw(i: int, user: str = "u1", **extra: object) -> dict:
    return {"rid": f"r{i}", "user": user, "n": i, **extra}


def pipeline(*processors: str) -> str:
    body = "\n".join(f"  {p}" for p in processors)
    return f"receivers: {{scripted: {{}}}}\nprocessors:\n{body}\n{FAST}"


def mapping(expression: str, **extra: str) -> str:
    options = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"mapping: {{expression: {orjson.dumps(expression).decode()}{options}}}"


def dropped(p, processor: str, reason: str) -> float:
    return p.service.telemetry.metrics.dropped.labels(processor=processor, reason=reason)._value.get()


def run(expression: str, this: object = None, meta: dict | None = None) -> object:
    return compile_expression(expression)(this if this is not None else {}, meta)


# -- the compiler ------------------------------------------------------------------------------------------------


def test_safe_reads_yield_none():
    this = {"user": {"name": "ada", "tags": ["a", "b"]}, "empty": None, "k": 1}
    assert run("this.user.name", this) == "ada"
    assert run("this.user.missing.deeper.still", this) is None
    assert run("this.empty.x", this) is None
    assert run('this["k"]', this) == 1
    assert run('this["missing"]', this) is None
    assert run('this["user"]["tags"][1]', this) == "b"
    assert run('this["user"]["tags"][5]', this) is None
    assert run("this.user.tags[0:1]", this) == ["a"]
    assert run("meta.receiver", this, {"receiver": "http"}) == "http"
    assert run("meta.nothing", this) is None


def test_methods_comprehensions_and_lambdas():
    this = {"path": "/api/v1/users", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}, {"sku": "c"}]}
    assert run('this.path.startswith("/api")', this) is True
    assert run('this.path.split("/")[2]', this) == "v1"
    assert run("[i.qty for i in this.items if i.qty]", this) == [2, 3]
    assert run("{i.sku: i.qty or 0 for i in this.items}", this) == {"a": 2, "b": 3, "c": 0}
    assert run("sum(i.qty or 0 for i in this.items)", this) == 5
    assert run("sorted(this.items, key=lambda i: -(i.qty or 0))[0].sku", this) == "b"
    assert run("(lambda a, b=2: a * b)(21)", this) == 42
    assert run("[y for x in this.items if (y := x.sku) != 'a']", this) == ["b", "c"]
    assert run("len(this.items) if isinstance(this.items, list) else 0", this) == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("open('/etc/passwd')", "p: line 1, column 1: unknown name 'open' (read fields with this.<field>)"),
        ("(this.a +\n  user)", "p: line 2, column 3: unknown name 'user' (read fields with this.<field>)"),
        ("__import__('os')", "p: line 1, column 1: names starting with '_' are not allowed: __import__"),
        ("this.__class__", "p: line 1, column 6: attributes starting with '_' are not allowed: .__class__"),
        ("[x for x in this.a].__len__", "p: line 1, column 21: attributes starting with '_' are not allowed: .__len__"),
        ("this.a +", "p: line 1, column 9: syntax error: invalid syntax"),
        ("this.a = 1", "p: line 1, column 8: syntax error: invalid syntax"),
        ("{'a': 1", "p: line 1, column 1: syntax error: '{' was never closed"),
        ("", "p: the expression is empty"),
        ("  \n ", "p: the expression is empty"),
        # Positions count in the expression as written, leading blank lines and indentation included.
        ("\n\n   nope", "p: line 3, column 4: unknown name 'nope' (read fields with this.<field>)"),
        ("[_x for _x in this]", "p: line 1, column 9: names starting with '_' are not allowed: _x"),
        ("lambda _a: 1", "p: line 1, column 1: names starting with '_' are not allowed: _a"),
    ],
)
def test_compile_errors_say_where(source, message):
    with pytest.raises(MappingCompileError) as exc:
        compile_expression(source, path="p")
    assert str(exc.value) == message


def test_compile_error_carries_line_and_column():
    with pytest.raises(MappingCompileError) as exc:
        compile_expression("{\n  'a': this.a,\n  'b': other,\n}", path="processors.mapping.expression")
    assert (exc.value.line, exc.value.column, exc.value.path) == (3, 8, "processors.mapping.expression")


def test_no_builtins_beyond_the_safe_list():
    for name in ("eval", "exec", "getattr", "type", "globals", "vars", "compile", "print"):
        with pytest.raises(MappingCompileError, match=f"unknown name '{name}'"):
            compile_expression(f"{name}(this)")
    assert compile_expression("len(this)")({"a": 1}) == 1


# -- the mapping processor ---------------------------------------------------------------------------------------


async def test_mapping_turns_records_into_events(collector_run_pipeline):
    async with collector_run_pipeline(pipeline(mapping(TO_EVENT))) as p:
        await p.receiver().send([raw(1), raw(2)])
        events = await p.exporter().wait_for(2)
    assert events == [
        {"specversion": "1.0", "id": f"r{i}", "source": "app", "type": "call", "subject": "u1", "data": {"n": i}}
        for i in (1, 2)
    ]


async def test_mapping_sees_meta(collector_run_pipeline):
    expr = TO_EVENT.replace('"data": {"n": this.n}', '"data": {"receiver": meta.receiver, "pipeline": meta.pipeline}')
    async with collector_run_pipeline(pipeline(mapping(expr))) as p:
        await p.receiver().send([raw(1)])
        (event,) = await p.exporter().wait_for(1)
    assert event["data"] == {"receiver": "scripted", "pipeline": "test"}


async def test_mapping_runtime_error_names_the_record_and_the_expression(collector_run_pipeline):
    expr = TO_EVENT.replace("this.n}", "this.n + 1}")
    async with collector_run_pipeline(pipeline(mapping(expr))) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([raw(0), raw(1, n="x"), raw(2)])
        assert p.service.exporters["memory"].queue.stats().events == 0
    (err,) = exc.value.records
    assert err.index == 1
    assert err.message.startswith('mapping mapping failed: TypeError: can only concatenate str (not "int") to str')
    assert err.message.endswith('(expression: {"specversion": "1.0", "id": this.rid, "source": "app", "...)')
    assert exc.value.message.startswith("processor mapping: 1 record(s) failed; record 1: mapping mapping failed")


async def test_mapping_result_must_be_an_object(collector_run_pipeline):
    async with collector_run_pipeline(pipeline(mapping("this.n"))) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([raw(5)])
    assert exc.value.records == [
        RecordError(0, "mapping mapping returned int, not an object or None (expression: this.n)", None)
    ]


async def test_mapping_none_drops_and_counts(collector_run_pipeline):
    expr = f"None if this.user == 'bot' else {TO_EVENT}"
    async with collector_run_pipeline(pipeline(mapping(expr))) as p:
        await p.receiver().send([raw(0, user="bot"), raw(1), raw(2, user="bot")])
        events = await p.exporter().wait_for(1)
        assert dropped(p, "mapping", "mapped_to_none") == 2
    assert [e["id"] for e in events] == ["r1"]


async def test_mapping_on_error_drop_and_dead_letter(collector_run_pipeline, collector_storage):
    from collector.runtime.deadletters import DeadLetterStore

    expr = TO_EVENT.replace("this.n}", "10 // this.n}")
    procs = pipeline(mapping(expr, on_error="dead_letter"), "mapping/second: {expression: this, on_error: drop}")
    procs = procs.replace(
        "mapping/second: {expression: this,", "mapping/second: {expression: 'this if this.data.n < 6 else 1',"
    )
    async with collector_run_pipeline(procs) as p:
        await p.receiver().send([raw(0), raw(1), raw(2), raw(5)])
        events = await p.exporter().wait_for(2)
        assert dropped(p, "mapping", "dead_lettered") == 1
        assert dropped(p, "mapping/second", "error") == 1  # r1: 10 // 1 = 10, mapped to 1, not an object
    assert [e["id"] for e in events] == ["r2", "r5"]
    store = DeadLetterStore(collector_storage / "processors" / "mapping" / "test" / "deadletter.sqlite")
    try:
        (entry,) = store.list()
    finally:
        store.close()
    assert entry.event == raw(0)
    assert "ZeroDivisionError" in entry.body


async def test_filter_keeps_and_counts(collector_run_pipeline):
    procs = pipeline("filter: {condition: \"this.user != 'bot'\"}", mapping(TO_EVENT))
    async with collector_run_pipeline(procs) as p:
        await p.receiver().send([raw(0, user="bot"), raw(1), raw(2, user="bot"), raw(3)])
        events = await p.exporter().wait_for(2)
        assert dropped(p, "filter", "filtered") == 2
    assert [e["id"] for e in events] == ["r1", "r3"]


async def test_filter_error_is_per_record(collector_run_pipeline):
    async with collector_run_pipeline(
        pipeline("filter: {condition: 'this.n > 1', on_error: drop}", mapping(TO_EVENT))
    ) as p:
        await p.receiver().send([raw(0), raw(2), raw(3, n="x")])
        events = await p.exporter().wait_for(1)
        assert dropped(p, "filter", "error") == 1
        assert dropped(p, "filter", "filtered") == 1
    assert [e["id"] for e in events] == ["r2"]


async def test_errors_after_a_filter_name_the_original_index(collector_run_pipeline):
    procs = pipeline("filter: {condition: \"this.user != 'bot'\"}", mapping(TO_EVENT.replace("this.n}", "1 / this.n}")))
    records = [raw(5, user="bot"), raw(1), raw(0, user="bot"), raw(3), raw(0)]
    async with collector_run_pipeline(procs) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send(records)
    # The mapping saw 3 records and failed on its third; the client sent that one at index 4.
    assert [r.index for r in exc.value.records] == [4]
    assert "ZeroDivisionError" in exc.value.records[0].message


async def test_validation_after_a_mapping_names_the_original_index(collector_run_pipeline):
    procs = pipeline("filter: {condition: 'this.n != 0'}", mapping(TO_EVENT))
    async with collector_run_pipeline(procs) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([raw(0), raw(1), raw(2, user=None)])
    assert [(r.index, r.field) for r in exc.value.records] == [(2, "subject")]


# -- functions ---------------------------------------------------------------------------------------------------


def test_stable_id_is_deterministic():
    a = stable_id("src", {"b": 1, "a": [1, 2]})
    assert a == stable_id("src", {"a": [1, 2], "b": 1}), "key order does not matter"
    assert a != stable_id("src", {"a": [2, 1], "b": 1})
    assert a != stable_id("other", {"a": [1, 2], "b": 1})
    canonical = orjson.dumps(["src", {"b": 1, "a": [1, 2]}], option=orjson.OPT_SORT_KEYS).decode()
    assert a == str(uuid.uuid5(STABLE_ID_NAMESPACE, canonical))
    assert uuid.UUID(a).version == 5
    # Fixed forever: a changed namespace or encoding would change the ids of replayed events.
    assert stable_id("cloudevent", {"a": 1}) == str(uuid.uuid5(STABLE_ID_NAMESPACE, '["cloudevent",{"a":1}]'))
    with pytest.raises(TypeError):
        stable_id(object())
    assert run("stable_id(this.a, this.b)", {"a": "x", "b": 2}) == stable_id("x", 2)


def test_parse_time():
    assert parse_time("2024-05-01T14:00:00+02:00") == "2024-05-01T12:00:00.000Z"
    assert parse_time("2024-05-01T12:00:00") == "2024-05-01T12:00:00.000Z"  # naive: UTC
    assert parse_time(1714564800) == "2024-05-01T12:00:00.000Z"
    assert parse_time(1714564800123) == "2024-05-01T12:00:00.123Z"  # milliseconds
    assert parse_time(1714564800123456) == "2024-05-01T12:00:00.123Z"  # microseconds
    assert parse_time("1714564800.5") == "2024-05-01T12:00:00.500Z"
    assert parse_time("01/May/2024:14:00:00 +0200", "%d/%b/%Y:%H:%M:%S %z") == "2024-05-01T12:00:00.000Z"
    assert parse_time(datetime(2024, 5, 1, 12, tzinfo=UTC)) == "2024-05-01T12:00:00.000Z"
    assert parse_time(None) is None
    with pytest.raises(TypeError):
        parse_time(True)
    with pytest.raises(ValueError):
        parse_time("next tuesday")


def test_format_and_unix_time():
    t = "2024-05-01T12:00:00.250Z"
    assert format_time(t) == "2024-05-01T12:00:00.250Z"
    assert format_time(t, "unix") == 1714564800
    assert format_time(t, "unix_ms") == 1714564800250
    assert format_time(t, "%Y-%m-%d") == "2024-05-01"
    assert format_time(None) is None
    assert unix_time(t) == 1714564800.25
    assert unix_time(None) is None
    assert run("unix_time(this.end) - unix_time(this.start)", {"start": t, "end": "2024-05-01T12:01:00.250Z"}) == 60


def test_now_and_uuid4():
    before = datetime.now(UTC) - timedelta(seconds=1)
    stamp = now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert datetime.fromisoformat(stamp) >= before
    assert uuid.UUID(uuid4()).version == 4 and uuid4() != uuid4()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1h30m", 5400.0), ("500ms", 0.5), ("2d", 172800.0), ("1w", 604800.0), ("PT1H", 3600.0), ("P1DT2M", 86520.0),
     ("90", 90.0), (1.5, 1.5), (timedelta(minutes=2), 120.0), ("10us", 1e-5), (None, None)],
)  # fmt: skip
def test_parse_duration(value, seconds):
    assert parse_duration(value) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize("value", ["1x", "h", "1h 30m", "P", "PT"])
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_small_functions():
    assert coalesce(None, 0, 1) == 0 and coalesce() is None
    assert to_int("12") == 12 and to_int("1.9") == 1 and to_int(3.7) == 3
    assert to_int("x") is None and to_int(None, 0) == 0
    assert to_float("2.5") == 2.5 and to_float("nan", -1) == -1 and to_float("inf") is None and to_float([]) is None
    assert to_str(5) == "5" and to_str(None) is None
    assert lower("AbC") == "abc" and upper("abc") == "ABC" and trim("  a ") == "a"
    assert lower(None) is None and upper(None) is None and trim(None) is None
    assert split("a b  c") == ["a", "b", "c"] and split("a,b", ",") == ["a", "b"] and split(None) is None
    assert join(["a", 1]) == "a,1" and join(["a", "b"], "-") == "a-b" and join(None) is None
    assert replace("a-b-c", "-", "+") == "a+b+c" and replace(None, "a", "b") is None
    assert regex_match("GET /api", r"^GET ") is True and regex_match(None, ".") is False
    assert regex_replace("a1b22", r"\d+", "#") == "a#b#" and regex_replace(None, "a", "b") is None
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}}
    assert get(doc, "a.b.1.c") == 2 and get(doc, "a.b.-1.c") == 2
    assert get(doc, "a.b.5.c") is None and get(doc, "a.x", "d") == "d" and get(doc, "a.b.c") is None


def test_every_curated_function_is_in_scope():
    scope = builtin_functions()
    assert set(scope) >= {"stable_id", "uuid4", "now", "parse_time", "format_time", "unix_time", "parse_duration"}
    for name in scope:
        assert compile_expression(f"{name}")({}) is scope[name]


# -- plugin functions and `collector validate` -------------------------------------------------------------------


class CentsPlugin:
    @hookimpl
    def collector_functions(self):
        return [FunctionSpec("cents", lambda amount: round(amount * 100), "Dollars to integer cents.")]


async def test_a_plugin_function_is_usable_in_a_mapping(collector_run_pipeline):
    registry = testing_registry([("cents", CentsPlugin())])
    expr = TO_EVENT.replace("this.n}", "cents(this.n)}")
    async with collector_run_pipeline(pipeline(mapping(expr)), registry=registry) as p:
        await p.receiver().send([raw(1, n=2.5)])
        (event,) = await p.exporter().wait_for(1)
    assert event["data"] == {"n": 250}


async def test_without_the_plugin_the_function_is_unknown(collector_run_pipeline):
    from collector.config import ConfigErrors

    with pytest.raises(ConfigErrors) as exc:
        async with collector_run_pipeline(pipeline(mapping("cents(this.n)"))):
            pass
    assert exc.value.lines() == [
        "processors.mapping.expression: line 1, column 1: unknown name 'cents' (read fields with this.<field>)"
    ]


def test_collector_validate_reports_a_mapping_compile_error(cli, tmp_path):
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"""
receivers: {{http: {{endpoint: "127.0.0.1:0"}}}}
processors:
  mapping:
    expression: |
      {{"id": this.id,
       "subject": this.__class__}}
  filter: {{condition: "this.n > 1"}}
exporters: {{debug: {{}}}}
storage: {{directory: {tmp_path / "storage"}}}
service:
  pipelines:
    usage: {{receivers: [http], processors: [filter, mapping], exporters: [debug]}}
""",
        encoding="utf-8",
    )
    result = cli("validate", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: processors.mapping.expression: line 2, column 18: attributes starting with '_' are not allowed: "
        ".__class__"
    ]


def test_to_event_fills_defaults_drops_and_names_failures():
    from collector.mapping import compile_expression

    keep = compile_expression('{"subject": this.who, "id": None}')
    event = keep.to_event({"who": "acme"}, None, {"id": "x-1", "source": "s", "specversion": "1.0"})
    assert event == {"subject": "acme", "id": "x-1", "source": "s", "specversion": "1.0"}
    assert compile_expression("None").to_event({}, None, {"id": "x"}) is None
    with pytest.raises(ValueError, match=r"^returned int, not an object or None \(expression: 1\)$"):
        compile_expression("1").to_event({}, None, {})
    with pytest.raises(ValueError, match=r"^failed: ZeroDivisionError: .*\(expression: 1 // this.n\)$"):
        compile_expression("1 // this.n").to_event({"n": 0}, None, {})


# -- coalesce stops at the first value that is not None ------------------------------------------------


def _counting_functions() -> tuple[dict, list]:
    calls: list = []

    def seen(value):
        calls.append(value)
        return value

    return {**builtin_functions(), "seen": seen}, calls


def test_coalesce_does_not_work_out_the_values_after_the_first_that_is_not_none():
    functions, calls = _counting_functions()
    fn = compile_expression("coalesce(seen(this.a), seen(this.b), seen(this.c))", functions).function
    assert fn({"a": None, "b": 0, "c": 1}, {}) == 0
    assert calls == [None, 0]  # this.c was never looked at
    calls.clear()
    assert fn({"a": "x"}, {}) == "x" and calls == ["x"]
    calls.clear()
    assert fn({}, {}) is None and calls == [None, None, None]
    # A fallback that would fail is only a failure for the records that reach it.
    safe = compile_expression("coalesce(this.id, 1 / 0)", functions).function
    assert safe({"id": "e1"}, {}) == "e1"
    with pytest.raises(ZeroDivisionError):
        safe({"id": None}, {})


def test_coalesce_keeps_its_meaning_inside_comprehensions_and_lambdas():
    fn = compile_expression(
        "[coalesce(x.a, x.b, 'none') for x in this.items] + [(lambda y: coalesce(y, this.d))(None)]",
        builtin_functions(),
    ).function
    assert fn({"items": [{"a": None, "b": 2}, {"a": 1}, {}], "d": "d"}, {}) == [2, 1, "none", "d"]


def test_coalesce_of_a_plugin_or_a_local_name_is_called_as_is():
    functions, calls = _counting_functions()
    mine = {**functions, "coalesce": lambda *values: list(values)}  # a registry may offer another coalesce
    assert compile_expression("coalesce(seen(1), seen(2))", mine).function({}, {}) == [1, 2]
    assert calls == [1, 2]
    shadowed = compile_expression("(lambda coalesce: coalesce(1, 2))(max)", builtin_functions()).function
    assert shadowed({}, {}) == 2
    # A walrus in a later value still binds its name for the rest of the expression.
    walrus = compile_expression("[coalesce(this.a, (y := 2)), y]", builtin_functions()).function
    assert walrus({"a": 1}, {}) == [1, 2]
