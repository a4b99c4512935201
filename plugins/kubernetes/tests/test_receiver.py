"""The ``kubernetes`` receiver end to end: fake API server, official client, real pipeline.

The receiver runs in-process with a FakeClock; pods are created in the fake
API server with container start and finish times in that fake time, so the
truth of every window is known: core-seconds and GPU-seconds billed must equal
it exactly, deduplicated by id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import collector_plugin_kubernetes
import pytest
from fakeapi import FakeKubeAPI
from k8sobjects import (
    container,
    node,
    persistent_volume,
    persistent_volume_claim,
    pod,
    running,
    terminated,
    waiting,
)

from collector.clock import FakeClock
from collector.pull import Window
from collector.testing import eventually, testing_registry

T0 = 1_796_558_400.0  # 2026-12-06T12:00:00Z, a window boundary for 60 s windows
W = 60.0


@pytest.fixture
def registry() -> Any:
    return testing_registry([("kubernetes-under-test", collector_plugin_kubernetes)])


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeAPI]:
    fake = FakeKubeAPI()
    fake.bookmark_interval = 0.2
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def config(kubeconfig: Path, **receiver: Any) -> str:
    import yaml

    settings = {
        "kubeconfig": str(kubeconfig),
        "namespaces": ["default"],
        "interval": "60s",
        "offset": "5s",
        "retry_initial": "0.05s",
        "retry_max": "0.2s",
        **receiver,
    }
    return yaml.safe_dump({"receivers": {"kubernetes": settings}, "exporters": {"memory": {"batch": {"period": 0.01}}}})


async def drive(clock: FakeClock, rec: Any, watermark: float, timeout: float = 15.0) -> None:
    """Advance fake time in small steps until the receiver's watermark reaches ``watermark``."""

    def step() -> bool:
        if rec.watermark is not None and rec.watermark >= watermark:
            return True
        # Keep time moving (a retry sleeps on the fake clock too), but not into the window after next.
        if clock.time() < watermark + rec.offset + W / 2:
            clock.advance(0.5)
        return False

    try:
        await eventually(step, timeout=timeout, interval=0.02, message=f"watermark {watermark}")
    except AssertionError as exc:
        states = [
            (inf.name, inf.complete_through(), inf.error, inf.synced, inf._thread and inf._thread.is_alive())
            for _, inf in rec.informers
        ]
        raise AssertionError(f"{exc}: clock {clock.time()}, last_error {rec.last_error}, informers {states}") from None


