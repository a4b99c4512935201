"""Configuration of the ``runai`` receiver.

Imported at hook time (the model is part of the spec), so it stays light:
pydantic and the core's public API only, not aiohttp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from collector.api import Duration, FunctionMap, HttpUrl, ScheduleConfig, compile_expression
from collector_plugin_runai.metric_types import check as check_metric_types

#: What the API answers at most for one metrics call (numberOfSamples).
MAX_SAMPLES = 1000

DEFAULT_WORKLOAD_METRICS = [
    "GPU_ALLOCATION",
    "GPU_UTILIZATION",
    "GPU_MEMORY_USAGE_BYTES",
    "CPU_REQUEST_CORES",
    "CPU_USAGE_CORES",
    "CPU_MEMORY_REQUEST_BYTES",
    "CPU_MEMORY_USAGE_BYTES",
]
DEFAULT_POD_METRICS = ["GPU_UTILIZATION", "GPU_MEMORY_USAGE_BYTES", "CPU_USAGE_CORES", "CPU_MEMORY_USAGE_BYTES"]
SUBJECTS = ("project", "department", "cluster", "submitter", "workload")

Resource = Literal["workloads", "pods"]


def _workloads_only() -> list[Resource]:
    return ["workloads"]


class RunaiReceiverConfig(ScheduleConfig):
    """GPU, CPU and memory usage of Run:ai workloads and pods per time window (docs/components/runai-receiver.md)."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="Base URL of the Run:ai control plane, e.g. https://myorg.run.ai.")
    app_id: str = Field(min_length=1, description="Application (client) id of a Run:ai application token.")
    app_secret: SecretStr | None = Field(
        None, description="Its secret (use ${RUNAI_APP_SECRET}); never logged. Or app_secret_file."
    )
    app_secret_file: Path | None = Field(
        None, description="File holding the secret (a mounted Kubernetes Secret); read again when a token is needed."
    )
    resources: list[Resource] = Field(
        default_factory=_workloads_only,
        min_length=1,
        description="What to meter: workloads (one event per workload and window), pods (one per pod), or both.",
    )
    phases: list[str] = Field(
        default_factory=lambda: ["Running", "Degraded", "Deleting"],
        min_length=1,
        description="Active workload phases listed (server-side filter phase==X, one listing each). Finished "
        "workloads come from finished_phases.",
    )
    finished_phases: list[str] = Field(
        default_factory=lambda: ["Completed", "Failed"],
        description="Finished phases also listed, only for workloads whose completedAt is at or after the "
        "window's start (filterBy completedAt>=): without them a workload that finished before its last window "
        "was read would lose that window. Empty: none.",
    )
    workload_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_WORKLOAD_METRICS),
        min_length=1,
        description="Metric types read per workload (Run:ai WorkloadMetricType names; 9 per API call).",
    )
    pod_metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_POD_METRICS),
        min_length=1,
        description="Metric types read per pod (Run:ai PodMetricType names; workload-only names are refused).",
    )
    resolution: Duration = Field(
        15.0,
        gt=0,
        description="Time between samples asked for (numberOfSamples = window / resolution, at most 1000). "
        "Allocation changes are billed to this resolution.",
    )
    subject: Literal["project", "department", "cluster", "submitter", "workload"] = Field(
        "project", description="Which field is the event subject (the customer)."
    )
    max_concurrency: int = Field(8, gt=0, le=64, description="Metrics calls in flight at once.")
    page_size: int = Field(500, gt=0, le=500, description="Items per list page (the API's limit).")
    timeout: Duration = Field(30.0, gt=0, description="Time limit of every API call.")
    retries: int = Field(4, gt=0, le=20, description="Attempts per call for 429, 5xx and timeouts before the "
                         "window is retried as a whole.")  # fmt: skip
    offset: Duration = Field(
        60.0, ge=0, description="Wait this long after a window ends before reading it (metrics arrive late)."
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify the control plane's certificate.")
    insecure_skip_verify: bool = Field(False, description="Do not verify the certificate (tests only).")
    source: str = Field("runai", min_length=1, description="CloudEvent source; part of every event id.")
    mapping: str | None = Field(
        None,
        description="Mapping expression from a record (`this`, see docs/components/runai-receiver.md) and `meta` "
        "to a CloudEvent, or None to drop it. Unset: the default mapping.",
    )

    @field_validator("workload_metrics")
    @classmethod
    def _workload_names(cls, v: list[str]) -> list[str]:
        check_metric_types("workloads", v)
        return v

    @field_validator("pod_metrics")
    @classmethod
    def _pod_names(cls, v: list[str]) -> list[str]:
        check_metric_types("pods", v)
        return v

    @model_validator(mode="after")
    def _one_secret(self) -> RunaiReceiverConfig:
        if (self.app_secret is None) == (self.app_secret_file is None):
            raise ValueError("set app_secret or app_secret_file (exactly one)")
        if self.cron is None and (self.interval or 60.0) / self.resolution > MAX_SAMPLES:
            raise ValueError(
                f"resolution {self.resolution:g}s gives more than {MAX_SAMPLES} samples per window; raise it"
            )
        return self

    def check_with_functions(self, functions: FunctionMap) -> None:
        if self.mapping is not None:
            compile_expression(self.mapping, functions, path="mapping")

    def secrets(self) -> list[str]:
        """Values the log redactor masks."""
        return [self.app_secret.get_secret_value()] if self.app_secret is not None else []
