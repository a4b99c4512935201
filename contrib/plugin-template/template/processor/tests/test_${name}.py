"""Tests of the `${name}` processor with the collector's testing kit (collector.testing).

The kit is a pytest plugin that collector-core registers: its fixtures
(`collector_run_pipeline`, `collector_storage`, `collector_fake_clock`,
`collector_registry`) need no import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from collector.api import ConfigError, PermanentError
from collector.testing import testing_registry

import collector_plugin_${package}

PIPELINE = """
receivers:
  scripted: {}
processors:
  ${name}: {field: duration_ms, factor: 0.001, target: duration_s, decimals: 3}
exporters:
  memory: {batch: {period: 0.01}}
"""


def event(i: int, **data: object) -> dict:
    return {"specversion": "1.0", "id": f"e-{i}", "source": "test", "type": "request", "subject": "c-1", "data": data}


@pytest.fixture
def registry():
    # The built-ins, the kit's `scripted` receiver and `memory` exporter, and this plugin.
    return testing_registry([("${name}", collector_plugin_${package})])


def test_the_hook_declares_the_processor(registry):
    spec = registry.component("processor", "${name}")
    assert spec.config_model is collector_plugin_${package}.${class_name}Config
    assert spec.description


def test_importing_the_plugin_does_not_import_the_implementation():
    module = collector_plugin_${package}.__name__
    code = f"import sys, {module}; assert '{module}.processor' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_scales_the_field(collector_run_pipeline, registry):
    async with collector_run_pipeline(PIPELINE, registry=registry) as p:
        await p.receiver().send([event(1, duration_ms=1500), event(2, tokens=7)])
        events = await p.exporter().wait_for(2)
    assert events[0]["data"] == {"duration_ms": 1500, "duration_s": 1.5}
    assert events[1]["data"] == {"tokens": 7}  # no duration_ms: unchanged


async def test_a_non_number_refuses_the_batch(collector_run_pipeline, registry):
    async with collector_run_pipeline(PIPELINE, registry=registry) as p:
        with pytest.raises(PermanentError) as refused:
            await p.receiver().send([event(1, duration_ms=5), event(2, duration_ms="soon")])
        assert p.exporter().events == []  # nothing was committed
    assert [(r.index, r.field) for r in refused.value.records] == [(1, "data.duration_ms")]


async def test_unknown_settings_are_configuration_errors(collector_run_pipeline, registry):
    with pytest.raises(ConfigError, match=r"processors\.${name}\.factr: unknown field"):
        async with collector_run_pipeline(PIPELINE.replace("factor", "factr"), registry=registry):
            pass
