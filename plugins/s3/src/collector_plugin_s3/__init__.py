"""collector-plugin-s3: the ``s3`` receiver (usage files in S3-compatible storage) and the ``s3`` archive exporter.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins, whatever the configuration.  So it only *declares*: config
models and factories.  boto3 is imported by the factories, only when a
configuration uses them.
"""

from __future__ import annotations

from typing import Any

from collector.api import ComponentContext, ComponentSpec, Exporter, Receiver, hookimpl
from collector_plugin_s3.config import S3ReceiverConfig
from collector_plugin_s3.exporter import S3ExporterConfig

__all__ = ["S3ExporterConfig", "S3ReceiverConfig", "collector_exporters", "collector_receivers"]


def _make_receiver(ctx: ComponentContext, config: S3ReceiverConfig) -> Receiver[S3ReceiverConfig]:
    from collector_plugin_s3.receiver import S3Receiver

    return S3Receiver(ctx, config)


def _make_exporter(ctx: ComponentContext, config: S3ExporterConfig) -> Exporter[S3ExporterConfig]:
    from collector_plugin_s3.exporter import S3Exporter

    return S3Exporter(ctx, config)


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "receiver",
            "s3",
            S3ReceiverConfig,
            _make_receiver,
            description="Usage files (JSON lines, JSON, CSV, gzip) from S3-compatible storage, once per record.",
        )
    ]


@hookimpl
def collector_exporters() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "exporter",
            "s3",
            S3ExporterConfig,
            _make_exporter,
            description="An archive: delivered events as gzip JSON-lines objects partitioned by hour.",
            worker_safe=True,  # object keys are content digests: two workers cannot collide
        )
    ]
