"""collector-plugin-${name}: declares the `${name}` processor.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, dlq), whatever the configuration.
So it only *declares*: the config model and a factory.  The
implementation, and anything heavy it needs, is imported by the factory, only
when a configuration uses the processor.
"""

from __future__ import annotations

from typing import Any

from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec
from pydantic import BaseModel, ConfigDict, Field


class ${class_name}Config(BaseModel):
    """Multiply a numeric member of `data`, e.g. to turn milliseconds into seconds."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    field: str = Field(description="Member of `data` to read, e.g. duration_ms.")
    factor: float = Field(1.0, description="Multiply the value by this.")
    target: str | None = Field(None, description="Member of `data` to write; the same as `field` when unset.")
    decimals: int | None = Field(None, ge=0, le=15, description="Round the result to this many decimals.")


def _make_processor(ctx: Any, config: ${class_name}Config) -> Any:
    from collector_plugin_${package}.processor import ${class_name}Processor

    return ${class_name}Processor(ctx, config)


@hookimpl
def collector_processors() -> list[ComponentSpec]:
    return [
        ComponentSpec(
            "processor",
            "${name}",
            ${class_name}Config,
            _make_processor,
            description="Multiplies a numeric data member (unit conversion).",
        )
    ]
