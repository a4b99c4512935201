"""The built-in processors validate, attributes and ensure_id, and the on_error policy they share."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from collector.clock import FakeClock
from collector.config import ConfigErrors, load_config
from collector.errors import ConfigError, PermanentError, RecordError
from collector.events import fill_defaults, stable_id
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout
from collector.testing import testing_registry

FAST = "exporters: {memory: {batch: {period: 0.01}}}\n"


def ev(i: int, **extra: object) -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "api-call", "subject": "cust-1", **extra}


def config(processors: str) -> str:
    return f"receivers: {{scripted: {{}}}}\nprocessors:\n{processors}\n{FAST}"


def dropped(p, processor: str, reason: str) -> float:
    return p.service.telemetry.metrics.dropped.labels(processor=processor, reason=reason)._value.get()


def config_errors(yaml_text: str) -> list[str]:
    """What load_config (what `collector validate` runs) says, with everything wired into one pipeline."""
    data = yaml.safe_load(yaml_text)
    data["service"] = {
        "pipelines": {
            "test": {"receivers": ["scripted"], "processors": list(data["processors"]), "exporters": ["memory"]}
        }
    }
    with pytest.raises(ConfigErrors) as exc:
        load_config(yaml.safe_dump(data), testing_registry(), source="<test>")
    return exc.value.lines()


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "usage.json"
    schema = {
        "type": "object",
        "required": ["tokens", "model"],
        "properties": {
            "tokens": {"type": "integer", "minimum": 0},
            "model": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "number"}}}},
        },
    }
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


# -- validate ---------------------------------------------------------------------------------------------------


async def test_validate_passes_valid_events_unchanged(collector_run_pipeline):
    async with collector_run_pipeline(config("  validate: {}")) as p:
        await p.receiver().send([ev(1, data={"tokens": 3}), ev(2)])
        events = await p.exporter().wait_for(2)
    assert events == [ev(1, data={"tokens": 3}), ev(2)]


async def test_validate_rejects_naming_every_problem_of_every_record(collector_run_pipeline):
    bad = ev(2, time="2024-05-01 12:00:00")
    del bad["subject"]
    async with collector_run_pipeline(config("  validate: {}")) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1), bad, ev(3, data=[1])])
        assert p.service.exporters["memory"].queue.stats().events == 0
    got = [(r.index, r.field) for r in exc.value.records]
    assert got == [(1, "subject"), (1, "time"), (2, "data")]
    assert "subject is required" in exc.value.records[0].message
    assert exc.value.message.startswith("processor validate: 2 record(s) failed; record 1: subject is required")


async def test_validate_data_schema_names_the_field(collector_run_pipeline, schema_file):
    records = [
        ev(0, data={"tokens": 1, "model": "m"}),
        ev(1, data={"tokens": "many", "model": "m"}),
        ev(2, data={"tokens": 1}),
        ev(3, data={"tokens": 1, "model": "m", "items": [{"qty": 1}, {"qty": "x"}]}),
        ev(4),  # no data: checked as null
    ]
    async with collector_run_pipeline(config(f"  validate: {{data_schema: {schema_file}}}")) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send(records)
    assert [(r.index, r.field) for r in exc.value.records] == [
        (1, "data.tokens"),
        (2, "data.model"),
        (3, "data.items.1.qty"),
        (4, "data"),
    ]
    first = exc.value.records[0].message
    assert first == "data.tokens does not match the data schema: 'many' is not of type 'integer'"
    assert exc.value.records[1].message == "data.model does not match the data schema: 'model' is a required property"


async def test_validate_schema_is_read_once_at_start(collector_run_pipeline, schema_file):
    async with collector_run_pipeline(config(f"  validate: {{data_schema: {schema_file}}}")) as p:
        schema_file.write_text(json.dumps({"type": "object", "required": ["other"]}), encoding="utf-8")
        await p.receiver().send([ev(1, data={"tokens": 1, "model": "m"})])
        assert len(await p.exporter().wait_for(1)) == 1


async def test_validate_yaml_schema_and_schema_only_mode(collector_run_pipeline, tmp_path):
    schema = tmp_path / "s.yaml"
    schema.write_text("type: object\nproperties: {tokens: {type: integer}}\n", encoding="utf-8")
    # cloudevents: false checks only the schema, so raw records can be checked before a mapping shapes them.
    procs = f"""  validate: {{cloudevents: false, data_schema: {schema}, on_error: drop}}
  mapping: {{expression: '{{"specversion": "1.0", "id": this.n, "source": "s", "type": "t", "subject": "c",
    "data": this.data}}'}}"""
    async with collector_run_pipeline(config(procs)) as p:
        await p.receiver().send([{"n": "a", "data": {"tokens": 1}}, {"n": "b", "data": {"tokens": 1.5}}, [1]])
        events = await p.exporter().wait_for(1)
        assert dropped(p, "validate", "error") == 2  # the float, and the record that is not an object
    assert [e["id"] for e in events] == ["a"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the schema file"),
        ("{not json", "cannot be parsed"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"type": "no-such-type"}', "is not a valid JSON Schema at type"),
    ],
)
def test_validate_unusable_schema_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    lines = config_errors(config(f"  validate: {{data_schema: {path}}}"))
    assert len(lines) == 1
    assert lines[0].startswith("processors.validate.data_schema: ")
    assert message in lines[0]


