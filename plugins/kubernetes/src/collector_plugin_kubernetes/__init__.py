"""collector-plugin-kubernetes: the ``kubernetes`` pull receiver and the ``kubernetes_lease`` coordinator.

This module is the plugin's entry point: the collector imports it whenever it
loads plugins, whatever the configuration.  So it only *declares*: config
models, factories and the ``resource_quantity`` mapping function.  The
official ``kubernetes`` client is imported by the factories, only when a
configuration uses them.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from collector.api import ComponentContext, ComponentSpec, Coordinator, FunctionSpec, PresetSpec, Receiver, hookimpl
from collector_plugin_kubernetes.config import KubernetesReceiverConfig
from collector_plugin_kubernetes.quantity import resource_quantity

__all__ = [
    "KubernetesReceiverConfig",
    "collector_coordinators",
    "collector_functions",
    "collector_presets",
    "collector_receivers",
    "resource_quantity",
]


def _make_receiver(ctx: ComponentContext, config: KubernetesReceiverConfig) -> Receiver[KubernetesReceiverConfig]:
    from collector_plugin_kubernetes.receiver import KubernetesReceiver

    return KubernetesReceiver(ctx, config)


def _make_lease(ctx: ComponentContext, config: Any) -> Coordinator[Any]:
    from collector_plugin_kubernetes.lease import LeaseCoordinator

    return LeaseCoordinator(ctx, config)


@hookimpl
def collector_receivers() -> list[ComponentSpec[Any]]:
    return [
        ComponentSpec(
            "receiver",
            "kubernetes",
            KubernetesReceiverConfig,
            _make_receiver,
            description="Pods' CPU, memory and GPU requests x seconds run per window (nodes and volumes optional).",
        )
    ]


@hookimpl
def collector_coordinators() -> list[ComponentSpec[Any]]:
    from collector_plugin_kubernetes.lease import LeaseConfig

    return [
        ComponentSpec(
            "coordinator",
            "kubernetes_lease",
            LeaseConfig,
            _make_lease,
            description="One replica leads the pull receivers, elected through a coordination.k8s.io Lease.",
        )
    ]


@hookimpl
def collector_functions() -> list[FunctionSpec]:
    return [
        FunctionSpec(
            "resource_quantity",
            resource_quantity,
            "A Kubernetes quantity as a number: every suffix (m, k, M, G, Ki, Mi, Gi, ...) and exponent.",
            examples=('resource_quantity("500m") == 0.5', 'resource_quantity("1Gi") == 1073741824'),
        )
    ]


@hookimpl
def collector_presets() -> list[PresetSpec]:
    text = resources.files(__name__).joinpath("presets/kubernetes.yaml").read_text(encoding="utf-8")
    return [
        PresetSpec(
            "kubernetes",
            text,
            "Pods' CPU, memory and GPU usage to OpenMeter, one replica leading through a Lease "
            "(COLLECTOR_K8S_* and OPENMETER_* variables).",
        )
    ]
