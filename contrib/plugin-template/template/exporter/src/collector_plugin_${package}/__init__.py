"""collector-plugin-${name}: declares the `${name}` exporter.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, dlq), whatever the configuration.
So it only *declares*: the config model and a factory.  The
implementation, and anything heavy it needs (an HTTP or cloud client), is
imported by the factory, only when a configuration uses the exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from collector.api import ComponentContext, ComponentSpec, ExporterConfig, hookimpl
from pydantic import Field

if TYPE_CHECKING:
    from collector_plugin_${package}.exporter import ${class_name}Exporter


class ${class_name}Config(ExporterConfig):
    """Append delivered events to a JSON-lines file.

    Subclassing ExporterConfig gives the exporter the settings every exporter
    shares (queue, batch, retry, max_in_flight, timeout); it already forbids
    unknown settings.
    """

    path: Path = Field(description="File to append events to, one JSON object a line. Its directory must exist.")


def _make_exporter(ctx: ComponentContext, config: ${class_name}Config) -> ${class_name}Exporter:
    from collector_plugin_${package}.exporter import ${class_name}Exporter

    return ${class_name}Exporter(ctx, config)


@hookimpl
def collector_exporters() -> list[ComponentSpec[${class_name}Config]]:
    return [
        ComponentSpec(
            "exporter",
            "${name}",
            ${class_name}Config,
            _make_exporter,
            description="Appends delivered events to a JSON-lines file.",
        )
    ]
