"""The list/watch informer against the fake API server, through the official client and a kubeconfig.

What a user would notice: every change delivered once and in order, a relist only when the server says
410 Gone, a cache that says honestly up to when it is complete (frozen during an outage), one log line
per problem, recovery once RBAC or the server is fixed, selectors applied by the server, a prompt stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from collector_plugin_kubernetes.client import ClientConfig, new_api_client
from collector_plugin_kubernetes.informer import SETTLE, Informer
from fakeapi import FakeKubeAPI
from k8sobjects import node, pod

from collector.testing import eventually

LOGGER = "test.informer"


class Recorder:
    """What the informer delivered, as (names, time) and (type, name, time)."""

    def __init__(self) -> None:
        self.replaces: list[tuple[list[str], float]] = []
        self.events: list[tuple[str, str, float]] = []

    def on_replace(self, items: list[dict[str, Any]], at: float) -> None:
        self.replaces.append((sorted(i["metadata"]["name"] for i in items), at))

    def on_event(self, kind: str, obj: dict[str, Any], at: float) -> None:
        self.events.append((kind, obj["metadata"]["name"], at))

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, name) for kind, name, _ in self.events]


Make = Callable[..., Awaitable[tuple[Informer, Recorder]]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def make(fake: FakeKubeAPI, tmp_path: Path) -> AsyncIterator[Make]:
    """Start an informer on the fake (fast backoff); stopped at the end of the test."""
    started: list[Informer] = []

    async def _make(resource: str = "pods", *, token: str | None = None, **kwargs: Any) -> tuple[Informer, Recorder]:
        path = fake.write_kubeconfig(tmp_path / f"kubeconfig-{len(started)}", token=token)
        client = await asyncio.to_thread(new_api_client, ClientConfig(kubeconfig=path), "test")
        recorder = Recorder()
        options: dict[str, Any] = {
            "backoff_initial": 0.05,
            "backoff_max": 0.2,
            "watch_timeout": 30,
            "read_timeout": 5,
            "log": logging.getLogger(LOGGER),
            **kwargs,
        }
        informer = Informer(client, resource, on_replace=recorder.on_replace, on_event=recorder.on_event, **options)
        started.append(informer)
        informer.start()
        return informer, recorder

    yield _make
    for informer in started:
        await asyncio.to_thread(informer.stop, 2.0)


def watch_requests(fake: FakeKubeAPI, path: str = "/api/v1/pods") -> list[dict[str, str]]:
    return [q for m, p, q in fake.requests if p == path and q.get("watch") in ("true", "1", "True")]


def list_requests(fake: FakeKubeAPI, path: str = "/api/v1/pods") -> list[dict[str, str]]:
    return [q for m, p, q in fake.requests if p == path and "watch" not in q]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


async def test_list_then_watch_delivers_changes_in_order(fake: FakeKubeAPI, make: Make) -> None:
    fake.create("pods", pod("a"))
    fake.create("pods", pod("b", namespace="other"))
    before = time.time()
    informer, rec = await make()
    assert await informer.wait_synced(5)
    assert rec.replaces[0][0] == ["a", "b"]
    assert before <= rec.replaces[0][1] <= time.time()
    await eventually(lambda: fake.watchers("pods") == 1)

    fake.create("pods", pod("c"))
    changed = pod("a", labels={"team": "x"})
    fake.update("pods", changed)
    fake.delete("pods", "other", "b")
    await eventually(lambda: len(rec.events) == 3, timeout=5)
    assert rec.kinds() == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert informer.events == 3
    await eventually(lambda: informer.resource_version == fake.resource_version)
    assert informer.relists == 0 and informer.error is None
    assert len(rec.replaces) == 1


async def test_complete_through_is_none_before_the_first_list(fake: FakeKubeAPI, make: Make) -> None:
    fake.deny(403, verb="list", resource="pods")
    informer, _ = await make()
    await eventually(lambda: informer.error is not None, timeout=5)
    assert informer.complete_through() is None
    assert not await informer.wait_synced(0.1)


async def test_bookmarks_advance_the_resource_version_without_events(fake: FakeKubeAPI, make: Make) -> None:
    fake.bookmark_interval = 0.1
    fake.create("pods", pod("a"))
    informer, rec = await make()
    assert await informer.wait_synced(5)
    listed = informer.resource_version
    fake.create("nodes", node("n1"))  # moves the global resourceVersion; no pod changed
    fake.create("nodes", node("n2"))
    assert int(fake.resource_version) > int(listed or 0)
    await eventually(lambda: informer.resource_version == fake.resource_version, timeout=5)
    assert rec.events == [] and informer.events == 0


async def test_compaction_relists_once_with_the_current_state_and_watching_resumes(
    fake: FakeKubeAPI, make: Make
) -> None:
    fake.bookmark_interval = 60  # no bookmark may refresh the resourceVersion behind the test's back
    fake.create("pods", pod("a"))
    fake.create("pods", pod("gone"))
    informer, rec = await make()
    assert await informer.wait_synced(5)
    await eventually(lambda: fake.watchers("pods") == 1)

    fake.outage(True)  # the stream breaks; meanwhile the store changes and its history is compacted
    fake.delete("pods", "default", "gone")
    fake.create("pods", pod("b"))
    fake.compact()
    await eventually(lambda: informer.error is not None, timeout=5)
    fake.outage(False)

    await eventually(lambda: len(rec.replaces) == 2, timeout=5)
    assert rec.replaces[1][0] == ["a", "b"]  # the state now, including what the dead stream missed
    assert informer.relists == 1
    await eventually(lambda: informer.error is None, timeout=5)
    fake.update("pods", pod("a", labels={"v": "2"}))
    await eventually(lambda: rec.kinds() == [("MODIFIED", "a")], timeout=5)
    assert informer.relists == 1 and len(rec.replaces) == 2
    assert len(list_requests(fake)) == 2


async def test_watch_timeout_rewatches_from_the_last_version_without_relisting(fake: FakeKubeAPI, make: Make) -> None:
    fake.create("pods", pod("a"))
    informer, rec = await make(watch_timeout=1)
    assert await informer.wait_synced(5)
    await eventually(lambda: informer.watch_restarts >= 2, timeout=6)
    fake.create("pods", pod("b"))
    await eventually(lambda: rec.kinds() == [("ADDED", "b")], timeout=5)
    assert informer.relists == 0 and len(rec.replaces) == 1
    assert len(list_requests(fake)) == 1
    watches = watch_requests(fake)
    assert len(watches) >= 3
    assert all(q.get("resourceVersion") and q.get("timeoutSeconds") == "1" for q in watches)
    assert informer.error is None


async def test_outage_freezes_complete_through_logs_once_and_recovers(
    fake: FakeKubeAPI, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    fake.bookmark_interval = 0.1
    fake.create("pods", pod("a"))
    informer, rec = await make()
    assert await informer.wait_synced(5)
    listed = rec.replaces[0][1]
    await eventually(lambda: (informer.complete_through() or 0) > time.time() - 0.05, timeout=5)
    await eventually(lambda: time.time() > listed + 1.0)  # let bookmarks arrive well after the list

    fake.outage(True)
    cut = time.time()
    await eventually(lambda: informer.error is not None, timeout=5)
    frozen = informer.complete_through()
    # Frozen at the last bookmark received (every 0.1 s), not at the list, and not later than the cut.
    assert frozen is not None and listed + 0.5 < frozen <= cut
    assert "503" in (informer.error or "")
    tries = len(fake.requests)
    await eventually(lambda: len(fake.requests) >= tries + 3, timeout=5)  # it keeps retrying
    assert informer.complete_through() == frozen
    assert len(warnings_of(caplog)) == 1

    fake.outage(False)
    back = time.time()
    await eventually(lambda: informer.error is None, timeout=5)
    await eventually(lambda: (informer.complete_through() or 0) > back, timeout=5)
    assert informer.relists == 0
    assert any("recovered" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert len(warnings_of(caplog)) == 1


async def test_forbidden_watch_names_rbac_keeps_retrying_and_recovers(
    fake: FakeKubeAPI, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    fake.deny(403, verb="watch", resource="pods")
    fake.create("pods", pod("a"))
    informer, rec = await make(namespace="default")
    assert await informer.wait_synced(5)
    await eventually(lambda: informer.error is not None, timeout=5)
    error = informer.error or ""
    assert "forbidden" in error and "RBAC" in error and "watch" in error
    path = "/api/v1/namespaces/default/pods"
    await eventually(lambda: len(watch_requests(fake, path)) >= 4, timeout=5)
    assert len(warnings_of(caplog)) == 1
    assert informer.complete_through() == rec.replaces[0][1]  # only the list is known

    fake.allow()
    await eventually(lambda: informer.error is None, timeout=5)
    fake.create("pods", pod("b"))
    await eventually(lambda: rec.kinds() == [("ADDED", "b")], timeout=5)
    assert len(list_requests(fake, path)) == 1  # the list stayed valid: no relist


async def test_bad_token_is_401_and_not_fatal(fake: FakeKubeAPI, make: Make, caplog: pytest.LogCaptureFixture) -> None:
    informer, _ = await make(token="wrong-token")
    await eventually(lambda: informer.error is not None, timeout=5)
    assert "401" in (informer.error or "") and "credentials" in (informer.error or "")
    assert "wrong-token" not in (informer.error or "")
    await eventually(lambda: len(list_requests(fake)) >= 3, timeout=5)
    assert informer.complete_through() is None
    assert len(warnings_of(caplog)) == 1
    assert all("wrong-token" not in r.getMessage() for r in caplog.records)


async def test_namespace_and_selectors_are_applied_by_the_server(fake: FakeKubeAPI, make: Make) -> None:
    fake.create("pods", pod("web", namespace="team-a", labels={"app": "web"}))
    fake.create("pods", pod("db", namespace="team-a", labels={"app": "db"}))
    fake.create("pods", pod("pending", namespace="team-a", labels={"app": "web"}, phase="Pending"))
    fake.create("pods", pod("elsewhere", namespace="team-b", labels={"app": "web"}))
    informer, rec = await make(namespace="team-a", label_selector="app=web", field_selector="status.phase=Running")
    assert await informer.wait_synced(5)
    assert rec.replaces[0][0] == ["web"]
    await eventually(lambda: fake.watchers("pods") == 1)
    fake.create("pods", pod("web-2", namespace="team-b", labels={"app": "web"}))
    fake.create("pods", pod("web-3", namespace="team-a", labels={"app": "web"}))
    await eventually(lambda: rec.kinds() == [("ADDED", "web-3")], timeout=5)

    paths = {p for _, p, _ in fake.requests}
    assert paths == {"/api/v1/namespaces/team-a/pods"}  # nothing cluster-wide
    for query in fake.requests:
        assert query[2]["labelSelector"] == "app=web"
        assert query[2]["fieldSelector"] == "status.phase=Running"
    watch = watch_requests(fake, "/api/v1/namespaces/team-a/pods")[0]
    assert watch["allowWatchBookmarks"] in ("true", "True")
    assert watch["resourceVersion"] and watch["timeoutSeconds"] == "30"


async def test_stop_returns_promptly_while_a_watch_is_open(fake: FakeKubeAPI, make: Make) -> None:
    fake.bookmark_interval = 60  # a silent stream: nothing but stop() can end the blocked read
    informer, _ = await make(watch_timeout=300)
    assert await informer.wait_synced(5)
    await eventually(lambda: fake.watchers("pods") == 1)
    began = time.monotonic()
    await asyncio.to_thread(informer.stop, 5.0)
    assert time.monotonic() - began < 2.0
    assert informer._thread is not None and not informer._thread.is_alive()
    await eventually(lambda: fake.watchers("pods") == 0, timeout=3)


async def test_paging_delivers_every_item(fake: FakeKubeAPI, make: Make) -> None:
    for i in range(5):
        fake.create("pods", pod(f"p{i}"))
    informer, rec = await make(page_size=2)
    assert await informer.wait_synced(5)
    assert rec.replaces[0][0] == [f"p{i}" for i in range(5)]
    lists = list_requests(fake)
    assert len(lists) == 3 and all(q["limit"] == "2" for q in lists)
    assert [bool(q.get("continue")) for q in lists] == [False, True, True]
    fake.create("pods", pod("p5"))
    await eventually(lambda: rec.kinds() == [("ADDED", "p5")], timeout=5)


async def test_complete_through_waits_for_a_fresh_stream_to_catch_up(fake: FakeKubeAPI, make: Make) -> None:
    fake.bookmark_interval = 60
    informer, rec = await make()
    assert await informer.wait_synced(5)
    listed = rec.replaces[0][1]
    await eventually(lambda: fake.watchers("pods") == 1)
    # Open, but no bookmark yet: complete only through the list until the stream has run SETTLE seconds.
    assert informer.complete_through() == listed
    await asyncio.sleep(SETTLE)  # the rule under test is about elapsed time itself
    now = time.time()
    assert (informer.complete_through() or 0) >= now


async def test_cluster_scoped_kinds(fake: FakeKubeAPI, make: Make) -> None:
    fake.create("nodes", node("n1"))
    informer, rec = await make("nodes")
    assert await informer.wait_synced(5)
    assert rec.replaces[0][0] == ["n1"]
    fake.create("nodes", node("n2"))
    await eventually(lambda: rec.kinds() == [("ADDED", "n2")], timeout=5)
    with pytest.raises(ValueError, match="cluster-scoped"):
        Informer(informer_client(informer), "nodes", namespace="x", on_replace=rec.on_replace, on_event=rec.on_event)
    with pytest.raises(ValueError, match="unknown resource"):
        Informer(informer_client(informer), "services", on_replace=rec.on_replace, on_event=rec.on_event)


def informer_client(informer: Informer) -> Any:
    return informer._list_fn.__self__.api_client  # type: ignore[attr-defined]
