"""collector-plugin-prometheus: declares the ``prometheus`` pull receiver.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins (run, validate, schema, plugins, dlq), whatever the configuration.
So it only *declares*: the config model and a factory.  The receiver, and
aiohttp with it, is imported by the factory, only when a configuration uses it.
"""

from __future__ import annotations

from typing import Any

from collector.api import ComponentContext, ComponentSpec, Receiver, hookimpl
from collector_plugin_prometheus.config import PrometheusReceiverConfig, QueryConfig

__all__ = ["PrometheusReceiverConfig", "QueryConfig", "collector_receivers"]


def _make_receiver(ctx: ComponentContext, config: PrometheusReceiverConfig) -> Receiver[PrometheusReceiverConfig]:
    from collector_plugin_prometheus.receiver import PrometheusReceiver

    return PrometheusReceiver(ctx, config)


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "receiver",
            "prometheus",
            PrometheusReceiverConfig,
            _make_receiver,
            description="Evaluates PromQL per time window (watermarks, backfill, deterministic ids).",
        )
    ]
