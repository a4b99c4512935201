"""Tests of the `${name}` pull receiver with the collector's testing kit (collector.testing).

The kit is a pytest plugin that collector-core registers: its fixtures
(`collector_run_pipeline`, `collector_storage`, `collector_fake_clock`,
`collector_registry`) need no import.  The receiver reads time from its
context's clock, so the fake clock drives its windows: no test waits for an
hour to pass.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from collector.api import ConfigError, ScheduleConfig, stable_id
from collector.testing import eventually, testing_registry

import collector_plugin_${package}

HOUR = 3600.0
# The fake clock starts at 1,700,000,000 = 2023-11-14T22:13:20Z: the last complete hour is 21:00-22:00.
FIRST_WINDOW_START = 1_699_999_200.0 - HOUR

PIPELINE = """
receivers:
  ${name}: {interval: 1h, subjects: [customer-1, customer-2]}
exporters:
  memory: {batch: {period: 0.01}}
"""


@pytest.fixture
def registry():
    # The built-ins, the kit's `scripted` receiver and `memory` exporter, and this plugin.
    return testing_registry([("${name}", collector_plugin_${package})])


def times(events: list[dict]) -> list[str]:
    return sorted({e["time"] for e in events})


def test_the_hook_declares_the_receiver(registry):
    spec = registry.component("receiver", "${name}")
    assert spec.config_model is collector_plugin_${package}.${class_name}Config
    assert issubclass(spec.config_model, ScheduleConfig)
    assert spec.description


def test_importing_the_plugin_does_not_import_the_implementation():
    module = collector_plugin_${package}.__name__
    code = f"import sys, {module}; assert '{module}.receiver' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_one_event_per_subject_and_window_with_deterministic_ids(
    collector_run_pipeline, collector_fake_clock, registry
):
    async with collector_run_pipeline(PIPELINE, registry=registry, clock=collector_fake_clock) as p:
        first = await p.exporter().wait_for(2)  # the last complete window, one event per subject
        collector_fake_clock.advance(HOUR)  # the next window ends
        events = await p.exporter().wait_for(4)
    assert events[:2] == first
    assert times(events) == ["2023-11-14T21:00:00.000Z", "2023-11-14T22:00:00.000Z"]
    assert [(e["subject"], e["data"]) for e in events] == [
        ("customer-1", {"seconds": HOUR}),
        ("customer-2", {"seconds": HOUR}),
    ] * 2
    # The id depends on the source, the subject and the window start only: a retry,
    # a restart or a backfill of the same window sends the same id.
    for e in events:
        assert e["id"] == stable_id("collector-plugin-${name}", e["subject"], e["time"])
    assert len({e["id"] for e in events}) == 4


async def test_a_restart_backfills_the_missed_windows_once(collector_run_pipeline, collector_fake_clock, registry):
    async with collector_run_pipeline(PIPELINE, registry=registry, clock=collector_fake_clock) as p:
        await p.exporter().wait_for(2)
    collector_fake_clock.advance(3 * HOUR)  # down for three hours
    async with collector_run_pipeline(PIPELINE, registry=registry, clock=collector_fake_clock) as p:
        events = await p.exporter().wait_for(6)
        # Wait for the watermark to settle, then check that nothing more comes.
        await eventually(lambda: p.component("${name}").health()["watermark"] == "2023-11-15T01:00:00.000Z")
        assert len(p.exporter().events) == 6
    # The window delivered before the restart is not sent again; the three missed ones are, in order.
    assert times(events) == ["2023-11-14T22:00:00.000Z", "2023-11-14T23:00:00.000Z", "2023-11-15T00:00:00.000Z"]


async def test_unknown_settings_are_configuration_errors(collector_run_pipeline, registry):
    with pytest.raises(ConfigError, match=r"receivers\.${name}\.intervall: unknown field"):
        async with collector_run_pipeline(PIPELINE.replace("interval", "intervall"), registry=registry):
            pass
