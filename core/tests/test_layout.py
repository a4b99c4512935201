"""The storage layout: the on-disk names existing data directories hold, and who uses them."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

from collector.config import load_config
from collector.hookspecs import hookimpl
from collector.pull import PullReceiver, ScheduleConfig, Window
from collector.runtime.layout import StorageLayout, deadletters_in, dir_name
from collector.specs import ComponentSpec
from collector.state import StateStore
from collector.testing import FakeClock, run_pipeline, testing_registry

ROOT = Path("/var/lib/collector")


def test_paths_are_the_ones_existing_data_directories_hold():
    layout = StorageLayout(ROOT)
    assert layout.exporter_queue("openmeter/eu") == ROOT / "exporters/openmeter__eu/queue"
    assert layout.exporter_deadletters("openmeter") == ROOT / "exporters/openmeter/deadletter.sqlite"
    assert layout.processor_dir("mapping/m", "p") == ROOT / "processors/mapping__m/p"
    assert layout.processor_deadletters("validate", "p") == ROOT / "processors/validate/p/deadletter.sqlite"
    assert layout.receiver_dir("prometheus/gpu") == ROOT / "receivers/prometheus__gpu"
    assert layout.pull_state("prometheus/gpu") == ROOT / "receivers/prometheus__gpu/state.sqlite"
    assert layout.coordinator_dir("kubernetes/lease") == ROOT / "coordinators/kubernetes__lease"
    backfill = layout.for_backfill("prometheus/gpu", "20260101T000000Z")
    assert backfill.root == ROOT / "backfill/prometheus__gpu-20260101T000000Z"
    assert backfill.exporter_queue("openmeter") == backfill.root / "exporters/openmeter/queue"


def test_component_dir_by_kind_and_processor_needs_its_pipeline():
    layout = StorageLayout(ROOT)
    assert layout.component_dir("exporter", "debug") == ROOT / "exporters/debug"
    assert layout.component_dir("processor", "dedupe", "p") == ROOT / "processors/dedupe/p"
    try:
        layout.component_dir("processor", "dedupe")
    except ValueError as exc:
        assert "pipeline" in str(exc)
    else:
        raise AssertionError("a processor's directory without a pipeline must be refused")


def test_dir_name_keeps_only_safe_characters():
    assert dir_name("openmeter/eu-1.x") == "openmeter__eu-1.x"
    assert dir_name("a/b c") == "a__b_c"


SERVICE_YAML = """
receivers: {scripted: {}}
processors: {validate: {on_error: dead_letter}}
exporters:
  memory/eu: {queue: {kind: durable}, batch: {period: 0.01}}
  memory/us: {}
service:
  pipelines:
    p: {receivers: [scripted], processors: [validate], exporters: [memory/eu, memory/us]}
