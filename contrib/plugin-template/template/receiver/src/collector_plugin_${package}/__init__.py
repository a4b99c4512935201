"""collector-plugin-${name}: declares the `${name}` receiver.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, dlq), whatever the configuration.
So it only *declares*: the config model and a factory.  The
implementation, and anything heavy it needs, is imported by the factory, only
when a configuration uses the receiver.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from collector.api import ComponentContext, ComponentSpec, Duration, hookimpl
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from collector_plugin_${package}.receiver import ${class_name}Receiver


class ${class_name}Config(BaseModel):
    """Take CloudEvents from JSON-lines files that other programs drop into a directory."""

    model_config = ConfigDict(extra="forbid")  # a misspelt setting is an error, not ignored

    directory: Path = Field(description="Spool directory: every `*.jsonl` file in it is a batch of events.")
    poll_interval: Duration = Field(1.0, gt=0, description="How often to look for new files (1s, 500ms).")


def _make_receiver(ctx: ComponentContext, config: ${class_name}Config) -> ${class_name}Receiver:
    from collector_plugin_${package}.receiver import ${class_name}Receiver

    return ${class_name}Receiver(ctx, config)


@hookimpl
def collector_receivers() -> list[ComponentSpec[${class_name}Config]]:
    return [
        ComponentSpec(
            "receiver",
            "${name}",
            ${class_name}Config,
            _make_receiver,
            description="Takes CloudEvents from JSON-lines files in a spool directory.",
        )
    ]
