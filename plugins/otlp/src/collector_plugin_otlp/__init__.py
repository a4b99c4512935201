"""collector-plugin-otlp: declares the ``otlp`` receiver.

This module is the plugin's entry point, imported whenever the collector loads
plugins.  It only declares the receiver (config model and factory); grpc,
protobuf and the OpenTelemetry protos are imported by the factory, only when a
configuration uses the receiver.
"""

from __future__ import annotations

from typing import Any

from collector.api import ComponentContext, ComponentSpec, Receiver, hookimpl
from collector_plugin_otlp.config import OtlpReceiverConfig

__all__ = ["OtlpReceiverConfig", "collector_receivers"]


def _make_receiver(ctx: ComponentContext, config: OtlpReceiverConfig) -> Receiver[OtlpReceiverConfig]:
    from collector_plugin_otlp.receiver import OtlpReceiver

    return OtlpReceiver(ctx, config)


def _single_process(config: OtlpReceiverConfig) -> str | None:
    """The cumulative-to-delta state must see every point of a series: worker processes would each keep
    their own, and an export reaching a worker that never saw its series would bill it again."""
    if config.metrics.cumulative_to_delta:
        return (
            "metrics.cumulative_to_delta keeps the last value of each series, which one process must own "
            "(an export reaching another worker would count the series again); set it to false, with SDKs "
            "exporting delta temporality, to run this receiver in every worker"
        )
    return None


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "receiver",
            "otlp",
            OtlpReceiverConfig,
            _make_receiver,
            description="OpenTelemetry logs, metrics and traces (OTLP/gRPC and OTLP/HTTP) as records for mappings.",
            worker_safe=True,  # every worker process listens on the ports (SO_REUSEPORT)
            single_process=_single_process,
        )
    ]
