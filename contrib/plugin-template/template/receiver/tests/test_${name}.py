"""Tests of the `${name}` receiver with the collector's testing kit (collector.testing).

The kit is a pytest plugin that collector-core registers: its fixtures
(`collector_run_pipeline`, `collector_storage`, `collector_fake_clock`,
`collector_registry`) need no import.  The receiver works on its own task, so
the tests wait for what a user would see with `eventually()`, never a sleep.
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


def pipeline(spool: Path) -> str:
    return f"""
receivers:
  ${name}: {{directory: "{spool}", poll_interval: 0.01}}
exporters:
  memory: {{batch: {{period: 0.01}}}}
"""


def event(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "test", "type": "request", "subject": "c-1"}


def drop(spool: Path, name: str, lines: list[str]) -> Path:
    """Write a spool file the way producers must: complete, then renamed into place."""
    tmp = spool / f"{name}.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    return tmp.rename(spool / f"{name}.jsonl")


@pytest.fixture
def registry():
    # The built-ins, the kit's `scripted` receiver and `memory` exporter, and this plugin.
    return testing_registry([("${name}", collector_plugin_${package})])


def test_the_hook_declares_the_receiver(registry):
    spec = registry.component("receiver", "${name}")
    assert spec.config_model is collector_plugin_${package}.${class_name}Config
    assert spec.description


def test_importing_the_plugin_does_not_import_the_implementation():
    module = collector_plugin_${package}.__name__
    code = f"import sys, {module}; assert '{module}.receiver' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_file_is_delivered_and_then_deleted(collector_run_pipeline, registry, tmp_path):
    spool = tmp_path / "spool"
    async with collector_run_pipeline(pipeline(spool), registry=registry) as p:
        taken = drop(spool, "batch-1", [json.dumps(event(1)), json.dumps(event(2))])
        events = await p.exporter().wait_for(2)
        await eventually(lambda: not taken.exists(), message="the delivered file is deleted")
    assert [e["id"] for e in events] == ["e-1", "e-2"]


async def test_a_bad_file_is_set_aside_and_nothing_of_it_is_delivered(collector_run_pipeline, registry, tmp_path):
    spool = tmp_path / "spool"
    async with collector_run_pipeline(pipeline(spool), registry=registry) as p:
        bad = {**event(2), "type": ""}  # refused by the event rules: nothing of the file is committed
        drop(spool, "bad", [json.dumps(event(1)), json.dumps(bad)])
        await eventually(lambda: (spool / "bad.jsonl.rejected").exists(), message="the bad file is set aside")
        drop(spool, "good", [json.dumps(event(3))])
        events = await p.exporter().wait_for(1)
    assert [e["id"] for e in events] == ["e-3"]


async def test_unknown_settings_are_configuration_errors(collector_run_pipeline, registry, tmp_path):
    yaml_text = pipeline(tmp_path / "spool").replace("poll_interval", "poll_intervall")
    with pytest.raises(ConfigError, match=r"receivers\.${name}\.poll_intervall: unknown field"):
        async with collector_run_pipeline(yaml_text, registry=registry):
            pass
