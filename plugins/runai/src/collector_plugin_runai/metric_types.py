"""The metric names the Run:ai API accepts, per resource type.

Workload metrics (``GET /api/v1/workloads/{id}/metrics``) and pod metrics
(``GET /api/v1/workloads/{id}/pods/{podId}/metrics``) take different
``metricType`` names: ``GPU_ALLOCATION`` exists only for workloads, the
``*_PER_GPU`` names only for pods.  The API answers 400 for a name it does not
know for that resource, which would fail every window; :func:`check` lets the
configuration refuse such a name at startup instead (docs/components/runai-receiver.md).

The sets are copied from the Run:ai API's ``WorkloadMetricType`` and
``PodMetricType`` enums (a test compares them with the ``runapy`` SDK; the
plugin itself does not depend on it).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_PER_CALL", "POD_METRICS", "WORKLOAD_METRICS", "check", "metrics_of"]

#: The API refuses more than this many ``metricType`` values in one call.
MAX_PER_CALL = 9

WORKLOAD_METRICS: frozenset[str] = frozenset(
    {
        "GPU_UTILIZATION",
        "GPU_MEMORY_USAGE_BYTES",
        "GPU_MEMORY_REQUEST_BYTES",
        "CPU_USAGE_CORES",
        "CPU_REQUEST_CORES",
        "CPU_LIMIT_CORES",
        "CPU_MEMORY_USAGE_BYTES",
        "CPU_MEMORY_REQUEST_BYTES",
        "CPU_MEMORY_LIMIT_BYTES",
        "POD_COUNT",
        "RUNNING_POD_COUNT",
        "GPU_ALLOCATION",
        "NIM_NUM_REQUESTS_RUNNING",
        "NIM_NUM_REQUESTS_WAITING",
        "NIM_NUM_REQUEST_MAX",
        "NIM_REQUEST_SUCCESS_TOTAL",
        "NIM_REQUEST_FAILURE_TOTAL",
        "NIM_GPU_CACHE_USAGE_PERC",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS",
        "NIM_E2E_REQUEST_LATENCY_SECONDS",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS_PERCENTILES",
        "NIM_E2E_REQUEST_LATENCY_SECONDS_PERCENTILES",
        "NVLINK_BANDWIDTH_TOTAL",
    }
)

POD_METRICS: frozenset[str] = frozenset(
    {
        "GPU_UTILIZATION_PER_GPU",
        "GPU_UTILIZATION",
        "GPU_MEMORY_USAGE_BYTES_PER_GPU",
        "GPU_MEMORY_USAGE_BYTES",
        "CPU_USAGE_CORES",
        "CPU_MEMORY_USAGE_BYTES",
        "GPU_GRAPHICS_ENGINE_ACTIVITY_PER_GPU",
        "GPU_SM_ACTIVITY_PER_GPU",
        "GPU_SM_OCCUPANCY_PER_GPU",
        "GPU_TENSOR_ACTIVITY_PER_GPU",
        "GPU_FP64_ENGINE_ACTIVITY_PER_GPU",
        "GPU_FP32_ENGINE_ACTIVITY_PER_GPU",
        "GPU_FP16_ENGINE_ACTIVITY_PER_GPU",
        "GPU_MEMORY_BANDWIDTH_UTILIZATION_PER_GPU",
        "GPU_NVLINK_TRANSMITTED_BANDWIDTH_PER_GPU",
        "GPU_NVLINK_RECEIVED_BANDWIDTH_PER_GPU",
        "GPU_PCIE_TRANSMITTED_BANDWIDTH_PER_GPU",
        "GPU_PCIE_RECEIVED_BANDWIDTH_PER_GPU",
        "GPU_SWAP_MEMORY_BYTES_PER_GPU",
        "NIM_NUM_REQUESTS_RUNNING",
        "NIM_NUM_REQUESTS_WAITING",
        "NIM_NUM_REQUEST_MAX",
        "NIM_REQUEST_SUCCESS_TOTAL",
        "NIM_REQUEST_FAILURE_TOTAL",
        "NIM_GPU_CACHE_USAGE_PERC",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS",
        "NIM_E2E_REQUEST_LATENCY_SECONDS",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS_PERCENTILES",
        "NIM_E2E_REQUEST_LATENCY_SECONDS_PERCENTILES",
        "NVLINK_BANDWIDTH_TOTAL",
        "NVLINK_BANDWIDTH_TOTAL_PER_GPU",
    }
)

# kind (as the client and the configuration spell it) -> (plural noun, names)
_KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "workloads": ("workloads", WORKLOAD_METRICS),
    "workload": ("workloads", WORKLOAD_METRICS),
    "pods": ("pods", POD_METRICS),
    "pod": ("pods", POD_METRICS),
}


def metrics_of(kind: str) -> frozenset[str]:
    """The metric names of ``kind`` (``workloads`` or ``pods``; the singular works too)."""
    try:
        return _KINDS[kind][1]
    except KeyError:
        raise ValueError(f"unknown Run:ai resource type {kind!r}: expected 'workloads' or 'pods'") from None


def check(kind: str, names: Iterable[str]) -> None:
    """Raise :class:`ValueError` unless every name is a metric of ``kind``.

    The message names every wrong name, says where the misplaced ones belong
    (``GPU_ALLOCATION is a workload metric``) and lists the names ``kind``
    has, so that the user can fix the configuration from the message alone.
    """
    allowed = metrics_of(kind)
    plural = _KINDS[kind][0]
    wrong = sorted(dict.fromkeys(n for n in names if n not in allowed))
    if not wrong:
        return
    other_plural, other = ("pods", POD_METRICS) if plural == "workloads" else ("workloads", WORKLOAD_METRICS)
    misplaced = [n for n in wrong if n in other]
    unknown = [n for n in wrong if n not in other]
    parts = []
    if misplaced:
        noun = other_plural[:-1]
        verb = "is a" if len(misplaced) == 1 else "are"
        suffix = "metric" if len(misplaced) == 1 else "metrics"
        parts.append(f"{', '.join(misplaced)} {verb} {noun} {suffix}")
    if unknown:
        verb = "is not a" if len(unknown) == 1 else "are not"
        suffix = "metric" if len(unknown) == 1 else "metrics"
        parts.append(f"{', '.join(unknown)} {verb} Run:ai {suffix}")
    raise ValueError(f"{'; '.join(parts)}; {plural} have: {', '.join(sorted(allowed))}")