def gpu_pod(name: str, statuses: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return pod(
        name,
        annotations={"openmeter.io/subject": "acme", "data.openmeter.io/project": "vision"},
        containers=[container("main", requests={"cpu": "500m", "memory": "1Gi"}, limits={"nvidia.com/gpu": "1"})],
        statuses=statuses,
        **kw,
    )


def by_pod(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Events keyed by (pod, window start), checking ids are unique."""
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return {(e["data"]["pod"], e["time"]): e for e in events}


async def test_short_job_and_pod_spanning_windows_are_billed_exactly(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    # A 5-second job inside the first window; a pod running from T0+30 across three windows.
    api.create("pods", gpu_pod("job", [terminated("main", T0 + 10, T0 + 15)], phase="Succeeded"))
    api.create("pods", gpu_pod("server", [running("main", T0 + 30)]))
    api.create("pods", pod("pending", containers=[container("main", requests={"cpu": "1"})],
                           phase="Pending", statuses=[waiting("main")]))  # fmt: skip
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        await drive(clock, rec, T0 + W)
        srv = api.get("pods", "default", "server")
        assert srv is not None
        srv["status"]["containerStatuses"] = [terminated("main", T0 + 30, T0 + 150)]
        srv["status"]["phase"] = "Succeeded"
        api.update("pods", srv)
        await drive(clock, rec, T0 + 3 * W)
        events = await p.exporter().wait_for(4)
    got = by_pod(events)
    start = [rec_time(T0 + i * W) for i in range(3)]
    assert set(got) == {("job", start[0]), ("server", start[0]), ("server", start[1]), ("server", start[2])}
    job = got[("job", start[0])]
    assert job["subject"] == "acme" and job["type"] == "kubernetes_pod"
    assert job["data"]["seconds"] == 5
    assert job["data"]["cpu_request_core_seconds"] == 2.5
    assert job["data"]["gpu_seconds"] == 5 and job["data"]["nvidia_com_gpu_seconds"] == 5
    assert job["data"]["memory_request_byte_seconds"] == 5 * 1024**3
    assert job["data"]["project"] == "vision"
    assert [got[("server", s)]["data"]["seconds"] for s in start] == [30, 60, 30]
    total_core_seconds = sum(e["data"]["cpu_request_core_seconds"] for e in events)
    assert total_core_seconds == 0.5 * (5 + 120)


def rec_time(t: float) -> str:
    """The event time of the window starting at ``t``."""
    return Window(t, t + W).start_time


async def test_ids_are_the_same_when_a_window_is_collected_again(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", gpu_pod("job", [terminated("main", T0 + 10, T0 + 15)], phase="Succeeded"))
    runs = []
    for attempt in range(2):
        clock = FakeClock(start=T0 + W + 6)
        storage = tmp_path / f"storage-{attempt}"
        async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock, storage_dir=storage) as p:
            await drive(clock, p.service.receivers["kubernetes"], T0 + W)
            runs.append(await p.exporter().wait_for(1))
    assert [e["id"] for e in runs[0]] == [e["id"] for e in runs[1]]


async def test_pod_without_subject_is_counted_and_logged_not_billed(
    collector_run_pipeline, registry, api, tmp_path, caplog
):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", pod("anon", containers=[container("main", requests={"cpu": "1"})],
                           statuses=[running("main", T0)]))  # fmt: skip
    api.create("pods", gpu_pod("billed", [running("main", T0)]))
    clock = FakeClock(start=T0 + W + 6)
    caplog.set_level(logging.WARNING)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + W)
        events = await p.exporter().wait_for(1)
        unbilled = p.metric("collector_kubernetes_unbilled_total", receiver="kubernetes", kind="pod")
    assert [e["data"]["pod"] for e in events] == ["billed"]
    assert unbilled == 1
    assert "1 pod(s) ran in window" in caplog.text and "default/anon" in caplog.text


async def test_fallback_subject_namespace(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", pod("anon", containers=[container("main", requests={"cpu": "1"})],
                           statuses=[running("main", T0)]))  # fmt: skip
    clock = FakeClock(start=T0 + W + 6)
    cfg = config(kubeconfig, subject={"fallback": "namespace"})
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + W)
        events = await p.exporter().wait_for(1)
    assert events[0]["subject"] == "default"
    assert events[0]["data"]["cpu_request_core_seconds"] == 60
    assert "cpu_limit_core_seconds" not in events[0]["data"]  # no limit set: unbounded, not zero


async def test_api_outage_holds_the_window_until_the_watch_is_back(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", gpu_pod("server", [running("main", T0)]))
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        await drive(clock, rec, T0 + W)
        api.outage(True)
        # The pod finishes during the outage; the watch cannot say so yet.
        srv = api.get("pods", "default", "server")
        assert srv is not None
        await eventually(lambda: rec.problems(), timeout=10, message="the outage is noticed")
        clock.advance(2 * W)
        await asyncio.sleep(0.5)
        assert rec.watermark == T0 + W, "no window may be committed while the watch is down"
        health = rec.health()
        assert health["ready"] is False and health["reason"]
        srv["status"]["containerStatuses"] = [terminated("main", T0, T0 + W + 20)]
        srv["status"]["phase"] = "Succeeded"
        api.outage(False)
        api.update("pods", srv)
        await drive(clock, rec, T0 + 3 * W, timeout=20)
        events = await p.exporter().wait_for(2)
    got = by_pod(events)
    assert got[("server", rec_time(T0))]["data"]["seconds"] == 60
    assert got[("server", rec_time(T0 + W))]["data"]["seconds"] == 20
    assert ("server", rec_time(T0 + 2 * W)) not in got


async def test_forbidden_watch_gives_a_health_reason_and_bills_nothing(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", gpu_pod("server", [running("main", T0)]))
    api.deny(403, verb="list", resource="pods")
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        await eventually(lambda: "forbidden" in (rec.health().get("reason") or ""), timeout=10)
        assert "RBAC" in rec.health()["reason"]
        assert rec.watermark is None
        api.allow()
        await drive(clock, rec, T0 + W, timeout=20)
        events = await p.exporter().wait_for(1)
    assert events[0]["data"]["seconds"] == 60


async def test_malformed_kubeconfig_keeps_the_collector_running(collector_run_pipeline, registry, tmp_path, caplog):
    bad = tmp_path / "kubeconfig"
    bad.write_text("clusters: [this is: not: valid\n", encoding="utf-8")
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(bad), registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        health = rec.health()
        assert health["ready"] is False
        assert "kubeconfig" in health["reason"] and str(bad) in health["reason"]
        assert p.service.health()["ready"] is False
    assert caplog.text.count("malformed kubeconfig") == 1


async def test_nodes_and_volumes_are_billed_capacity_times_seconds(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("nodes", node("gpu-1", cpu="8", memory="32Gi", gpus={"nvidia.com/gpu": "4"}, created=T0 + 20))
    api.create("persistentvolumes", persistent_volume("pv-1", "10Gi", created=T0 - 600))
    api.create("persistentvolumeclaims", persistent_volume_claim("data", capacity="2Gi", volume="pv-1",
                                                                 created=T0 + 30))  # fmt: skip
    clock = FakeClock(start=T0 + W + 6)
    cfg = config(kubeconfig, nodes=True, persistent_volumes=True, persistent_volume_claims=True,
                 subject={"fallback": "name"})  # fmt: skip
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + W)
        events = await p.exporter().wait_for(3)
    by_type = {e["type"]: e for e in events}
    assert set(by_type) == {"kubernetes_node", "kubernetes_persistentvolume", "kubernetes_persistentvolumeclaim"}
    n = by_type["kubernetes_node"]["data"]
    assert (n["seconds"], n["cpu_core_seconds"], n["gpu_seconds"]) == (40, 8 * 40, 4 * 40)
    assert n["memory_byte_seconds"] == 32 * 1024**3 * 40
    assert by_type["kubernetes_persistentvolume"]["data"]["storage_byte_seconds"] == 10 * 1024**3 * 60
    claim = by_type["kubernetes_persistentvolumeclaim"]
    assert claim["subject"] == "data" and claim["data"]["storage_byte_seconds"] == 2 * 1024**3 * 30


async def test_sampled_usage_is_the_average_of_samples_times_seconds(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.create("pods", gpu_pod("server", [running("main", T0)]))
    api.set_pod_metrics("default", "server", {"main": {"cpu": "250m", "memory": "64Mi"}})
    clock = FakeClock(start=T0 + 1)
    cfg = config(kubeconfig, usage={"enabled": True, "sample_interval": "20s"})
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        await eventually(lambda: rec.tracker.samples, timeout=10)
        for _ in range(2):  # two more samples inside the window, at 21 s and 41 s
            clock.advance(20)
            await eventually(lambda n=len(rec.tracker.samples_in("default", "server", T0, T0 + W)): (
                len(rec.tracker.samples_in("default", "server", T0, T0 + W)) > n), timeout=10)  # fmt: skip
        api.set_pod_metrics("default", "server", {"main": {"cpu": "1", "memory": "64Mi"}})
        await drive(clock, rec, T0 + W)
        events = await p.exporter().wait_for(1)
    data = events[0]["data"]
    assert data["usage_samples"] == 3
    assert data["cpu_usage_core_seconds_sampled"] == pytest.approx(0.25 * 60)
    assert data["memory_usage_byte_seconds_sampled"] == 64 * 1024**2 * 60


async def test_bad_token_gives_a_401_reason(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token="wrong-token")
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock) as p:
        rec = p.service.receivers["kubernetes"]
        await eventually(lambda: "401" in (rec.health().get("reason") or ""), timeout=10)
        assert "wrong-token" not in rec.health()["reason"]
        assert rec.watermark is None


async def test_user_mapping_with_resource_quantity(collector_run_pipeline, registry, api, tmp_path):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    annotations = {"openmeter.io/subject": "acme", "data.openmeter.io/quota": "1500m"}
    api.create("pods", pod("job", annotations=annotations, containers=[container("main", requests={"cpu": "2"})],
                           statuses=[terminated("main", T0 + 10, T0 + 40)], phase="Succeeded"))  # fmt: skip
    mapping = (
        '{"type": "cpu", "subject": this.subject, "data": {"core_hours": this.data.cpu_request_core_seconds / 3600,'
        ' "quota": resource_quantity(this.data.quota), "window": meta.window_start}}'
    )
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig, mapping=mapping), registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + W)
        events = await p.exporter().wait_for(1)
    event = events[0]
    assert event["type"] == "cpu" and event["source"] == "kubernetes" and event["time"] == rec_time(T0)
    assert event["data"] == {"core_hours": 60 / 3600, "quota": 1.5, "window": rec_time(T0)}


async def test_pod_that_ran_while_the_collector_was_down_is_billed_on_resume(
    collector_run_pipeline, registry, api, tmp_path
):
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    storage = tmp_path / "storage"
    clock = FakeClock(start=T0 + W + 6)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock, storage_dir=storage) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + W)
        assert await p.exporter().wait_for(0) == []
    # Down for five windows; meanwhile a job runs from T0+130 to T0+250 and stays (Succeeded).
    api.create("pods", gpu_pod("batch", [terminated("main", T0 + 130, T0 + 250)], phase="Succeeded"))
    clock.advance(5 * W)
    async with collector_run_pipeline(config(kubeconfig), registry=registry, clock=clock, storage_dir=storage) as p:
        await drive(clock, p.service.receivers["kubernetes"], T0 + 6 * W)
        events = await p.exporter().wait_for(3)
    assert {e["time"]: e["data"]["seconds"] for e in events} == {
        rec_time(T0 + 2 * W): 50,
        rec_time(T0 + 3 * W): 60,
        rec_time(T0 + 4 * W): 10,
    }
    assert sum(e["data"]["gpu_seconds"] for e in events) == 120
