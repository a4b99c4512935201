"""The storage directory belongs to one collector, and losing it or a queue is never silent.

Issue 10, points 2, 4 and 5, each through real ``collector`` processes
(tests/support/collector_proc.py) against the fake OpenMeter:

* 5: a second collector on the same storage directory exits at once with a
  message naming the PID of the one that holds it;
* 4: deleting or replacing the storage directory under a running collector
  turns intake into 503 and /ready into 503, logged once;
* 2: renaming an exporter leaves its queue behind: the next start says so
  (log, /health, a metric), and ``collector queue drain OLD --to NEW`` hands
  the events to the new exporter, which delivers each once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from collector.testing import eventually_sync
from support.collector_proc import (
    EXPORTER_ID,
    CollectorProcess,
    collector_command,
    collector_config,
    free_port,
    metric_sum,
)
from support.fake_openmeter import FakeOpenMeter

TOKEN = "storage-test-token"


def ev(i: int, prefix: str = "st") -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"{prefix}-{i}", "source": "storage-test", "type": "t", "subject": "s"}


def post(proc: CollectorProcess, events: list[dict[str, Any]]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        proc.ingest_url,
        data=json.dumps(events).encode(),
        headers={"Content-Type": "application/cloudevents-batch+json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    return subprocess.run([*collector_command(), *args], capture_output=True, text=True, env=env, timeout=120)


def log_records(proc: CollectorProcess) -> list[dict[str, Any]]:
    out = []
    for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@pytest.fixture
def fake():
    with FakeOpenMeter.in_thread(token=TOKEN) as fake:
        yield fake


def make(tmp_path: Path, name: str, storage: Path, url: str, **kw: Any) -> CollectorProcess:
    config = collector_config(
        storage=storage,
        openmeter_url=url,
        receiver_port=free_port(),
        admin_port=free_port(),
        exporter={"token": TOKEN},
        drain_timeout=kw.pop("drain_timeout", 1.0),
        **kw,
    )
    return CollectorProcess(tmp_path / name, config)


# -- 5: one collector per storage directory -------------------------------------------------


def test_second_collector_on_the_same_storage_exits_naming_the_holder(tmp_path: Path, fake: FakeOpenMeter) -> None:
    storage = tmp_path / "data"
    with (
        make(tmp_path, "first", storage, fake.url) as first,
        make(tmp_path, "second", storage, fake.url) as second,
    ):
        first.start()
        first.wait_started()
        second.start()
        assert second.proc is not None
        rc = second.proc.wait(timeout=30)
        assert rc == 1, second.log_tail()
        errors = [r for r in log_records(second) if r["level"] == "error"]
        assert len(errors) == 1, second.log_tail()
        msg = errors[0]["msg"]
        assert f"pid {first.pid}" in msg and str(storage) in msg, msg
        assert "Traceback" not in second.log_path.read_text()
        # The first one never noticed.
        assert post(first, [ev(1)])[0] in (200, 202, 204)
        fake.wait_for_ids_sync({"st-1"}, timeout=15)
        assert first.running
        # Once the first has stopped, the directory is free again.
        assert first.stop() == 0
        second.start()
        second.wait_started()
        assert post(second, [ev(2)])[0] in (200, 202, 204)
        fake.wait_for_ids_sync({"st-2"}, timeout=15)


# -- 4: the storage directory deleted or replaced while running ----------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_storage_lost_while_running_refuses_intake_and_is_not_ready(
    tmp_path: Path, fake: FakeOpenMeter, how: str
) -> None:
    storage = tmp_path / "data"
    with make(tmp_path, "c", storage, fake.url) as proc:
        proc.start()
        proc.wait_started()
        assert post(proc, [ev(1)])[0] in (200, 202, 204)
        fake.wait_for_ids_sync({"st-1"}, timeout=15)
        assert proc.get("/ready")[0] == 200

        if how == "deleted":
            shutil.rmtree(storage)
        else:
            storage.rename(tmp_path / "data.old")
            storage.mkdir()

        def refused() -> bool:
            return post(proc, [ev(2)])[0] == 503

        eventually_sync(refused, timeout=10, interval=0.1, message="intake refused once the storage is lost")
        # Refused for good, with a reason a client can read.
        status, body = post(proc, [ev(3)])
        assert status == 503 and b"storage" in body, body
        status, body = proc.get("/ready")
        assert status == 503, body
        assert any("storage" in r and how in r for r in json.loads(body)["reasons"]), body
        health = proc.health()
        assert health is not None and health["ready"] is False
        assert health["storage"]["lost"] and how in health["storage"]["lost"], health["storage"]
        errors = [r for r in log_records(proc) if r["level"] == "error" and "storage directory" in r["msg"]]
        assert len(errors) == 1, proc.log_tail()
        assert proc.running


# -- 2: a renamed exporter's queue ------------------------------------------------------------


def test_renamed_exporter_queue_is_reported_and_drained_into_the_new_one(tmp_path: Path, fake: FakeOpenMeter) -> None:
    storage = tmp_path / "data"
    dead_port = free_port()  # nothing listens there: exporter A keeps everything queued
    ids = {f"st-{i}" for i in range(60)}
    with make(tmp_path, "a", storage, f"http://127.0.0.1:{dead_port}", drain_timeout=0.3) as a:
        a.start()
        a.wait_started()
        for i in range(0, 60, 20):
            assert post(a, [ev(j) for j in range(i, i + 20)])[0] in (200, 202, 204)
        assert a.stop() == 0

    # The operator renames the exporter (and fixes its url).
    config = make(tmp_path, "unused", storage, fake.url).config
    config["exporters"] = {"openmeter/new": config["exporters"][EXPORTER_ID]}
    config["service"]["pipelines"]["events"]["exporters"] = ["openmeter/new"]
    with CollectorProcess(tmp_path / "b", config) as b:
        b.start()
        b.wait_started()
        warnings = [r for r in log_records(b) if r["level"] == "warning" and "exporters/openmeter" in r["msg"]]
        assert len(warnings) == 1 and "60 event(s)" in warnings[0]["msg"], b.log_tail()
        assert "collector queue drain openmeter --to openmeter/new" in warnings[0]["msg"]
        health = b.health()
        assert health is not None
        assert health["orphaned"]["openmeter"]["queue_events"] == 60, health.get("orphaned")
        assert metric_sum(b.metrics(), "collector_orphaned_queue_events", queue="openmeter") == 60
        # Draining needs the storage to itself.
        busy = cli("queue", "drain", "openmeter", "--to", "openmeter/new", "-c", str(b.config_path))
        assert busy.returncode == 1, busy.stdout + busy.stderr
        assert f"pid {b.pid}" in busy.stderr
        # Listing works beside a running collector.
        listed = cli("queue", "list", "-c", str(b.config_path))
        assert listed.returncode == 0, listed.stderr
        table, _, advice = listed.stdout.partition("\n\n")
        rows = {line.split()[0]: line for line in table.splitlines()[1:]}
        assert "1 orphaned directory" in advice and "collector queue drain" in advice, listed.stdout
        assert "60" in rows["openmeter"].split() and "orphaned" in rows["openmeter"], listed.stdout
        assert rows["openmeter__new"].split()[1:3] == ["openmeter/new", "0"], listed.stdout
        assert b.stop() == 0

        drained = cli("queue", "drain", "openmeter", "--to", "openmeter/new", "-c", str(b.config_path))
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "moved 60 event(s)" in drained.stdout, drained.stdout
        assert "drain openmeter" in drained.stderr  # the progress bar
        assert not (storage / "exporters" / "openmeter").exists()

        b.start()
        b.wait_started()
        fake.wait_for_ids_sync(ids, timeout=30)

        def drained() -> bool:
            doc = b.health() or {}
            new = doc.get("components", {}).get("exporters", {}).get("openmeter/new") or {}
            return new.get("queue", {}).get("events") == 0 and new.get("in_flight_events") == 0

        eventually_sync(drained, timeout=15, interval=0.05, message="openmeter/new drained")
        assert {i for (_s, i) in fake.ids()} == ids
        assert not fake.duplicates(), fake.duplicates()
        health = b.health()
        assert health is not None and not health.get("orphaned")
        assert metric_sum(b.metrics(), "collector_orphaned_queue_events") == 0