async def test_validate_schema_that_cannot_be_applied_fails_the_record(collector_run_pipeline, tmp_path):
    schema = tmp_path / "remote.json"
    schema.write_text(json.dumps({"properties": {"a": {"$ref": "https://example.invalid/a.json"}}}), encoding="utf-8")
    async with collector_run_pipeline(config(f"  validate: {{data_schema: {schema}}}")) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(0, data={"a": 1})])
    (err,) = exc.value.records
    assert err.field == "data" and err.message.startswith("the data schema could not be applied: ")
    assert "Unresolvable: https://example.invalid/a.json" in err.message  # never fetched


def test_validate_needs_something_to_check():
    (line,) = config_errors(config("  validate: {cloudevents: false}"))
    assert line.startswith("processors.validate") and "nothing to check" in line


def test_jsonschema_is_imported_only_when_a_schema_is_used():
    code = (
        "import sys\nfrom collector.testing import testing_registry\n"
        "r = testing_registry(); [s.config_model for s in r.components('processor')]\n"
        "print('jsonschema' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# -- on_error ---------------------------------------------------------------------------------------------------


async def test_on_error_dead_letter_keeps_each_failed_record_once(collector_run_pipeline, collector_storage):
    bad = ev(1, time="yesterday")
    del bad["subject"]
    async with collector_run_pipeline(config("  validate: {on_error: dead_letter}")) as p:
        await p.receiver().send([ev(0), bad, ev(2)])
        events = await p.exporter().wait_for(2)
        assert dropped(p, "validate", "dead_lettered") == 1
    assert [e["id"] for e in events] == ["e0", "e2"]
    path = collector_storage / "processors" / "validate" / "test" / "deadletter.sqlite"
    assert path == StorageLayout(collector_storage).processor_deadletters("validate", "test")
    store = DeadLetterStore(path)
    try:
        (entry,) = store.list()
    finally:
        store.close()
    assert entry.event == bad
    assert entry.reason == "processor_error"
    assert "subject is required" in entry.body and "time must be an RFC 3339 timestamp" in entry.body


async def test_on_error_drop_counts(collector_run_pipeline, collector_storage):
    async with collector_run_pipeline(config("  validate: {on_error: drop}")) as p:
        await p.receiver().send([ev(0), ev(1, subject=""), ev(2, type=5)])
        events = await p.exporter().wait_for(1)
        assert dropped(p, "validate", "error") == 2
        assert p.service.telemetry.metrics.accepted.labels(receiver="scripted")._value.get() == 3
    assert [e["id"] for e in events] == ["e0"]
    assert not (collector_storage / "processors" / "validate" / "test" / "deadletter.sqlite").exists()


async def test_errors_name_the_receivers_index_after_a_filter(collector_run_pipeline):
    procs = "  filter: {condition: \"this.subject != 'skip'\"}\n  validate: {}"
    records = [ev(0, subject="skip"), ev(1, subject="skip"), ev(2), ev(3, time="later")]
    async with collector_run_pipeline(config(procs)) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send(records)
    assert [(r.index, r.field) for r in exc.value.records] == [(3, "time")]


# -- attributes ------------------------------------------------------------------------------------------------


async def test_attributes_set_rename_delete(collector_run_pipeline):
    procs = """  attributes:
    set: {data.region: eu-west-1, data.tags: {tier: gold}, subject: cust-9}
    rename: {data.tokens: data.usage.tokens, data.debug: data.missing_is_fine}
    delete: [data.internal, data.absent.deeper]"""
    records = [ev(0, data={"tokens": 5, "internal": "x"}), ev(1, data=None), ev(2)]
    async with collector_run_pipeline(config(procs)) as p:
        await p.receiver().send(records)
        events = await p.exporter().wait_for(3)
    assert events[0]["data"] == {"usage": {"tokens": 5}, "region": "eu-west-1", "tags": {"tier": "gold"}}
    assert events[0]["subject"] == "cust-9"
    assert events[1]["data"] == events[2]["data"] == {"region": "eu-west-1", "tags": {"tier": "gold"}}
    assert events[1]["data"]["tags"] is not events[2]["data"]["tags"], "a literal object must not be shared"


async def test_attributes_actions_run_in_a_fixed_order(collector_run_pipeline):
    # Listed set-first, but rename runs before delete, which runs before set, then from_env.
    procs = """  attributes:
    set: {data.x: new, data.y: set}
    delete: [data.y]
    rename: {data.x: data.y}"""
    async with collector_run_pipeline(config(procs)) as p:
        await p.receiver().send([ev(0, data={"x": "old"})])
        (event,) = await p.exporter().wait_for(1)
    # rename x->y (y=old), delete y, set x=new and y=set
    assert event["data"] == {"x": "new", "y": "set"}


async def test_attributes_never_change_the_input_records(collector_run_pipeline):
    yaml_text = """
receivers: {scripted: {}}
processors: {attributes: {set: {data.a.b: 1}, delete: [data.keep.other], rename: {data.keep.me: data.moved}}}
exporters: {memory/changed: {batch: {period: 0.01}}, memory/original: {batch: {period: 0.01}}}
service:
  pipelines:
    changed: {receivers: [scripted], processors: [attributes], exporters: [memory/changed]}
    original: {receivers: [scripted], exporters: [memory/original]}
"""
    record = ev(0, data={"a": {"z": 0}, "keep": {"me": 1, "other": 2}})
    snapshot = json.loads(json.dumps(record))
    async with collector_run_pipeline(yaml_text) as p:
        await p.receiver().send([record])
        (changed,) = await p.exporter("memory/changed").wait_for(1)
        (original,) = await p.exporter("memory/original").wait_for(1)
    assert record == snapshot
    assert original == snapshot
    assert changed["data"] == {"a": {"z": 0, "b": 1}, "keep": {}, "moved": 1}


async def test_attributes_cannot_write_through_a_non_object(collector_run_pipeline):
    async with collector_run_pipeline(config("  attributes: {set: {data.region: eu}}")) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(0, data={}), ev(1, data="text"), [1]])
    assert exc.value.records == [
        RecordError(
            1, "attributes attributes: cannot write data.region: data is a string, not an object", "data.region"
        ),
        RecordError(2, "attributes attributes: the record is an array, not an object", None),
    ]


