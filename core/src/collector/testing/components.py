"""In-memory components for tests, registered through the normal hooks.

* ``memory`` exporter: keeps every exported event; can be told to fail.
* ``scripted`` receiver: emits what the test hands it, returning the outcome
  the real receivers see (committed, or the error they would turn into a status).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from collector.components import Acceptance, Event, Exporter, ExporterConfig, Meta, QueueSettings, Receiver
from collector.events import OPENMETER
from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec
from collector.testing.waiting import eventually


def _memory_queue() -> QueueSettings:
    return QueueSettings(kind="memory")


class MemoryExporterConfig(ExporterConfig):
    """Keeps exported events in memory (tests only)."""

    queue: QueueSettings = Field(default_factory=_memory_queue, description="Memory queue by default.")


class MemoryExporter(Exporter[MemoryExporterConfig]):
    """Records batches.  ``fail_with`` scripts failures: a list of exceptions
    (or callables returning one) raised by the next export calls, in order."""

    instances: dict[str, MemoryExporter] = {}
    # It stands in for the OpenMeter exporter in tests, so a pipeline to it
    # refuses what production would refuse.
    requires = (OPENMETER,)

    def __init__(self, ctx: Any, config: MemoryExporterConfig) -> None:
        super().__init__(ctx, config)
        self.batches: list[list[Event]] = []
        self.fail_with: list[BaseException | Callable[[list[Event]], BaseException | None]] = []
        self._lock = threading.Lock()
        MemoryExporter.instances[ctx.id] = self

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return [e for b in self.batches for e in b]

    async def export(self, events: list[Event]) -> None:
        with self._lock:
            failure = self.fail_with.pop(0) if self.fail_with else None
        if callable(failure) and not isinstance(failure, BaseException):
            failure = failure(events)
        if failure is not None:
            raise failure
        with self._lock:
            self.batches.append(list(events))

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        """Wait until at least ``count`` events arrived (they arrive on another thread)."""

        def arrived() -> bool:
            got = len(self.events)
            assert got >= count, f"{self.id}: expected {count} events, got {got}"
            return True

        await eventually(arrived, timeout=timeout)
        return self.events


class ScriptedReceiverConfig(BaseModel):
    """A receiver driven by the test (tests only)."""

    model_config = ConfigDict(extra="forbid")
    batches: list[list[dict[str, Any]]] = Field(default_factory=list, description="Batches emitted at start, in order.")


class ScriptedReceiver(Receiver[ScriptedReceiverConfig]):
    instances: dict[str, ScriptedReceiver] = {}

    def __init__(self, ctx: Any, config: ScriptedReceiverConfig) -> None:
        super().__init__(ctx, config)
        ScriptedReceiver.instances[ctx.id] = self

    async def _start(self) -> None:
        for batch in self.config.batches:
            await self.emit(batch)

    async def send(self, events: list[Event], meta: Meta | None = None, *, partial: bool = False) -> Acceptance:
        """Emit like a real receiver; raises what the pipeline raised."""
        return await self.emit(events, meta, partial=partial)


class TestingPlugin:
    """The plugin object the testing kit registers in-process."""

    __test__ = False  # not a pytest test class

    @hookimpl
    def collector_receivers(self) -> list[ComponentSpec]:
        return [
            ComponentSpec(
                "receiver",
                "scripted",
                ScriptedReceiverConfig,
                ScriptedReceiver,
                description="Test receiver driven from the test.",
            )
        ]

    @hookimpl
    def collector_exporters(self) -> list[ComponentSpec]:
        return [
            ComponentSpec(
                "exporter",
                "memory",
                MemoryExporterConfig,
                MemoryExporter,
                description="Test exporter keeping events in memory.",
            )
        ]
