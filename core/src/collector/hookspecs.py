"""Hook specifications: how a plugin tells the collector what it provides.

A plugin is any importable module (or object) with functions marked
``@hookimpl`` whose names match the specs below.  It is found through the
``collector`` entry-point group::

    # pyproject.toml of collector-plugin-hello
    [project.entry-points.collector]
    hello = "collector_plugin_hello"

Hooks only *declare*: they return specs (a type name, a pydantic config model
and a factory).  They must not do I/O and should not import heavy libraries;
put those imports inside the factory, which runs only when a configuration
actually uses the component.  Business code never calls these hooks directly:
:class:`collector.plugins.Registry` does, one plugin at a time, so that one
broken plugin cannot take the others down.

Plugins import everything they need from :mod:`collector.api` (the examples
below do); every example in this module is executed by
``core/tests/test_hookspecs.py``.
"""

from __future__ import annotations

from typing import Any

import pluggy

from collector.specs import ComponentSpec, FunctionSpec, PresetSpec

PROJECT = "collector"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def collector_receivers() -> list[ComponentSpec[Any]]:
    """Declare receiver types: components that bring data in.

    Example::

        from pydantic import BaseModel, ConfigDict, Field
        from collector.api import ComponentSpec, Receiver, hookimpl

        class TickerConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")
            count: int = Field(3, description="How many events to emit at start.")

        class Ticker(Receiver):
            async def _start(self) -> None:
                for i in range(self.config.count):
                    await self.emit([{"specversion": "1.0", "id": str(i), "source": "ticker",
                                      "type": "tick", "subject": "demo"}])

        @hookimpl
        def collector_receivers():
            return [ComponentSpec("receiver", "ticker", TickerConfig,
                                  lambda ctx, cfg: Ticker(ctx, cfg),
                                  description="Emits a few ticks at start.")]
    """
    raise NotImplementedError


@hookspec
def collector_processors() -> list[ComponentSpec[Any]]:
    """Declare processor types: components that transform batches before the queue.

    Example::

        from pydantic import BaseModel, ConfigDict, Field
        from collector.api import ComponentSpec, Processor, hookimpl

        class UpperConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")
            field: str = Field("subject", description="Top-level field to upper-case.")

        class Upper(Processor):
            async def process(self, events, meta):
                key = self.config.field
                return [{**e, key: str(e.get(key, "")).upper()} for e in events]

        @hookimpl
        def collector_processors():
            return [ComponentSpec("processor", "upper", UpperConfig,
                                  lambda ctx, cfg: Upper(ctx, cfg))]
    """
    raise NotImplementedError


@hookspec
def collector_exporters() -> list[ComponentSpec[Any]]:
    """Declare exporter types: components that deliver batches somewhere.

    An exporter's config model should subclass
    :class:`collector.components.ExporterConfig` so that it inherits the
    queue, batching, retry and timeout settings every exporter shares.

    Example::

        from pydantic import Field
        from collector.api import ComponentSpec, Exporter, ExporterConfig, hookimpl

        class NullConfig(ExporterConfig):
            note: str = Field("", description="Free text, ignored.")

        class Null(Exporter):
            async def export(self, events):
                return None  # accept and forget

        @hookimpl
        def collector_exporters():
            return [ComponentSpec("exporter", "null", NullConfig,
                                  lambda ctx, cfg: Null(ctx, cfg))]
    """
    raise NotImplementedError


@hookspec
def collector_coordinators() -> list[ComponentSpec[Any]]:
    """Declare coordinator types: who leads pull receivers in a group of replicas.

    Example::

        from pydantic import BaseModel, ConfigDict
        from collector.api import ComponentSpec, Coordinator, hookimpl

        class NeverConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")

        class Never(Coordinator):
            def is_leader(self) -> bool:
                return False

        @hookimpl
        def collector_coordinators():
            return [ComponentSpec("coordinator", "never", NeverConfig,
                                  lambda ctx, cfg: Never(ctx, cfg))]
    """
    raise NotImplementedError


@hookspec
def collector_functions() -> list[FunctionSpec]:
    """Declare functions that mapping expressions may call.

    Example::

        from collector.api import FunctionSpec, hookimpl

        def cents(amount: float) -> int:
            return round(amount * 100)

        @hookimpl
        def collector_functions():
            return [FunctionSpec("cents", cents, "Dollars to integer cents.")]
    """
    raise NotImplementedError


@hookspec
def collector_presets() -> list[PresetSpec]:
    """Declare presets: named configurations users start with ``collector run --preset NAME``.

    A preset that uses the plugin's components belongs in the plugin, so that
    it exists exactly when they do.  Built-in preset names win over a plugin's.

    Example::

        from collector.api import PresetSpec, hookimpl

        TEXT = (
            "{receivers: {http: {}}, exporters: {debug: {}}, "
            "service: {pipelines: {events: {receivers: [http], exporters: [debug]}}}}"
        )

        @hookimpl
        def collector_presets():
            return [PresetSpec("http-debug", TEXT, "HTTP intake printed to stdout.")]
    """
    raise NotImplementedError
