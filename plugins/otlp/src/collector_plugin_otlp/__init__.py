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
        )
    ]
