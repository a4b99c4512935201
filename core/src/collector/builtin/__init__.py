"""Components shipped with the core.

They register through the same hooks as third-party plugins; this module only
declares them.  Implementations are imported by the factories, when a
configuration uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec, FunctionSpec

if TYPE_CHECKING:
    from collector.builtin.debug import DebugExporterConfig
    from collector.builtin.http.config import HttpReceiverConfig
    from collector.builtin.local_coordinator import LocalCoordinatorConfig
    from collector.builtin.openmeter.config import OpenMeterExporterConfig
    from collector.components import ComponentContext, Coordinator, Exporter, Receiver


def _http_receiver(ctx: ComponentContext, cfg: HttpReceiverConfig) -> Receiver[HttpReceiverConfig]:
    from collector.builtin.http.receiver import HttpReceiver

    return HttpReceiver(ctx, cfg)


def _debug_exporter(ctx: ComponentContext, cfg: DebugExporterConfig) -> Exporter[DebugExporterConfig]:
    from collector.builtin.debug import DebugExporter

    return DebugExporter(ctx, cfg)


def _openmeter_exporter(ctx: ComponentContext, cfg: OpenMeterExporterConfig) -> Exporter[OpenMeterExporterConfig]:
    from collector.builtin.openmeter.exporter import OpenMeterExporter

    return OpenMeterExporter(ctx, cfg)


def _local_coordinator(ctx: ComponentContext, cfg: LocalCoordinatorConfig) -> Coordinator[LocalCoordinatorConfig]:
    from collector.components import Coordinator

    return Coordinator(ctx, cfg)


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    from collector.builtin.http.config import HttpReceiverConfig

    return [
        ComponentSpec(
            "receiver",
            "http",
            HttpReceiverConfig,
            _http_receiver,
            description="CloudEvents over HTTP: the OpenMeter ingest API (v1 and v3) and SDK passthrough.",
            worker_safe=True,  # every worker process listens on the port (SO_REUSEPORT)
        )
    ]


def _lazy(module: str, cls: str) -> Any:
    """A factory that imports the implementation only when a config uses it."""

    def factory(ctx: Any, cfg: Any) -> Any:
        from importlib import import_module

        return getattr(import_module(module), cls)(ctx, cfg)

    factory.__qualname__ = f"lazy({module}.{cls})"
    return factory


# Processors that keep state only one process may own: dedupe remembers the ids it
# saw, aggregate holds open windows (two workers would each emit a window with
# the same deterministic id, and OpenMeter would keep one).  Refused in a
# pipeline that worker processes run (docs/operations.md "Worker processes").
_SINGLE_PROCESS = {"dedupe", "aggregate"}

# (type, config module, config class, implementation class, description)
_PROCESSORS: list[tuple[str, str, str, str, str]] = [
    (
        "mapping",
        "mapping",
        "MappingConfig",
        "MappingProcessor",
        "Turn any record into a CloudEvent with an expression.",
    ),
    ("filter", "filter", "FilterConfig", "FilterProcessor", "Keep the records for which a condition holds."),
    (
        "validate",
        "validate",
        "ValidateConfig",
        "ValidateProcessor",
        "Check records against OpenMeter's event rules and, optionally, a JSON Schema for data.",
    ),
    ("attributes", "attributes", "AttributesConfig", "AttributesProcessor", "Set, rename and delete fields."),
    (
        "ensure_id",
        "ensure_id",
        "EnsureIdConfig",
        "EnsureIdProcessor",
        "Give records a deterministic id, and a time, when they lack one.",
    ),
    ("dedupe", "dedupe", "DedupeConfig", "DedupeProcessor", "Drop events whose key was already seen within a window."),
    (
        "aggregate",
        "aggregate",
        "AggregateConfig",
        "AggregateProcessor",
        "Sum and count events per group over tumbling time windows, one event per group and window.",
    ),
]


@hookimpl
def collector_processors() -> list[ComponentSpec[Any]]:
    from importlib import import_module

    specs: list[ComponentSpec[Any]] = []
    for type_name, module, config_cls, impl_cls, description in _PROCESSORS:
        mod = f"collector.builtin.processors.{module}"
        config = getattr(import_module(mod), config_cls)
        specs.append(
            ComponentSpec(
                "processor",
                type_name,
                config,
                _lazy(mod, impl_cls),
                description=description,
                worker_safe=type_name not in _SINGLE_PROCESS,
            )
        )
    return specs


@hookimpl
def collector_exporters() -> list[ComponentSpec[Any]]:
    from collector.builtin.debug import DebugExporterConfig
    from collector.builtin.openmeter.config import OpenMeterExporterConfig

    return [
        ComponentSpec(
            "exporter",
            "debug",
            DebugExporterConfig,
            _debug_exporter,
            description="Writes events to stdout or a JSON-lines file.",
            worker_safe=True,  # a file is opened for append: each batch lands whole
        ),
        ComponentSpec(
            "exporter",
            "openmeter",
            OpenMeterExporterConfig,
            _openmeter_exporter,
            description="Delivers CloudEvents to OpenMeter (cloud, self-hosted or Kong Konnect).",
            worker_safe=True,
        ),
    ]


@hookimpl
def collector_coordinators() -> list[ComponentSpec[Any]]:
    from collector.builtin.local_coordinator import LocalCoordinatorConfig

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
