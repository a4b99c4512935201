"""collector-plugin-runai: the ``runai`` pull receiver (NVIDIA Run:ai workloads and pods).

This module is the plugin's entry point: the collector imports it whenever it
loads plugins, whatever the configuration.  So it only *declares*: the config
model, a factory and the ``runai`` preset.  The receiver, and aiohttp with it,
is imported by the factory, only when a configuration uses it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from collector.api import ComponentContext, ComponentSpec, PresetSpec, Receiver, hookimpl
from collector_plugin_runai.config import RunaiReceiverConfig

__all__ = ["RunaiReceiverConfig", "collector_presets", "collector_receivers"]


def _make_receiver(ctx: ComponentContext, config: RunaiReceiverConfig) -> Receiver[RunaiReceiverConfig]:
    from collector_plugin_runai.receiver import RunaiReceiver

    return RunaiReceiver(ctx, config)


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "receiver",
            "runai",
            RunaiReceiverConfig,
            _make_receiver,
            description="GPU, CPU and memory usage of NVIDIA Run:ai workloads and pods per window, integrated.",
        )
    ]


@hookimpl
def collector_presets() -> list[PresetSpec]:
    text = resources.files(__name__).joinpath("presets/runai.yaml").read_text(encoding="utf-8")
    return [
        PresetSpec(
            "runai",
            text,
            "Run:ai workloads' GPU, CPU and memory usage to OpenMeter (RUNAI_* and OPENMETER_* variables).",
        )
    ]