async def test_attributes_from_env_is_read_once_at_start(collector_run_pipeline, monkeypatch):
    monkeypatch.setenv("COLLECTOR_TEST_REGION", "eu-west-1")
    monkeypatch.delenv("COLLECTOR_TEST_ZONE", raising=False)
    procs = """  attributes:
    from_env:
      data.region: COLLECTOR_TEST_REGION
      data.zone: {variable: COLLECTOR_TEST_ZONE, default: a}"""
    async with collector_run_pipeline(config(procs)) as p:
        monkeypatch.setenv("COLLECTOR_TEST_REGION", "changed")
        await p.receiver().send([ev(0)])
        (event,) = await p.exporter().wait_for(1)
    assert event["data"] == {"region": "eu-west-1", "zone": "a"}


async def test_attributes_missing_env_variable_stops_the_start(collector_run_pipeline, monkeypatch):
    monkeypatch.delenv("COLLECTOR_TEST_NOPE", raising=False)
    with pytest.raises(ConfigError) as exc:
        async with collector_run_pipeline(config("  attributes: {from_env: {data.host: COLLECTOR_TEST_NOPE}}")):
            pass
    assert exc.value.path == "processors.attributes.from_env.data.host"
    assert "environment variable COLLECTOR_TEST_NOPE is not set" in exc.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{set: {data..x: 1}}", "'data..x' is not a field path"),
        ("{delete: ['.x']}", "'.x' is not a field path"),
        ("{rename: {a: b, c: b}}", "two fields are renamed to 'b'"),
        ("{set: {data.x: 1}, from_env: {data.x: HOME}}", "data.x: a path is either in set or in from_env"),
        ("{}", "nothing to do"),
        ("{set: {}, colour: red}", "colour"),
    ],
)
def test_attributes_config_errors(body, message):
    lines = config_errors(config(f"  attributes: {body}"))
    assert any(message in line for line in lines), lines


# -- ensure_id --------------------------------------------------------------------------------------------------

CLOCK_START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def bare(**extra: object) -> dict:
    return {"source": "meter", "type": "tokens", "subject": "cust-1", "data": {"tokens": 7}, **extra}


