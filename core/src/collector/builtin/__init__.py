"""Components shipped with the core.

They register through the same hooks as third-party plugins; this module only
declares them.  Implementations are imported by the factories, when a
configuration uses them.
"""

from __future__ import annotations

from typing import Any

from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec, FunctionSpec


def _http_receiver(ctx: Any, cfg: Any) -> Any:
    from collector.builtin.http.receiver import HttpReceiver

    return HttpReceiver(ctx, cfg)


def _debug_exporter(ctx: Any, cfg: Any) -> Any:
    from collector.builtin.debug import DebugExporter

    return DebugExporter(ctx, cfg)


def _openmeter_exporter(ctx: Any, cfg: Any) -> Any:
    from collector.builtin.openmeter.exporter import OpenMeterExporter

    return OpenMeterExporter(ctx, cfg)


def _local_coordinator(ctx: Any, cfg: Any) -> Any:
    from collector.components import Coordinator

    return Coordinator(ctx, cfg)


@hookimpl
def collector_receivers() -> list[ComponentSpec]:
    from collector.builtin.http.config import HttpReceiverConfig

    return [
        ComponentSpec(
            "receiver",
            "http",
            HttpReceiverConfig,
            _http_receiver,
            description="CloudEvents over HTTP: the OpenMeter ingest API (v1 and v3) and SDK passthrough.",
        )
    ]


@hookimpl
def collector_exporters() -> list[ComponentSpec]:
    from collector.builtin.debug import DebugExporterConfig
    from collector.builtin.openmeter.config import OpenMeterExporterConfig

    return [
        ComponentSpec(
            "exporter",
            "debug",
            DebugExporterConfig,
            _debug_exporter,
            description="Writes events to stdout or a JSON-lines file.",
        ),
        ComponentSpec(
            "exporter",
            "openmeter",
            OpenMeterExporterConfig,
            _openmeter_exporter,
            description="Delivers CloudEvents to OpenMeter (cloud, self-hosted or Kong Konnect).",
        ),
    ]


@hookimpl
def collector_coordinators() -> list[ComponentSpec]:
    from collector.builtin.local import LocalCoordinatorConfig

    return [
        ComponentSpec(
            "coordinator",
            "local",
            LocalCoordinatorConfig,
            _local_coordinator,
            description="This replica always leads (the default).",
        )
    ]


@hookimpl
def collector_functions() -> list[FunctionSpec]:
    from collector.functions import function_specs

    return function_specs()
