"""Tests of the `${name}` exporter with the collector's testing kit (collector.testing).

The kit is a pytest plugin that collector-core registers: its fixtures
(`collector_run_pipeline`, `collector_storage`, `collector_fake_clock`,
`collector_registry`) need no import.  The exporter delivers on the sender's
own thread, so the tests wait for what a user would see with `eventually()`,
never a sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from collector.api import ConfigError
from collector.testing import eventually, testing_registry

import collector_plugin_${package}


def pipeline(path: Path) -> str:
    return f"""
receivers:
  scripted: {{}}
exporters:
  ${name}:
    path: "{path}"
    batch: {{period: 0.01}}
    retry: {{initial_interval: 0.01, max_interval: 0.05}}
"""


def event(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "test", "type": "request", "subject": "c-1"}


def written(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def registry():
    # The built-ins, the kit's `scripted` receiver and `memory` exporter, and this plugin.
    return testing_registry([("${name}", collector_plugin_${package})])


def test_the_hook_declares_the_exporter(registry):
    spec = registry.component("exporter", "${name}")
    assert spec.config_model is collector_plugin_${package}.${class_name}Config
    assert spec.description


def test_importing_the_plugin_does_not_import_the_implementation():
    module = collector_plugin_${package}.__name__
    code = f"import sys, {module}; assert '{module}.exporter' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_events_are_appended_as_json_lines(collector_run_pipeline, registry, tmp_path):
    out = tmp_path / "events.jsonl"
    async with collector_run_pipeline(pipeline(out), registry=registry) as p:
        await p.receiver().send([event(1), event(2)])
        await p.receiver().send([event(3)])
        await eventually(lambda: len(written(out)) == 3, message="three events in the file")
    assert [e["id"] for e in written(out)] == ["e-1", "e-2", "e-3"]


async def test_a_failed_write_is_retried_until_it_succeeds(collector_run_pipeline, registry, tmp_path):
    out = tmp_path / "not-yet" / "events.jsonl"  # the directory is missing: every write fails
    async with collector_run_pipeline(pipeline(out), registry=registry) as p:
        await p.receiver().send([event(1)])
        failed = await eventually(lambda: p.metric("collector_exporter_retries_total", exporter="${name}") >= 2)
        assert failed and written(out) == []
        out.parent.mkdir()  # the directory appears: the queued event is delivered, not lost
        await eventually(lambda: written(out), message="the event is delivered once the directory exists")
    assert [e["id"] for e in written(out)] == ["e-1"]


async def test_unknown_settings_are_configuration_errors(collector_run_pipeline, registry, tmp_path):
    yaml_text = pipeline(tmp_path / "e.jsonl").replace("path:", "paht:")
    with pytest.raises(ConfigError, match=r"exporters\.${name}\.paht: unknown field"):
        async with collector_run_pipeline(yaml_text, registry=registry):
            pass
