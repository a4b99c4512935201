"""collector-plugin-${name}: declares the `${name}` processor.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, dlq), whatever the configuration.
So it only *declares*: the config model and a factory.  The
implementation, and anything heavy it needs, is imported by the factory, only
when a configuration uses the processor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.api import ComponentContext, ComponentSpec, hookimpl
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from collector_plugin_${package}.processor import ${class_name}Processor


class ${class_name}Config(BaseModel):
    """Multiply a numeric member of `data`, e.g. to turn milliseconds into seconds."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    field: str = Field(description="Member of `data` to read, e.g. duration_ms.")
    factor: float = Field(1.0, description="Multiply the value by this.")
    target: str | None = Field(None, description="Member of `data` to write; the same as `field` when unset.")
    decimals: int | None = Field(None, ge=0, le=15, description="Round the result to this many decimals.")


def _make_processor(ctx: ComponentContext, config: ${class_name}Config) -> ${class_name}Processor:
    from collector_plugin_${package}.processor import ${class_name}Processor

    return ${class_name}Processor(ctx, config)


@hookimpl
def collector_processors() -> list[ComponentSpec[${class_name}Config]]:
    return [
        ComponentSpec(
            "processor",
            "${name}",
            ${class_name}Config,
            _make_processor,
            description="Multiplies a numeric data member (unit conversion).",
        )
    ]
