"""The fake API server, driven through the official client and a kubeconfig as the plugin drives it.

These tests pin the API contract the fake enforces, so the plugin's tests
against it mean something: complete objects, resourceVersions, selectors,
paging, watch replay, bookmarks, 410 Gone, optimistic concurrency, 401/403
and an outage.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import k8sobjects as k
import pytest
from fakeapi import FakeKubeAPI
from kubernetes import config, watch
from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api, CustomObjectsApi, V1Lease
from kubernetes.client.rest import ApiException
from urllib3.exceptions import ProtocolError

T0 = 1_796_000_000  # 2026-12-06T13:33:20Z


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    server = FakeKubeAPI()
    server.bookmark_interval = 0.1
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def api_client(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[ApiClient]:
    client = config.new_client_from_config(config_file=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def core(api_client: ApiClient) -> CoreV1Api:
    return CoreV1Api(api_client)


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def collect(func: Callable[..., Any], until: Callable[[list[Any]], bool], **kwargs: Any) -> list[Any]:
    """Stream a watch (in the calling thread) until ``until(events)`` or the server's timeoutSeconds."""
    events: list[Any] = []
    stream = watch.Watch().stream(func, timeout_seconds=kwargs.pop("timeout_seconds", 3), **kwargs)
    for event in stream:
        events.append(event)
        if until(events):
            stream.close()
            break
    return events


def raw(response: Any) -> Any:
    return json.loads(response.data)


def names(events: list[Any]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]


async def test_every_kind_round_trips_through_the_models(fake: FakeKubeAPI, api_client: ApiClient) -> None:
    core, coordination = CoreV1Api(api_client), CoordinationV1Api(api_client)
    gpu = {"nvidia.com/gpu": "1"}
    fake.create(
        "pods",
        k.pod(
            "job",
            "team-a",
            containers=[k.container("main", requests={"cpu": "500m"}, limits=gpu)],
            init_containers=[k.container("init", requests={"cpu": "2"})],
            overhead={"cpu": "100m"},
            phase="Succeeded",
            statuses=[k.terminated("main", T0 + 2, T0 + 7, restarts=1, last_terminated=(T0, T0 + 1))],
            init_statuses=[k.terminated("init", T0, T0 + 1)],
            created=T0,
        ),
    )
    fake.create("pods", k.pod("crashing", statuses=[k.waiting("main", "CrashLoopBackOff", restarts=3)]))
    fake.create("nodes", k.node("node-1", gpus={"nvidia.com/gpu": "4"}))
    fake.create("persistentvolumes", k.persistent_volume("pv-1", "20Gi", claim=("team-a", "data")))
    fake.create("persistentvolumeclaims", k.persistent_volume_claim("data", "team-a", capacity="20Gi", volume="pv-1"))
    fake.create("configmaps", {"metadata": {"name": "cm", "namespace": "team-a"}, "data": {"k": "v"}})
    fake.create("leases", {"metadata": {"name": "leader", "namespace": "team-a"}, "spec": {"holderIdentity": "a"}})

    pods = await asyncio.to_thread(core.list_pod_for_all_namespaces)
    job = next(p for p in pods.items if p.metadata.name == "job")
    main = job.status.container_statuses[0]
    assert (main.restart_count, main.state.terminated.exit_code) == (1, 0)
    assert main.state.terminated.finished_at.timestamp() == T0 + 7
    assert main.last_state.terminated.started_at.timestamp() == T0
    assert job.spec.containers[0].resources.requests == {"cpu": "500m", "nvidia.com/gpu": "1"}  # defaulted
    assert job.spec.overhead == {"cpu": "100m"}
    assert job.status.init_container_statuses[0].state.terminated.exit_code == 0

    nodes = await asyncio.to_thread(core.list_node)
    assert nodes.items[0].status.capacity["nvidia.com/gpu"] == "4"
    pvs = await asyncio.to_thread(core.list_persistent_volume)
    assert pvs.items[0].spec.claim_ref.name == "data"
    pvcs = await asyncio.to_thread(core.list_namespaced_persistent_volume_claim, "team-a")
    assert pvcs.items[0].status.capacity == {"storage": "20Gi"}
    assert (await asyncio.to_thread(core.list_persistent_volume_claim_for_all_namespaces)).items[0].spec.volume_name
    cms = await asyncio.to_thread(core.list_namespaced_config_map, "team-a")
    assert cms.items[0].data == {"k": "v"}
    lease = await asyncio.to_thread(coordination.read_namespaced_lease, "leader", "team-a")
    assert lease.spec.holder_identity == "a"
    assert lease.metadata.uid and lease.metadata.creation_timestamp


