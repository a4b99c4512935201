"""The metric names the plugin accepts are exactly the Run:ai API's (runapy's enums), per resource type."""

from __future__ import annotations

import pytest
from collector_plugin_runai import metric_types
from runai.models import PodMetricType, WorkloadMetricType


def test_the_sets_are_the_sdk_enums() -> None:
    assert {m.value for m in WorkloadMetricType} == metric_types.WORKLOAD_METRICS
    assert {m.value for m in PodMetricType} == metric_types.POD_METRICS


def test_names_of_the_right_kind_pass() -> None:
    metric_types.check("workloads", ["GPU_ALLOCATION", "CPU_REQUEST_CORES", "CPU_MEMORY_REQUEST_BYTES"])
    metric_types.check("pods", ["GPU_UTILIZATION_PER_GPU", "CPU_USAGE_CORES"])
    metric_types.check("pod", [])


def test_a_workload_only_name_for_pods_is_named_with_where_it_belongs() -> None:
    with pytest.raises(ValueError) as info:
        metric_types.check("pods", ["CPU_USAGE_CORES", "GPU_ALLOCATION"])
    message = str(info.value)
    assert message.startswith("GPU_ALLOCATION is a workload metric; pods have: ")
    assert "CPU_USAGE_CORES" in message.split("pods have: ")[1]  # the list of what pods do have
    assert "GPU_ALLOCATION" not in message.split("pods have: ")[1]


def test_pod_only_and_unknown_names_for_workloads_are_all_named() -> None:
    with pytest.raises(ValueError) as info:
        metric_types.check("workloads", ["GPU_UTILIZATION_PER_GPU", "GPU_SWAP_MEMORY_BYTES_PER_GPU", "GPU_HOURS"])
    message = str(info.value)
    assert "GPU_SWAP_MEMORY_BYTES_PER_GPU, GPU_UTILIZATION_PER_GPU are pod metrics" in message
    assert "GPU_HOURS is not a Run:ai metric" in message
    assert "workloads have: " in message and "GPU_ALLOCATION" in message


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="'nodes'"):
        metric_types.check("nodes", ["GPU_UTILIZATION"])
