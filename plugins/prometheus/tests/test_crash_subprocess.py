"""A real `collector run` with the prometheus receiver, SIGKILLed and restarted.

The collector runs on the real clock with 1-second windows against the real
Prometheus, delivering to the fake OpenMeter.  It is killed with SIGKILL in the
middle and started again on the same storage directory a few windows later.
The oracle: every window from the first one to the saved watermark is either
delivered or still durably queued (none lost, including those of the downtime,
which are backfilled), no window has two different ids, and every id is the
one an uninterrupted run computes for that window.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.events import format_time, stable_id
from collector.state import StateStore
from collector.testing import eventually_sync
from support.collector_proc import CollectorProcess, collector_config, free_port, read_queue_ids
from support.fake_openmeter import FakeOpenMeter

QUERY = {"name": "ticks", "query": 'label_replace(vector(1), "subject", "acme", "", "")'}


def unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def wait(condition: Any, timeout: float, what: str, proc: CollectorProcess) -> None:
    try:
        eventually_sync(condition, timeout=timeout, interval=0.05, message=what)
    except AssertionError as exc:
        raise TimeoutError(f"{exc}\n{proc.log_tail()}") from None


@pytest.mark.slow
def test_sigkill_and_restart_lose_nothing_and_keep_ids(prometheus, tmp_path: Path):
    storage = tmp_path / "storage"
    with FakeOpenMeter.in_thread() as fake:
        cfg = collector_config(
            storage=storage, openmeter_url=fake.url, receiver_port=free_port(), admin_port=free_port()
        )
        cfg["receivers"]["prometheus"] = {
            "url": prometheus.url,
            "interval": "1s",
            "offset": "0s",
            "retry_initial": "100ms",
            "retry_max": "500ms",
            "queries": [QUERY],
        }
        cfg["service"]["pipelines"]["events"]["receivers"].append("prometheus")
        with CollectorProcess(tmp_path / "collector", cfg) as proc:
            proc.start()
            proc.wait_started(timeout=30)
            wait(lambda: len(fake.arrivals) >= 3, 20, "3 windows delivered", proc)
            proc.kill()
            killed_at = time.time()
            time.sleep(2.5)  # windows come due while it is down
            proc.start()
            proc.wait_started(timeout=30)
            wait(
                lambda: any(unix(e["time"]) >= killed_at + 3 for e in fake.arrivals),
                20,
                "windows after the restart delivered",
                proc,
            )
            proc.stop()
        queued = read_queue_ids(proc.queue_db)

    store = StateStore(storage / "receivers" / "prometheus" / "state.sqlite")
    try:
        watermark = float(store.get("watermark", "prometheus"))
    finally:
        store.close()

    arrivals = fake.arrivals
    first = min(unix(e["time"]) for e in arrivals)
    expected = {
        stable_id("prometheus", "ticks", [["subject", "acme"]], _rfc3339(t)): t
        for t in _range(first, watermark)  # window starts from the first window up to the watermark
    }
    delivered = {e["id"] for e in arrivals}
    still_queued = {event_id for (_source, event_id) in queued}
    missing = sorted(t for i, t in expected.items() if i not in delivered | still_queued)
    assert not missing, f"windows lost: {missing}"
    assert delivered <= set(expected), "an id that an uninterrupted run would not produce"
    # A window sent twice (committed before the kill, not yet marked) is the same event, byte for byte.
    by_id: dict[str, dict[str, Any]] = {}
    for e in arrivals:
        assert by_id.setdefault(e["id"], e) == e
    assert all(e["time"] == _rfc3339(expected[e["id"]]) and e["data"] == {"subject": "acme", "value": 1.0}
               for e in arrivals)  # fmt: skip
    downtime = [t for t in expected.values() if killed_at <= t < killed_at + 2]
    assert downtime and all(t < watermark for t in downtime)  # the downtime's windows were backfilled
    assert len(expected) >= 8


def _range(start: float, end: float) -> list[float]:
    return [start + i for i in range(round(end - start))]


def _rfc3339(t: float) -> str:
    return format_time(datetime.fromtimestamp(t, UTC))