async def test_create_rejects_an_object_the_client_could_not_read(fake: FakeKubeAPI) -> None:
    incomplete = k.pod("p")
    del incomplete["status"]["containerStatuses"][0]["imageID"]
    with pytest.raises(ValueError, match="V1Pod"):
        fake.create("pods", incomplete)
    with pytest.raises(ValueError, match="namespace"):
        fake.create("pods", {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}})


async def test_list_shares_one_resource_version_counter_and_omits_item_kind(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    node = fake.create("nodes", k.node("node-1"))
    pod = fake.create("pods", k.pod("p"))
    assert int(pod["metadata"]["resourceVersion"]) == int(node["metadata"]["resourceVersion"]) + 1
    body = raw(await asyncio.to_thread(core.list_namespaced_pod, "default", _preload_content=False))
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
    assert "kind" not in body["items"][0] and "apiVersion" not in body["items"][0]
    assert ("GET", "/api/v1/namespaces/default/pods", {}) in fake.requests


async def test_label_selectors(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    fake.create("pods", k.pod("a", labels={"app": "web", "tier": "front"}))
    fake.create("pods", k.pod("b", labels={"app": "db"}))
    fake.create("pods", k.pod("c"))

    async def select(selector: str) -> list[str]:
        pods = await asyncio.to_thread(core.list_namespaced_pod, "default", label_selector=selector)
        return sorted(p.metadata.name for p in pods.items)

    assert await select("app=web") == ["a"]
    assert await select("app==db") == ["b"]
    assert await select("app!=web") == ["b", "c"]
    assert await select("app in (web, db)") == ["a", "b"]
    assert await select("app notin (web)") == ["b", "c"]
    assert await select("tier") == ["a"]
    assert await select("!tier") == ["b", "c"]
    assert await select("app,!tier") == ["b"]
    with pytest.raises(ApiException) as err:
        await select("app in web")
    assert err.value.status == 400


async def test_field_selectors(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    fake.create("pods", k.pod("a", node="node-1"))
    fake.create("pods", k.pod("b", node="node-2"))
    fake.create("pods", k.pod("c", phase="Pending", node=None))
    fake.create("pods", k.pod("d", "other"))

    async def select(selector: str) -> list[str]:
        pods = await asyncio.to_thread(core.list_pod_for_all_namespaces, field_selector=selector)
        return sorted(p.metadata.name for p in pods.items)

    assert await select("spec.nodeName=node-2") == ["b"]
    assert await select("spec.nodeName=") == ["c"]
    assert await select("status.phase!=Pending,metadata.namespace=default") == ["a", "b"]
    assert await select("metadata.name==d") == ["d"]
    with pytest.raises(ApiException) as err:
        await select("spec.hostname=x")
    assert err.value.status == 400 and "field label not supported" in json.loads(err.value.body)["message"]


async def test_paging_is_a_consistent_snapshot_and_expires_on_compaction(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    for i in range(5):
        fake.create("pods", k.pod(f"p{i}"))
    first = await asyncio.to_thread(core.list_namespaced_pod, "default", limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    fake.delete("pods", "default", "p3")
    fake.create("pods", k.pod("p9"))
    second = await asyncio.to_thread(core.list_namespaced_pod, "default", limit=2, _continue=first.metadata._continue)
    third = await asyncio.to_thread(core.list_namespaced_pod, "default", limit=2, _continue=second.metadata._continue)
    assert [p.metadata.name for p in second.items + third.items] == ["p2", "p3", "p4"]  # as at the first page
    assert third.metadata._continue is None
    assert third.metadata.resource_version == first.metadata.resource_version

    fake.compact()
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.list_namespaced_pod, "default", limit=2, _continue=first.metadata._continue)
    assert err.value.status == 410 and json.loads(err.value.body)["reason"] == "Expired"


async def test_exact_list_serves_the_past_until_compacted(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    old = fake.create("pods", k.pod("a", labels={"v": "1"}))["metadata"]["resourceVersion"]
    fake.update("pods", k.pod("a", labels={"v": "2"}))
    fake.create("pods", k.pod("b"))
    past = await asyncio.to_thread(
        core.list_namespaced_pod, "default", resource_version=old, resource_version_match="Exact"
    )
    assert [(p.metadata.name, p.metadata.labels) for p in past.items] == [("a", {"v": "1"})]
    fake.compact()
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(
            core.list_namespaced_pod, "default", resource_version=old, resource_version_match="Exact"
        )
    assert err.value.status == 410


async def test_watch_from_a_list_sees_changes_in_order(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    fake.create("pods", k.pod("before"))
    listed = await asyncio.to_thread(core.list_namespaced_pod, "default")
    task = asyncio.create_task(
        asyncio.to_thread(
            collect,
            core.list_namespaced_pod,
            lambda ev: ev[-1]["type"] == "DELETED",
            namespace="default",
            resource_version=listed.metadata.resource_version,
        )
    )
    await wait_for(lambda: fake.watchers("pods") == 1)
    fake.create("pods", k.pod("p", created=T0))
    fake.update("pods", k.pod("p", created=T0, statuses=[k.running("main", T0, restarts=1)]))
    await asyncio.to_thread(fake.delete, "pods", "default", "p")  # the store may be changed from another thread
    events = await task
    assert names(events) == [("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    assert events[1]["object"].status.container_statuses[0].restart_count == 1  # deserialised models
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and rvs[-1] == int(fake.resource_version)
    await wait_for(lambda: fake.watchers("pods") == 0)


async def test_watch_replays_remembered_events_raw(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    rv = fake.create("pods", k.pod("a"))["metadata"]["resourceVersion"]
    fake.update("pods", k.pod("a", labels={"x": "1"}))
    fake.create("pods", k.pod("b", "other"))
    fake.delete("pods", "default", "a")
    events = await asyncio.to_thread(
        collect,
        core.list_namespaced_pod,
        lambda ev: len(ev) == 2,
        namespace="default",
        resource_version=rv,
        deserialize=False,
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("MODIFIED", "a"), ("DELETED", "a")]
    assert events[0]["object"]["kind"] == "Pod" and events[0]["object"]["apiVersion"] == "v1"


async def test_watch_without_resource_version_starts_with_synthetic_added(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    fake.create("pods", k.pod("a"))
    fake.create("pods", k.pod("b", labels={"app": "x"}))
    events = await asyncio.to_thread(
        collect, core.list_pod_for_all_namespaces, lambda ev: len(ev) == 1, label_selector="app=x"
    )
    assert names(events) == [("ADDED", "b")]


async def test_selector_watch_sees_objects_enter_and_leave(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    rv = fake.create("nodes", k.node("n"))["metadata"]["resourceVersion"]
    fake.create("pods", k.pod("p", labels={"app": "x"}))
    fake.create("pods", k.pod("q", "other", labels={"app": "x"}))  # another namespace: not seen
    fake.update("pods", k.pod("p", labels={"app": "y"}))  # leaves the selection
    fake.update("pods", k.pod("p", labels={"app": "x"}))  # enters again
    events = await asyncio.to_thread(
        collect,
        core.list_namespaced_pod,
        lambda ev: len(ev) == 3,
        namespace="default",
        label_selector="app=x",
        resource_version=rv,
    )
    assert names(events) == [("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p")]


async def test_bookmarks_carry_the_current_resource_version(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    rv = fake.create("pods", k.pod("a"))["metadata"]["resourceVersion"]
    fake.create("nodes", k.node("n"))  # another kind still moves the global counter
    events = await asyncio.to_thread(
        collect,
        core.list_namespaced_pod,
        lambda ev: ev[-1]["type"] == "BOOKMARK",
        namespace="default",
        resource_version=rv,
        allow_watch_bookmarks=True,
        deserialize=False,
    )
    mark = events[-1]["object"]
    assert mark == {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": fake.resource_version}}


async def test_timeout_seconds_ends_the_stream_cleanly(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    started = time.monotonic()
    events = await asyncio.to_thread(
        collect,
        core.list_namespaced_pod,
        lambda ev: False,
        namespace="default",
        resource_version=fake.resource_version,
        timeout_seconds=1,
    )
    assert events == [] and 0.9 < time.monotonic() - started < 2.5


async def test_compaction_answers_410_gone_on_watch(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    rv = fake.create("pods", k.pod("a"))["metadata"]["resourceVersion"]
    fake.compact()
    response = await asyncio.to_thread(
        core.list_namespaced_pod,
        "default",
        watch=True,
        resource_version=rv,
        timeout_seconds=2,
        _preload_content=False,
    )
    event = json.loads(response.data.decode().splitlines()[0])
    assert event["type"] == "ERROR"
    assert {k: event["object"][k] for k in ("kind", "code", "reason")} == {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
    }
    with pytest.raises(ApiException) as err:  # the client's Watch turns it into an exception
        await asyncio.to_thread(
            collect, core.list_namespaced_pod, lambda ev: True, namespace="default", resource_version=rv
        )
    assert err.value.status == 410
    fresh = await asyncio.to_thread(core.list_namespaced_pod, "default")  # a relist gives a usable version
    events = await asyncio.to_thread(
        collect,
        core.list_namespaced_pod,
        lambda ev: True,
        namespace="default",
        resource_version=fresh.metadata.resource_version,
        allow_watch_bookmarks=True,
    )
    assert events[0]["type"] == "BOOKMARK"


def test_the_clients_raw_watch_cannot_read_an_error_event() -> None:
    """kubernetes 37.0.3: ``Watch().stream(..., deserialize=False)`` reads ``event["raw_object"]``, which only
    its deserialising path sets, so a 410 ERROR event surfaces as ``KeyError('raw_object')``, not ApiException.
    The plugin must treat that KeyError as Gone (or read ERROR events itself); this test notices a fix."""
    events = iter(['{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "x"}}'])

    class Response:
        status = 200

        def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
            yield from (line.encode() + b"\n" for line in events)

        def close(self) -> None: ...

        def release_conn(self) -> None: ...

    def list_pods(**kwargs: Any) -> Response:
        """:rtype: V1PodList"""
        return Response()

    with pytest.raises(KeyError, match="raw_object"):
        list(watch.Watch().stream(list_pods, deserialize=False, timeout_seconds=1))


async def test_a_short_history_expires_old_versions(tmp_path: Path) -> None:
    fake = FakeKubeAPI(history=2)
    await fake.start()
    client = config.new_client_from_config(config_file=str(fake.write_kubeconfig(tmp_path / "kc")))
    try:
        first = fake.create("pods", k.pod("p0"))["metadata"]["resourceVersion"]
        second = fake.create("pods", k.pod("p1"))["metadata"]["resourceVersion"]
        for i in (2, 3):
            fake.create("pods", k.pod(f"p{i}"))  # the event after ``first`` is forgotten
        core = CoreV1Api(client)
        with pytest.raises(ApiException) as err:
            await asyncio.to_thread(
                collect, core.list_namespaced_pod, lambda ev: True, namespace="default", resource_version=first
            )
        assert err.value.status == 410
        events = await asyncio.to_thread(
            collect, core.list_namespaced_pod, lambda ev: len(ev) == 2, namespace="default", resource_version=second
        )
        assert names(events) == [("ADDED", "p2"), ("ADDED", "p3")]
    finally:
        client.close()
        await fake.stop()


async def test_bad_token_is_401(fake: FakeKubeAPI, tmp_path: Path) -> None:
    client = config.new_client_from_config(config_file=str(fake.write_kubeconfig(tmp_path / "kc", token="nope")))
    try:
        with pytest.raises(ApiException) as err:
            await asyncio.to_thread(CoreV1Api(client).list_namespaced_pod, "default")
    finally:
        client.close()
    assert err.value.status == 401 and json.loads(err.value.body)["reason"] == "Unauthorized"


async def test_deny_watch_on_pods_only(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    fake.create("pods", k.pod("a"))
    fake.deny(403, verb="watch", resource="pods")
    listed = await asyncio.to_thread(core.list_namespaced_pod, "x")
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(collect, core.list_namespaced_pod, lambda ev: True, namespace="x")
    body = json.loads(err.value.body)
    assert err.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'pods is forbidden: User "system:serviceaccount:collector:collector" cannot watch resource "pods" '
        'in API group "" in the namespace "x"'
    )
    await asyncio.to_thread(collect, core.list_node, lambda ev: True, timeout_seconds=1)  # other kinds still watch
    fake.allow()
    events = await asyncio.to_thread(collect, core.list_namespaced_pod, lambda ev: True, namespace="default")
    assert names(events) == [("ADDED", "a")] and listed.items == []


async def test_lease_optimistic_concurrency(fake: FakeKubeAPI, api_client: ApiClient) -> None:
    leases = CoordinationV1Api(api_client)
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(leases.read_namespaced_lease, "leader", "ns")
    assert err.value.status == 404 and json.loads(err.value.body)["reason"] == "NotFound"

    body = {
        "metadata": {"name": "leader", "namespace": "ns"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-12-06T13:00:00.123456Z",
            "renewTime": "2026-12-06T13:00:00.123456Z",
            "leaseTransitions": 0,
        },
    }
    created = await asyncio.to_thread(leases.create_namespaced_lease, "ns", body)
    assert created.spec.renew_time.microsecond == 123456
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(leases.create_namespaced_lease, "ns", body)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"

    mine: V1Lease = await asyncio.to_thread(leases.read_namespaced_lease, "leader", "ns")
    theirs: V1Lease = await asyncio.to_thread(leases.read_namespaced_lease, "leader", "ns")
    theirs.spec.holder_identity = "b"
    replaced = await asyncio.to_thread(leases.replace_namespaced_lease, "leader", "ns", theirs)
    mine.spec.holder_identity = "a"
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(leases.replace_namespaced_lease, "leader", "ns", mine)
    status = json.loads(err.value.body)
    assert err.value.status == 409 and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert fake.get("leases", "ns", "leader")["spec"]["holderIdentity"] == "b"

    await asyncio.to_thread(leases.patch_namespaced_lease, "leader", "ns", {"spec": {"leaseTransitions": 1}})
    patched = await asyncio.to_thread(
        leases.patch_namespaced_lease, "leader", "ns", {"metadata": {"annotations": {"watermark": "42"}}}
    )
    assert patched.metadata.annotations == {"watermark": "42"}
    assert (patched.spec.holder_identity, patched.spec.lease_transitions) == ("b", 1)
    old = replaced.metadata.resource_version
    before = await asyncio.to_thread(
        leases.list_namespaced_lease, "ns", resource_version=old, resource_version_match="Exact"
    )
    [then] = before.items  # the patches changed copies, not the history
    assert (then.metadata.resource_version, then.spec.lease_transitions, then.metadata.annotations) == (old, 0, None)
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(leases.replace_namespaced_lease, "missing", "ns", {"metadata": {"name": "missing"}})
    assert err.value.status == 404


async def test_configmap_replace_with_stale_version_conflicts(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    stale = fake.create("configmaps", {"metadata": {"name": "wm", "namespace": "ns"}, "data": {"w": "1"}})
    fake.update("configmaps", {"metadata": {"name": "wm", "namespace": "ns"}, "data": {"w": "2"}})
    stale["data"] = {"w": "3"}
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.replace_namespaced_config_map, "wm", "ns", stale)
    assert err.value.status == 409


async def test_pod_metrics_through_custom_objects(fake: FakeKubeAPI, api_client: ApiClient) -> None:
    custom = CustomObjectsApi(api_client)
    fake.create("pods", k.pod("p", "team-a", labels={"app": "x"}))
    fake.set_pod_metrics("team-a", "p", {"main": {"cpu": "250m", "memory": "64Mi"}})
    fake.set_pod_metrics("team-b", "q", {"main": {"cpu": "1", "memory": "1Gi"}})
    listed = await asyncio.to_thread(
        custom.list_namespaced_custom_object, "metrics.k8s.io", "v1beta1", "team-a", "pods"
    )
    [item] = listed["items"]
    assert item["containers"] == [{"name": "main", "usage": {"cpu": "250m", "memory": "64Mi"}}]
    assert item["window"] == "30s" and item["metadata"]["labels"] == {"app": "x"}
    one = await asyncio.to_thread(
        custom.get_namespaced_custom_object, "metrics.k8s.io", "v1beta1", "team-a", "pods", "p"
    )
    assert one["kind"] == "PodMetrics" and one["timestamp"].endswith("Z")
    everywhere = await asyncio.to_thread(custom.list_cluster_custom_object, "metrics.k8s.io", "v1beta1", "pods")
    assert sorted(i["metadata"]["name"] for i in everywhere["items"]) == ["p", "q"]
    fake.delete("pods", "team-a", "p")
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(custom.get_namespaced_custom_object, "metrics.k8s.io", "v1beta1", "team-a", "pods", "p")
    assert err.value.status == 404


async def test_outage_answers_503_and_breaks_watches_then_recovers(fake: FakeKubeAPI, core: CoreV1Api) -> None:
    task = asyncio.create_task(
        asyncio.to_thread(collect, core.list_namespaced_pod, lambda ev: False, namespace="default", timeout_seconds=5)
    )
    await wait_for(lambda: fake.watchers("pods") == 1)
    started = time.monotonic()
    fake.outage(True)
    with pytest.raises(ProtocolError):  # the connection drops mid-stream
        await task
    assert time.monotonic() - started < 2
    assert fake.watchers("pods") == 0
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(core.list_namespaced_pod, "default")
    assert err.value.status == 503 and json.loads(err.value.body)["reason"] == "ServiceUnavailable"
    fake.outage(False)
    assert (await asyncio.to_thread(core.list_namespaced_pod, "default")).items == []


async def test_version_and_unknown_paths(fake: FakeKubeAPI, api_client: ApiClient) -> None:
    from kubernetes.client import VersionApi

    version = await asyncio.to_thread(VersionApi(api_client).get_code)
    assert version.major == "1"
    with pytest.raises(ApiException) as err:
        await asyncio.to_thread(CoreV1Api(api_client).list_namespaced_service, "default")
    assert err.value.status == 404
