"""`collector dlq list|replay|drop` through the real CLI against the fake OpenMeter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout
from support.fake_openmeter import FakeOpenMeter


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "collector"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def ev(i: int) -> dict:
    return {"specversion": "1.0", "id": f"dl-{i}", "source": "dlq-test", "type": "t", "subject": "s"}


@pytest.fixture
def fake():
    with FakeOpenMeter.in_thread(token="om-token-xyz") as fake:
        yield fake


@pytest.fixture
def setup(tmp_path: Path, fake) -> tuple[Path, DeadLetterStore]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
receivers: {{http: {{endpoint: "127.0.0.1:0"}}}}
exporters:
  openmeter:
    url: {fake.url}
    token: om-token-xyz
    batch: {{max_events: 50}}
    retry: {{initial_interval: 0.01, max_interval: 0.1}}
storage: {{directory: {tmp_path / "data"}}}
service: {{pipelines: {{p: {{receivers: [http], exporters: [openmeter]}}}}}}
"""
    )
    store = DeadLetterStore(StorageLayout(tmp_path / "data").exporter_deadletters("openmeter"))
    store.add([ev(i) for i in range(120)], "rejected", status=400, body='{"detail":"bad"}')
    return cfg, store


def test_list_shows_entries_with_reason(setup):
    cfg, _ = setup
    out = cli("dlq", "list", "-c", str(cfg), "--limit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "openmeter: 120 dead letter(s), showing 3"
    assert "rejected 400 id=dl-0 subject=s" in lines[1]
    js = [json.loads(x) for x in cli("dlq", "list", "-c", str(cfg), "--json", "--ids", "5,6").stdout.splitlines()]
    assert [(j["id"], j["event"]["id"]) for j in js] == [(5, "dl-4"), (6, "dl-5")]


def test_replay_delivers_and_keeps_what_is_rejected_again(setup, fake):
    cfg, store = setup
    fake.reject_ids({"dl-7"})
    out = cli("dlq", "replay", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "replayed 120 event(s): 119 delivered, 1 dead-lettered again" in out.stdout
    assert "replay openmeter" in out.stderr  # the progress bar
    assert {i for (_, i) in fake.ids()} == {f"dl-{i}" for i in range(120)} - {"dl-7"}
    left = store.list()
    assert [d.event["id"] for d in left] == ["dl-7"] and left[0].status == 400
    assert "om-token-xyz" not in out.stdout + out.stderr


def test_replay_times_out_and_keeps_entries_when_destination_is_down(setup, fake):
    cfg, store = setup
    fake.pause_listening_sync(None)
    out = cli("dlq", "replay", "-c", str(cfg), "--timeout", "1", "--no-progress")
    assert out.returncode == 1
    assert "replay timed out after 1s; 0 of 120 finished" in out.stderr
    assert store.count() == 120


def test_drop_by_ids_and_all(setup):
    cfg, store = setup
    out = cli("dlq", "drop", "-c", str(cfg))
    assert out.returncode == 2 and "--ids 1,2,3 or --all" in out.stderr
    assert cli("dlq", "drop", "-c", str(cfg), "--ids", "1,2").stdout.strip() == "openmeter: dropped 2 dead letter(s)"
    assert store.count() == 118
    assert cli("dlq", "drop", "-c", str(cfg), "--all").stdout.strip() == "openmeter: dropped 118 dead letter(s)"
    assert store.count() == 0


def test_processor_dead_letters_list_and_drop(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"""
receivers: {{http: {{endpoint: "127.0.0.1:0"}}}}
processors: {{mapping/m: {{expression: "this.x + 1", on_error: dead_letter}}}}
exporters: {{debug: {{}}}}
storage: {{directory: {tmp_path / "data"}}}
service: {{pipelines: {{p: {{receivers: [http], processors: [mapping/m], exporters: [debug]}}}}}}
"""
    )
    store = DeadLetterStore(tmp_path / "data" / "processors" / "mapping__m" / "p" / "deadletter.sqlite")
    store.add([{"x": "oops"}], "processor_error", body="mapping mapping/m failed: TypeError")
    out = cli("dlq", "list", "-c", str(cfg), "--processor", "mapping/m")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "mapping/m (pipeline p): 1 dead letter(s)"
    assert "processor_error" in out.stdout and "TypeError" in out.stdout
    replay = cli("dlq", "replay", "-c", str(cfg), "--processor", "mapping/m")
    assert replay.returncode == 2 and "collector map" in replay.stderr
    assert "dropped 1" in cli("dlq", "drop", "-c", str(cfg), "--processor", "mapping/m", "--all").stdout
    assert store.count() == 0