async def test_ensure_id_default_is_the_http_receivers_id(collector_run_pipeline):
    arrival = datetime.fromtimestamp(CLOCK_START, UTC)
    records = [bare(), bare(time="2024-05-01T12:00:00Z"), bare(data={"tokens": 8})]
    async with collector_run_pipeline(config("  ensure_id: {}"), clock=FakeClock(CLOCK_START)) as p:
        await p.receiver().send(records)
        await p.receiver().send([bare()])  # a retry of the first record
        events = await p.exporter().wait_for(4)
    assert events[:3] == [fill_defaults(r, now=arrival) for r in records]
    assert events[0]["time"] == "2023-11-14T22:13:20.000Z"
    assert events[1]["time"] == "2024-05-01T12:00:00Z"
    assert events[3]["id"] == events[0]["id"], "a retry must get the same id"
    assert len({e["id"] for e in events[:3]}) == 3


async def test_ensure_id_never_overwrites(collector_run_pipeline):
    records = [ev(0, time="2024-05-01T12:00:00Z"), {**ev(1), "specversion": "1.0"}]
    async with collector_run_pipeline(config("  ensure_id: {}"), clock=FakeClock(CLOCK_START)) as p:
        await p.receiver().send(records)
        events = await p.exporter().wait_for(2)
    assert events[0] == records[0]
    assert events[1] == {**records[1], "time": "2023-11-14T22:13:20.000Z"}


async def test_ensure_id_from_fields(collector_run_pipeline):
    procs = "  ensure_id: {fields: [data.request_id, subject]}"
    records = [
        bare(data={"request_id": "r1", "tokens": 1}),
        bare(data={"request_id": "r1", "tokens": 2}),  # same request: same id, OpenMeter keeps one
        bare(data={"request_id": "r2", "tokens": 1}),
    ]
    async with collector_run_pipeline(config(procs), clock=FakeClock(CLOCK_START)) as p:
        await p.receiver().send(records)
        events = await p.exporter().wait_for(3)
    assert events[0]["id"] == stable_id("meter", {"data.request_id": "r1", "subject": "cust-1"})
    assert events[1]["id"] == events[0]["id"]
    assert events[2]["id"] != events[0]["id"]


async def test_ensure_id_missing_field_fails_the_record(collector_run_pipeline):
    procs = "  ensure_id: {fields: [data.request_id]}"
    async with collector_run_pipeline(config(procs)) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([bare(data={"request_id": "r1"}), bare()])
    (err,) = exc.value.records
    assert (err.index, err.field) == (1, "data.request_id")
    assert "cannot derive an id: data.request_id is missing" in err.message


async def test_ensure_id_time_from_a_field(collector_run_pipeline):
    procs = "  ensure_id: {time_field: data.ts, on_error: drop}"
    records = [
        bare(data={"ts": 1714564800123}),  # epoch milliseconds
        bare(data={"ts": "2024-05-01T14:00:00+02:00"}),
        bare(data={"ts": "soon"}),  # unparseable: dropped
        bare(),  # missing: dropped
        bare(time="2024-01-01T00:00:00Z", data={"ts": 0}),  # time present: kept as is
    ]
    async with collector_run_pipeline(config(procs)) as p:
        await p.receiver().send(records)
        events = await p.exporter().wait_for(3)
        assert dropped(p, "ensure_id", "error") == 2
    assert [e["time"] for e in events] == [
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T12:00:00.000Z",
        "2024-01-01T00:00:00Z",
    ]


async def test_ensure_id_time_format_and_errors(collector_run_pipeline):
    procs = "  ensure_id: {time_field: data.when, time_format: '%d/%b/%Y:%H:%M:%S %z'}"
    async with collector_run_pipeline(config(procs)) as p:
        await p.receiver().send([bare(data={"when": "01/May/2024:14:00:00 +0200"})])
        (event,) = await p.exporter().wait_for(1)
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([bare(data={"when": "2024-05-01"})])
    assert event["time"] == "2024-05-01T12:00:00.000Z"
    (err,) = exc.value.records
    assert err.field == "data.when" and "cannot read a time from data.when" in err.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{time_format: '%Y'}", "time_format needs time_field"),
        ("{fields: []}", "fields"),
        ("{fields: [a, a]}", "listed twice"),
        ("{time_field: 'a.'}", "not a field path"),
    ],
)
def test_ensure_id_config_errors(body, message):
    lines = config_errors(config(f"  ensure_id: {body}"))
    assert any(message in line for line in lines), lines
