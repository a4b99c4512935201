"""collector-plugin-${name}: declares the `${name}` pull receiver.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, backfill), whatever the
configuration.  So it only *declares*: the config model and a factory.  The
implementation, and anything heavy it needs (an API client), is imported by
the factory, only when a configuration uses the receiver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collector.api import ComponentContext, ComponentSpec, ScheduleConfig, hookimpl
from pydantic import Field

if TYPE_CHECKING:
    from collector_plugin_${package}.receiver import ${class_name}Receiver


class ${class_name}Config(ScheduleConfig):
    """Usage per time window for each subject.

    Subclassing ScheduleConfig gives the receiver the schedule settings
    (interval or cron, offset, max_backfill, retry_initial, retry_max) that the
    pull-receiver framework reads; it already forbids unknown settings.
    """

    subjects: list[str] = Field(min_length=1, description="Customers (OpenMeter subjects) to report usage for.")
    event_type: str = Field("${name}", description="CloudEvents `type` of the events, the meter's event type.")
    source: str = Field("collector-plugin-${name}", description="CloudEvents `source`; part of every event id.")


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
            description="Reports usage per time window for each subject (a pull receiver).",
        )
    ]
