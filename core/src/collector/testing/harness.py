"""Run one pipeline from a YAML snippet, in-process, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.clock import Clock
from collector.components import Component
from collector.config import load_config
from collector.plugins import PluginSelection, Registry, load_registry
from collector.runtime.service import Service
from collector.testing.components import MemoryExporter, ScriptedReceiver, TestingPlugin


def testing_registry(extra_plugins: Iterable[tuple[str, object]] = (), *, installed: bool = False) -> Registry:
    """Built-ins plus the testing components (plus installed plugins if asked)."""
    selection = PluginSelection.from_env() if installed else PluginSelection(disabled=True)
    return load_registry(selection, extra_plugins=[("testing", TestingPlugin()), *extra_plugins])


testing_registry.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@dataclass
class RunningPipeline:
    service: Service

    def receiver(self, rid: str = "scripted") -> ScriptedReceiver:
        rec = self.service.receivers[rid]
        assert isinstance(rec, ScriptedReceiver), f"{rid} is not a scripted receiver"
        return rec

    def exporter(self, eid: str = "memory") -> MemoryExporter:
        exp = self.service.exporters[eid].exporter
        assert isinstance(exp, MemoryExporter), f"{eid} is not a memory exporter"
        return exp

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` (as ``/metrics`` shows it) whose labels include ``labels``.

        ``p.metric("collector_exporter_retries_total", exporter="acme")``; 0.0 when there is none yet.
        """
        total = 0.0
        for family in self.service.telemetry.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def component(self, cid: str) -> Component[Any]:
        """The receiver, exporter or processor with id ``cid`` (e.g. to read its ``health()``)."""
        if cid in self.service.receivers:
            return self.service.receivers[cid]
        if cid in self.service.exporters:
            return self.service.exporters[cid].exporter
        for (_pipeline, pid), processor in self.service.processors.items():
            if pid == cid:
                return processor
        raise KeyError(f"no component {cid!r} in this pipeline")


@asynccontextmanager
async def run_pipeline(
    yaml_text: str,
    storage_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    clock: Clock | None = None,
    drain_timeout: float = 5.0,
) -> AsyncIterator[RunningPipeline]:
    """Start a service from ``yaml_text`` with ``storage.directory`` set to ``storage_dir``.

    When the snippet has no ``service`` section, the receivers, processors and
    exporters it defines are wired into one pipeline called ``test``.  The
    admin server is not started.
    """
    import yaml

    data = yaml.safe_load(yaml_text) or {}
    data.setdefault("storage", {})["directory"] = str(storage_dir)
    service_cfg = data.setdefault("service", {})
    service_cfg.setdefault("telemetry", {})["endpoint"] = None
    if "pipelines" not in service_cfg:
        service_cfg["pipelines"] = {
            "test": {
                "receivers": list(data.get("receivers") or {}),
                "processors": list(data.get("processors") or {}),
                "exporters": list(data.get("exporters") or {}),
            }
        }
    registry = registry or testing_registry()
    loaded = load_config(yaml.safe_dump(data), registry, source="<test>", environ=environ)
    service = Service(loaded, registry, clock=clock)
    await service.start()
    try:
        yield RunningPipeline(service)
    finally:
        await service.stop(drain_timeout)


@contextmanager
def service_in_thread(yaml_text: str, storage: Path, **kwargs: Any) -> Iterator[RunningPipeline]:
    """:func:`run_pipeline` on its own event loop in a daemon thread, for synchronous tests.

    Hypothesis tests and tests that drive a receiver with blocking clients
    cannot await; they talk to the running service from the test's thread.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="collector-service-under-test", daemon=True)
    thread.start()
    cm = run_pipeline(yaml_text, storage, **kwargs)
    try:
        pipeline = asyncio.run_coroutine_threadsafe(cm.__aenter__(), loop).result(30)
        try:
            yield pipeline
        finally:
            asyncio.run_coroutine_threadsafe(cm.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
