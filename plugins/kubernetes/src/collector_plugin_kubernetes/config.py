"""Configuration of the ``kubernetes`` receiver.

Imported at hook time (the model is part of the spec), so it stays light:
pydantic and the core's public API only, not the kubernetes client.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector.api import Duration, FunctionMap, ScheduleConfig, compile_expression
from collector_plugin_kubernetes.client import ClientConfig

#: Extended resources counted as GPUs (``gpu_seconds``) besides the configured ones.
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")

_RESOURCE_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_FALLBACK = re.compile(r"^(none|namespace|name|label:.+|annotation:.+)$")


class SubjectConfig(BaseModel):
    """Who is billed for a pod (or node, or volume)."""

    model_config = ConfigDict(extra="forbid")

    annotation: str | None = Field(
        "openmeter.io/subject", description="Annotation holding the subject; checked first. null: do not look."
    )
    label: str | None = Field(
        "openmeter.io/subject", description="Label holding the subject; checked second. null: do not look."
    )
    fallback: str = Field(
        "none",
        description="When neither is set: `none` (the object is not billed; it is counted in "
        "collector_kubernetes_unbilled_total and logged), `namespace` (the pod's namespace), `name` (the pod's, "
        "node's or volume's name), `label:<key>` or `annotation:<key>`.",
    )

    @field_validator("fallback")
    @classmethod
    def _check_fallback(cls, v: str) -> str:
        if not _FALLBACK.match(v):
            raise ValueError(f"{v!r}: use none, namespace, name, label:<key> or annotation:<key>")
        return v


class UsageConfig(BaseModel):
    """Sampled actual usage from metrics.k8s.io (metrics-server)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Sample pod CPU and memory usage from metrics.k8s.io during each window and add "
        "cpu_usage_core_seconds_sampled / memory_usage_byte_seconds_sampled (average of the samples x seconds run).",
    )
    sample_interval: Duration = Field(30.0, gt=0, description="Time between samples (metrics-server resolution).")


class KubernetesReceiverConfig(ClientConfig, ScheduleConfig):
    """Exact pod CPU, memory and GPU requests x seconds run, per window (docs/components/kubernetes-receiver.md)."""

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch; each is watched on its own (no cluster-wide cache). Empty: all namespaces.",
    )
    label_selector: str | None = Field(
        None, description="Label selector passed to the API server (e.g. team in (a,b),!batch). No default."
    )
    field_selector: str | None = Field(
        None, description="Field selector passed to the API server (e.g. spec.nodeName=gpu-1). No default."
    )
    subject: SubjectConfig = Field(default_factory=SubjectConfig, description="Who is billed.")
    data_annotation_prefix: str = Field(
        "data.openmeter.io/",
        description="Annotations under this prefix are added to the event data, the prefix removed "
        "(data.openmeter.io/project: x gives data.project = x).",
    )
    labels: bool = Field(True, description="Include the object's labels in the event data (data.labels).")
    extended_resources: list[str] = Field(
        default_factory=list,
        description="Extended resources to meter besides cpu, memory, nvidia.com/gpu and amd.com/gpu "
        "(e.g. example.com/fpga); each gets a <name>_seconds field.",
    )
    gpu_resources: list[str] = Field(
        default_factory=list,
        description="Further extended resources counted in gpu_seconds (nvidia.com/gpu and amd.com/gpu always are).",
    )
    nodes: bool = Field(False, description="Also meter nodes: capacity x seconds (needs list/watch on nodes).")
    persistent_volumes: bool = Field(False, description="Also meter PersistentVolumes: capacity x seconds.")
    persistent_volume_claims: bool = Field(
        False, description="Also meter PersistentVolumeClaims while Bound: capacity x seconds."
    )
    usage: UsageConfig = Field(default_factory=UsageConfig, description="Sampled actual usage (metrics.k8s.io).")
    offset: Duration = Field(
        15.0,
        ge=0,
        description="Wait this long after a window ends before billing it, for late status updates from the "
        "kubelet; the watch must also be complete through window end + offset.",
    )
    source: str = Field("kubernetes", min_length=1, description="CloudEvent source; part of every event id.")
    mapping: str | None = Field(
        None,
        description="Mapping expression from a record (`this`, see docs/components/kubernetes-receiver.md) and `meta` "
        "(the window) to a CloudEvent, or None to drop it. Unset: the default mapping. specversion, id, source, "
        "type and time left out are filled with the defaults.",
    )
    watch_timeout: Duration = Field(
        300.0, gt=0, description="Server-side timeout of one watch request; the watch resumes from where it was."
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, v: object) -> object:
        # "a,b" from an environment variable (the kubernetes preset) is a list; "" is all namespaces.
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("label_selector", "field_selector", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("extended_resources", "gpu_resources")
    @classmethod
    def _check_resources(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _RESOURCE_NAME.match(name):
                raise ValueError(f"{name!r} is not a Kubernetes resource name (e.g. example.com/fpga)")
        return v

    def check_with_functions(self, functions: FunctionMap) -> None:
        if self.mapping is not None:
            compile_expression(self.mapping, functions, path="mapping")

    def metered_resources(self) -> tuple[str, ...]:
        """Every extended resource that gets a ``<name>_seconds`` field, GPUs first."""
        out: list[str] = []
        for name in (*GPU_RESOURCES, *self.gpu_resources, *self.extended_resources):
            if name not in out:
                out.append(name)
        return tuple(out)

    def gpu_names(self) -> frozenset[str]:
        return frozenset((*GPU_RESOURCES, *self.gpu_resources))
