"""The ``kubernetes_lease`` coordinator against the fake API server, through the official client.

Real (short) durations: lease 1.5 s (written as 2 s), renew deadline 1 s,
retry 0.2 s.  The fencing test partitions the leader with a TCP proxy it can
cut, as a network split or a stalled process would, and checks on both
replicas' own ``is_leader()`` that the old leader stops before the new one
starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from collector_plugin_kubernetes.lease import LeaseConfig, LeaseCoordinator, NotLeaderError, watermark_key
from fakeapi import FakeKubeAPI
from pydantic import ValidationError

from collector.api import ComponentContext
from collector.telemetry import Telemetry
from collector.testing import eventually

FAST = {"lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.2}
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/default/leases/collector"
T = datetime(2026, 12, 6, 13, 33, 20, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _no_pod_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    server = FakeKubeAPI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(fake: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@asynccontextmanager
async def coordinator(
    tmp_path: Path, kubeconfig: Path, identity: str | None, **settings: Any
) -> AsyncIterator[LeaseCoordinator]:
    config = LeaseConfig.model_validate({"kubeconfig": kubeconfig, "identity": identity, **FAST, **settings})
    storage = tmp_path / f"coordinator-{identity or 'default'}"
    ctx = ComponentContext(id="kubernetes_lease", kind="coordinator", storage_dir=storage, telemetry=Telemetry())
    coord = LeaseCoordinator(ctx, config)
    await coord.start()
    try:
        yield coord
    finally:
        await coord.shutdown(5.0)


def lease(fake: FakeKubeAPI, namespace: str = "default") -> dict[str, Any]:
    found = fake.get("leases", namespace, "collector")
    assert found is not None, f"no Lease collector in {namespace}"
    return found


def leader_gauge(coord: LeaseCoordinator) -> float | None:
    registry = coord.ctx.telemetry.metrics.registry
    return registry.get_sample_value("collector_kubernetes_lease_leader", {"coordinator": coord.id})


@dataclass
class Recorder:
    """Samples replicas' is_leader() every 2 ms: when each first turned True and False, and any overlap."""

    coords: dict[str, LeaseCoordinator]
    first_true: dict[str, float] = field(default_factory=dict)
    first_false: dict[str, float] = field(default_factory=dict)
    overlaps: int = 0
    _task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            now = time.monotonic()
            leading = {name for name, c in self.coords.items() if c.is_leader()}
            self.overlaps += len(leading) > 1
            for name in self.coords:
                if name in leading:
                    self.first_true.setdefault(name, now)
                elif name in self.first_true:
                    self.first_false.setdefault(name, now)
            await asyncio.sleep(0.002)

    def __enter__(self) -> Recorder:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class Partition:
    """A TCP proxy in front of the fake that the test can cut (every connection dropped) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.split()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def split(self) -> None:
        self.cut = True
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@asynccontextmanager
async def partitioned(fake: FakeKubeAPI) -> AsyncIterator[Partition]:
    proxy = Partition(int(fake.url.rsplit(":", 1)[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def kubeconfig_via(fake: FakeKubeAPI, path: Path, port: int) -> Path:
    fake.write_kubeconfig(path)
    config = json.loads(path.read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    path.write_text(json.dumps(config))
    return path


# -- one replica --------------------------------------------------------------------------------------------


async def test_one_replica_creates_the_lease_renews_it_and_leads(fake, kubeconfig, tmp_path):
    async with coordinator(tmp_path, kubeconfig, "replica-a") as a:
        await eventually(a.is_leader, timeout=3)
        created = lease(fake)
        spec = created["spec"]
        assert spec["holderIdentity"] == "replica-a"
        assert spec["leaseTransitions"] == 0 and spec["leaseDurationSeconds"] == 2
        assert spec["acquireTime"].endswith("Z") and len(spec["acquireTime"]) == len("2026-12-06T13:00:00.123456Z")
        first = spec["renewTime"]
        await eventually(lambda: lease(fake)["spec"]["renewTime"] > first, timeout=3, message="a renewal")
        assert lease(fake)["spec"]["acquireTime"] == spec["acquireTime"]  # a renewal is not a new acquisition
        assert a.is_leader()
        health = a.health()
        assert health["ready"] and "reason" not in health
        assert health["leader"] is True and health["holder"] == "replica-a" and health["identity"] == "replica-a"
        assert health["lease"] == "default/collector" and health["transitions"] == 0
        assert leader_gauge(a) == 1.0
        registry = a.ctx.telemetry.metrics.registry
        assert registry.get_sample_value("collector_kubernetes_lease_transitions_total", {"coordinator": a.id}) == 1
    assert not a.is_leader() and leader_gauge(a) == 0.0


# -- two replicas -------------------------------------------------------------------------------------------


async def test_one_of_two_leads_and_a_partitioned_leader_stops_before_the_other_starts(fake, tmp_path, caplog):
    async with partitioned(fake) as net_a, partitioned(fake) as net_b:
        config_a = kubeconfig_via(fake, tmp_path / "kubeconfig-a", net_a.port)
        config_b = kubeconfig_via(fake, tmp_path / "kubeconfig-b", net_b.port)
        async with (
            coordinator(tmp_path, config_a, "replica-a") as a,
            coordinator(tmp_path, config_b, "replica-b") as b,
        ):
            with Recorder({"replica-a": a, "replica-b": b}) as rec:
                leaders = await eventually(lambda: list(rec.first_true), timeout=3)
                assert len(leaders) == 1
                old, new = (a, b) if leaders == [a.identity] else (b, a)
                old_net = net_a if old is a else net_b
                # Both see the same holder; the standby is healthy.
                await eventually(lambda: new.health()["holder"] == old.identity and new.health()["ready"], timeout=3)
                assert old.is_leader() and not new.is_leader()

                old_net.split()  # the leader can no longer renew (nor learn that it lost)
                await eventually(lambda: new.identity in rec.first_true, timeout=5, message="the standby takes over")
            assert rec.overlaps == 0
            # Fencing: the old leader stopped claiming leadership before the new one started.
            assert rec.first_false[old.identity] < rec.first_true[new.identity], (rec.first_false, rec.first_true)
            taken = lease(fake)["spec"]
            assert taken["holderIdentity"] == new.identity and taken["leaseTransitions"] == 1
            health = old.health()
            assert health["leader"] is False and health["ready"] is False
            assert "cannot reach the API server" in health["reason"] and "Lease collector" in health["reason"]
            # One line for the outage (not one per retry), one for the loss, with why.
            messages = [r.getMessage() for r in caplog.records]
            assert sum("cannot reach the API server" in m and "retrying every 200ms" in m for m in messages) == 1
            lost = [m for m in messages if "lost the Lease collector in namespace default" in m]
            assert len(lost) == 1 and "renew failed for 1s: read the Lease" in lost[0], lost

            old_net.cut = False  # the network heals: the old leader becomes a healthy standby
            await eventually(lambda: old.health()["ready"] and old.health()["holder"] == new.identity, timeout=3)
            assert new.is_leader() and not old.is_leader()


async def test_an_outage_that_begins_during_a_renewal_is_logged_once(fake, tmp_path, caplog):
    # The partition above may land between a renewal's read and its write; here it always does, so that
    # the outage is first met by the write (update) and then by every read after it: still one line.
    caplog.set_level(logging.INFO, logger="collector.coordinator")
    async with partitioned(fake) as net:
        config = kubeconfig_via(fake, tmp_path / "kubeconfig", net.port)
        async with coordinator(tmp_path, config, "replica-a") as a:
            await eventually(a.is_leader, timeout=3)
            call, cut_at_write = a._call, []

            async def cutting_call(fn: Any, *args: Any) -> dict[str, Any]:
                if getattr(fn, "__name__", "") == "replace_lease" and not cut_at_write:
                    net.split()
                    cut_at_write.append(True)
                return await call(fn, *args)

            a._call = cutting_call  # type: ignore[method-assign]
            await eventually(lambda: cut_at_write, timeout=3)
            lost = await eventually(
                lambda: [m for r in caplog.records if "lost the Lease collector" in (m := r.getMessage())],
                timeout=3,
                message="the loss at the renew deadline",
            )
            assert not a.is_leader()
            assert len(lost) == 1 and "read the Lease collector" in lost[0], lost  # the reads failed too, unlogged
            messages = [r.getMessage() for r in caplog.records]
            failures = [m for m in messages if "cannot reach the API server" in m and "retrying every 200ms" in m]
            assert len(failures) == 1 and "update the Lease collector" in failures[0], failures
            net.cut = False
            await eventually(a.is_leader, timeout=3)
            assert sum("is usable again" in r.getMessage() for r in caplog.records) == 1
            assert a.health()["ready"]


async def test_graceful_shutdown_releases_the_lease_and_the_standby_leads_at_once(fake, kubeconfig, tmp_path):
    async with coordinator(tmp_path, kubeconfig, "replica-a") as a:
        await eventually(a.is_leader, timeout=3)
        async with coordinator(tmp_path, kubeconfig, "replica-b") as b:
            await eventually(lambda: b.health()["holder"] == "replica-a", timeout=3)
            assert a._api is not None
            replace, leading_at_release = a._api.replace_lease, []

            def spying_replace(body: dict[str, Any]) -> dict[str, Any]:
                if body["spec"]["holderIdentity"] == "":
                    leading_at_release.append(a.is_leader())
                return replace(body)

            a._api.replace_lease = spying_replace  # type: ignore[method-assign]
            await a.shutdown(5.0)
            released = time.monotonic()
            assert leading_at_release == [False]  # it stopped claiming leadership before releasing
            await eventually(b.is_leader, timeout=3)
            # Much sooner than the 2 s lease duration a standby waits out after a crash.
            assert time.monotonic() - released < 1.2
            spec = lease(fake)["spec"]
            assert spec["holderIdentity"] == "replica-b" and spec["leaseTransitions"] == 1


async def test_a_conflicting_write_between_read_and_update_wins_the_round(fake, kubeconfig, tmp_path):
    now = "2026-12-06T13:00:00.000000Z"
    fake.create(
        "leases",
        {
            "metadata": {"name": "collector", "namespace": "default"},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now, "leaseTransitions": 4},
        },
    )
    config = LeaseConfig.model_validate({"kubeconfig": kubeconfig, "identity": "replica-a", **FAST})
    ctx = ComponentContext(id="kubernetes_lease", kind="coordinator", storage_dir=tmp_path, telemetry=Telemetry())
    a = LeaseCoordinator(ctx, config)
    call, bumped = a._call, []

    async def racing_call(fn: Any, *args: Any) -> dict[str, Any]:
        if getattr(fn, "__name__", "") == "replace_lease" and not bumped:
            rival = lease(fake)  # a rival takes the free Lease after our read, before our write
            rival["spec"].update(holderIdentity="rival", leaseDurationSeconds=2, renewTime=now, leaseTransitions=5)
            bumped.append(fake.update("leases", rival)["metadata"]["resourceVersion"])
        return await call(fn, *args)

    a._call = racing_call  # type: ignore[method-assign]
    await a.start()
    try:
        with Recorder({"a": a}) as rec:
            await eventually(lambda: bumped, timeout=3)

            def lease_calls() -> list[str]:
                return [method for method, path, _ in fake.requests if path == LEASE_PATH]

            await eventually(lambda: "PUT" in lease_calls(), timeout=3)
            # The round after the conflict read the rival's record and waits it out.
            await eventually(lambda: "GET" in (calls := lease_calls())[calls.index("PUT") + 1 :], timeout=3)
            await eventually(lambda: a.health()["holder"] == "rival", timeout=3)
            assert "a" not in rec.first_true, "led on a round whose write was refused"
            assert lease(fake)["spec"]["holderIdentity"] == "rival"
            assert a.health()["ready"], "a lost race is not a problem"
            # The rival never renews: after its 2 s, measured on our clock, we take over.
            await eventually(a.is_leader, timeout=4)
        assert lease(fake)["spec"]["holderIdentity"] == "replica-a" and lease(fake)["spec"]["leaseTransitions"] == 6
    finally:
        await a.shutdown(5.0)


# -- watermarks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["lease", "configmap"])
async def test_the_watermark_is_handed_over_and_only_the_leader_moves_it(fake, kubeconfig, tmp_path, where):
    key = watermark_key("kubernetes/pods")
    assert key == "collector.openmeter.io/watermark.kubernetes.pods"

    def stored() -> str | None:
        if where == "lease":
            return lease(fake)["metadata"].get("annotations", {}).get(key)
        configmap = fake.get("configmaps", "default", "collector-watermarks")
        return None if configmap is None else configmap["data"].get(key)

    async with coordinator(tmp_path, kubeconfig, "replica-a", watermarks=where) as a:
        await eventually(a.is_leader, timeout=3)
        async with coordinator(tmp_path, kubeconfig, "replica-b", watermarks=where) as b:
            await eventually(lambda: b.health()["holder"] == "replica-a", timeout=3)  # a connected standby
            assert await b.load_watermark("kubernetes/pods") is None
            await a.save_watermark("kubernetes/pods", T)
            assert stored() == "2026-12-06T13:33:20.000000Z"
            assert await b.load_watermark("kubernetes/pods") == T  # a standby reads the shared value
            with pytest.raises(NotLeaderError, match="does not hold the Lease"):
                await b.save_watermark("kubernetes/pods", T + 60)  # fenced: a non-leader moves nothing
            assert stored() == "2026-12-06T13:33:20.000000Z"

            await a.shutdown(5.0)
            with pytest.raises(NotLeaderError):
                await a.save_watermark("kubernetes/pods", T + 120)
            await eventually(b.is_leader, timeout=3)
            assert await b.load_watermark("kubernetes/pods") == T
            await b.save_watermark("kubernetes/pods", T + 60.5)
            assert await b.load_watermark("kubernetes/pods") == T + 60.5
            assert stored() == "2026-12-06T13:34:20.500000Z"
            assert lease(fake)["spec"]["holderIdentity"] == "replica-b"


# -- errors ---------------------------------------------------------------------------------------------------


async def test_forbidden_leases_make_it_unready_with_the_rbac_rule_and_it_recovers(fake, kubeconfig, tmp_path):
    fake.deny(403, resource="leases")
    async with coordinator(tmp_path, kubeconfig, "replica-a") as a:
        health = await eventually(lambda: (h := a.health()).get("reason") and h, timeout=3)
        assert health["ready"] is False and health["state"] == "running" and not a.is_leader()
        assert "forbidden (403)" in health["reason"] and 'cannot get resource "leases"' in health["reason"]
        assert "get, create and update on leases (API group coordination.k8s.io)" in health["reason"]
        fake.allow()
        await eventually(a.is_leader, timeout=3)
        health = a.health()
        assert health["ready"] and "reason" not in health


async def test_a_malformed_kubeconfig_is_a_reason_until_it_is_fixed(fake, tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [this is not a kubeconfig\n")
    async with coordinator(tmp_path, broken, "replica-a") as a:
        health = await eventually(lambda: (h := a.health()).get("reason") and h, timeout=3)
        assert "kubeconfig" in health["reason"] and health["ready"] is False
        fake.write_kubeconfig(broken)
        await eventually(a.is_leader, timeout=3)
        assert a.health()["ready"]


# -- configuration ---------------------------------------------------------------------------------------------


async def test_namespace_and_identity_come_from_the_downward_api(fake, kubeconfig, tmp_path, monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    monkeypatch.setenv("POD_NAME", "collector-7f9c-x2")
    async with coordinator(tmp_path, kubeconfig, None) as a:
        await eventually(a.is_leader, timeout=3)
        assert lease(fake, "team-a")["spec"]["holderIdentity"] == "collector-7f9c-x2"
        assert a.health()["lease"] == "team-a/collector"


async def test_without_the_downward_api_the_kubeconfig_namespace_and_a_unique_identity(fake, tmp_path):
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig", namespace="team-b")
    async with coordinator(tmp_path, kubeconfig, None) as a, coordinator(tmp_path, kubeconfig, None) as b:
        await eventually(lambda: a.is_leader() or b.is_leader(), timeout=3)
        assert a.identity != b.identity
        assert a.identity.startswith(socket.gethostname() + "-") and b.identity.startswith(socket.gethostname() + "-")
        assert lease(fake, "team-b")["spec"]["holderIdentity"] in (a.identity, b.identity)


def test_timing_validators_keep_the_leader_fenced() -> None:
    config = LeaseConfig.model_validate({})
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (15.0, 10.0, 2.0)
    assert config.name == "collector" and config.watermarks == "lease" and config.namespace is None
    with pytest.raises(
        ValidationError, match=re.escape("renew_deadline (10s) must be shorter than lease_duration (10s)")
    ):
        LeaseConfig.model_validate({"lease_duration": "10s", "renew_deadline": "10s"})
    with pytest.raises(ValidationError, match=re.escape("retry_period (5s) must be shorter than renew_deadline (5s)")):
        LeaseConfig.model_validate({"renew_deadline": "5s", "retry_period": "5s"})
    with pytest.raises(ValidationError, match="watermarks"):
        LeaseConfig.model_validate({"watermarks": "etcd"})
    with pytest.raises(ValidationError, match="name"):
        LeaseConfig.model_validate({"name": "Not_A_DNS_Name"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        LeaseConfig.model_validate({"lease_duraton": "20s"})