"""


async def test_service_gives_each_component_its_layout_directory(tmp_path):
    layout = StorageLayout(tmp_path)
    async with run_pipeline(SERVICE_YAML, tmp_path) as p:
        service = p.service
        assert service.layout == layout
        assert service.receivers["scripted"].ctx.storage_dir == layout.receiver_dir("scripted")
        assert service.processors[("p", "validate")].ctx.storage_dir == layout.processor_dir("validate", "p")
        runner = service.exporters["memory/eu"]
        assert runner.exporter.ctx.storage_dir == layout.exporter_dir("memory/eu")
        assert (layout.exporter_queue("memory/eu") / "queue.db").is_file()
        # A record that fails validation lands in the processor's store, where `dlq --processor` looks.
        await p.receiver().send([{"specversion": "1.0", "id": "x", "source": "s", "type": "t"}])
    assert layout.processor_deadletters("validate", "p").is_file()


async def test_unowned_queues_are_those_no_configured_exporter_owns(tmp_path):
    layout = StorageLayout(tmp_path)
    assert layout.exporter_queues() == {}
    async with run_pipeline(SERVICE_YAML, tmp_path):
        pass
    # memory/us has a memory queue: nothing on disk.
    assert layout.exporter_queues() == {"memory__eu": layout.exporter_queue("memory/eu")}
    assert layout.unowned_queues(["memory/eu", "memory/us"]) == {}
    assert layout.unowned_queues(["memory/us"]) == {"memory__eu": layout.exporter_queue("memory/eu")}


class TickReceiver(PullReceiver[ScheduleConfig]):
    """One event per window."""

    source = "test-layout"

    async def collect(self, window: Window) -> list[Any]:
        return [
            {"specversion": "1.0", "id": self.event_id(window, "k"), "source": self.source, "type": "tick",
             "subject": "s", "time": window.start_time, "data": {}}
        ]  # fmt: skip


class TickPlugin:
    @hookimpl
    def collector_receivers(self) -> list[ComponentSpec]:
        return [ComponentSpec("receiver", "tick", ScheduleConfig, TickReceiver)]


PULL_YAML = "receivers: {tick/a: {interval: 60s}}\nexporters: {memory: {batch: {period: 0.01}}}\n"


async def test_pull_receiver_keeps_its_watermark_where_the_layout_says(tmp_path):
    registry = testing_registry([("tick", TickPlugin())])
    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z; the first window is the last complete one, ending here
    async with run_pipeline(PULL_YAML, tmp_path, registry=registry, clock=FakeClock(start=t0 + 30)) as p:
        await p.exporter().wait_for(1)
    # Stopping finished the window's commit, watermark included.
    assert p.service.receivers["tick/a"].watermark == t0
    store = StateStore(StorageLayout(tmp_path).pull_state("tick/a"))
    try:
        assert store.get("watermark", "tick/a") == t0
    finally:
        store.close()


async def test_backfill_runs_on_its_own_storage_beside_the_live_one(tmp_path):
    from collector.cli.backfill import run_backfill

    registry = testing_registry([("tick", TickPlugin())])
    text = "receivers: {tick/a: {interval: 60s}}\n" + (
        "exporters: {memory: {queue: {kind: durable}, batch: {period: 0.01}}}\n"
        f"storage: {{directory: {tmp_path}}}\n"
        "service: {telemetry: {endpoint: null}, pipelines: {p: {receivers: [tick/a], exporters: [memory]}}}\n"
    )
    args = argparse.Namespace(
        receiver="tick/a", start="2026-01-01T00:00:00Z", end="2026-01-01T00:02:00Z",
        timeout=10.0, retries=0, no_progress=True,
    )  # fmt: skip
    assert await run_backfill(args, load_config(text, registry), registry) == 0
    layout = StorageLayout(tmp_path)
    (backfill,) = layout.backfills()
    assert re.fullmatch(r"tick__a-\d{8}T\d{6}Z", backfill.name)
    assert StorageLayout(backfill).exporter_queue("memory").is_dir()
    assert [d.name for d in tmp_path.iterdir()] == ["backfill"], "nothing of the live storage is touched"


async def test_a_receivers_dead_letters_land_in_its_directory_where_dlq_receiver_looks(tmp_path, capsys):
    layout = StorageLayout(tmp_path)
    async with run_pipeline(SERVICE_YAML, tmp_path) as p:
        sink = p.service.receivers["scripted"].ctx.dead_letters
        assert sink is not None
        malformed = {"key": "usage/2026-12-06.jsonl", "line": 7, "error": "Expecting ',' delimiter", "raw": "{x"}
        assert await asyncio.to_thread(sink.add, [malformed], "malformed") == 1
    from collector.cli.dlq import run_dlq

    registry = testing_registry()
    loaded = load_config(SERVICE_YAML + f"storage: {{directory: {tmp_path}}}\n", registry, source="<test>")

    def dlq(action: str, **extra: Any) -> int:
        args = argparse.Namespace(dlq_command=action, receiver="scripted", processor=None, exporter=None,
                                  ids=None, limit=50, json=True, **extra)  # fmt: skip
        return run_dlq(args, loaded, registry)

    assert dlq("list") == 0
    listed = capsys.readouterr().out
    assert "usage/2026-12-06.jsonl" in listed and "malformed" in listed
    assert dlq("replay") == 2
    assert "input it could not turn into events" in capsys.readouterr().err
    assert deadletters_in(layout.receiver_dir("scripted")).is_file()
