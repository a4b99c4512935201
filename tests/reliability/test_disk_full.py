"""Backpressure when the queue is full or the disk is full, and recovery by itself.

docs/delivery.md ("Disk full"): when full, receivers refuse with HTTP 503 and
``Retry-After``, nothing already accepted is dropped, and "disk full (ENOSPC)
behaves the same and recovers by itself when space returns".

* ``test_queue_cap_*``: ``queue.max_bytes`` is hit (no disk trouble).
* ``test_enospc_*``: the storage directory is a small tmpfs (we run as root;
  skipped with the reason when mounting is not allowed) and ``max_bytes`` is
  larger than the tmpfs, so the refusal is a real ENOSPC from SQLite.
  - ``..._queue_fills_the_disk``: the fake OpenMeter stops listening, the queue
    itself fills the disk; then the fake comes back and the queue must drain,
    free its space and take data again.
  - ``..._other_file_fills_the_disk``: another file (ballast) fills the disk;
    it is deleted and intake must resume.
  - ``..._while_dead_lettering``: a poison event is rejected (400) while the
    disk is full, so writing its dead letter fails; once space returns the
    sender must finish by itself.

Every test ends by checking that every acknowledged id arrived.  Where the
product does not recover by itself, the test gathers the evidence, gives the
collector what it needs to finish (more space, a restart) so that the "no
acknowledged event is lost" half is still checked strictly, and then reports
the known product bug with ``pytest.xfail`` (``COLLECTOR_STRICT_KNOWN_BUGS=1``
turns those into failures).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from support.collector_proc import (
    EXPORTER_ID,
    CollectorProcess,
    collector_command,
    collector_config,
    free_port,
    metric_sum,
)
from support.fake_openmeter import FakeOpenMeter
from support.loadgen import make_event

STRICT_KNOWN_BUGS = os.environ.get("COLLECTOR_STRICT_KNOWN_BUGS") == "1"
BATCH = "application/cloudevents-batch+json"


def known_bug(message: str) -> None:
    # These were product bugs (intake never resumed after ENOSPC; the queue could
    # not drain a disk it had filled; a failed dead-letter write killed the
    # sender). They are fixed, so a recurrence fails the test.
    if True:
        pytest.fail(message)
    pytest.xfail(message)


# -- helpers -----------------------------------------------------------------------


class Sender:
    """Synchronous client that keeps the obligations (ids answered 2xx)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.seq = 0
        self.acked: set[tuple[str, str]] = set()
        self.refusals: list[tuple[int, str | None, str]] = []  # (status, Retry-After, detail)
        self.refused_events = 0

    def post(self, n: int = 50, pad: int = 300) -> tuple[int, str | None, str]:
        events = [make_event("diskfull", f"{self.prefix}-{self.seq + i}", pad=pad) for i in range(n)]
        self.seq += n
        req = urllib.request.Request(self.url, data=orjson.dumps(events), method="POST")
        req.add_header("Content-Type", BATCH)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                status, headers, body = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, body = exc.code, exc.headers, exc.read()
        detail = ""
        if body:
            with contextlib.suppress(ValueError):
                detail = str(json.loads(body).get("detail", ""))
        retry_after = headers.get("Retry-After")
        if 200 <= status < 300:
            self.acked.update(("diskfull", e["id"]) for e in events)
        else:
            self.refusals.append((status, retry_after, detail))
            self.refused_events += n
        return status, retry_after, detail


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {exc}")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    _mount_tmpfs(path, size)
    try:
        yield path
    finally:
        res = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
        if res.returncode != 0:  # something still holds it: detach it anyway
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, timeout=10)


def _df(path: Path) -> str:
    st = os.statvfs(path)
    return f"{st.f_bavail * st.f_frsize // 1024} KiB free of {st.f_blocks * st.f_frsize // 1024} KiB"


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _wait_recovered(proc: CollectorProcess, sender: Sender, timeout: float) -> bool:
    """Until the queue is empty AND a new request is accepted again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = proc.exporter_health()
        if h and h["queue"]["events"] == 0 and h["in_flight_events"] == 0:
            status, _, _ = sender.post(n=5, pad=10)
            if 200 <= status < 300:
                return True
        time.sleep(0.5)
    return False


def _identity(proc: CollectorProcess) -> dict[str, float]:
    return _identity_from(proc.metrics())


def _identity_from(s: dict[str, float]) -> dict[str, float]:
    ex = {"exporter": EXPORTER_ID}
    out = {
        "enqueued": metric_sum(s, "collector_exporter_enqueued_events_total", **ex),
        "delivered": metric_sum(s, "collector_exporter_delivered_events_total", **ex),
        "dead_lettered": metric_sum(s, "collector_exporter_dead_lettered_events_total", **ex),
        "queue_events": metric_sum(s, "collector_queue_events", **ex),
    }
    out["enqueued - (delivered + dead + queued)"] = out["enqueued"] - (
        out["delivered"] + out["dead_lettered"] + out["queue_events"]
    )
    return out


def _log_lines(proc: CollectorProcess, needle: str, limit: int = 3) -> list[str]:
    hits = []
    for line in proc.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if needle in line:
            with contextlib.suppress(ValueError):
                line = json.loads(line).get("msg", line)
            hits.append(line[:200])
    return hits[:limit] + ([f"... ({len(hits)} in all)"] if len(hits) > limit else [])


def _config(storage: Path, fake: FakeOpenMeter, **exporter: Any) -> dict[str, Any]:
    return collector_config(
        storage=storage,
        openmeter_url=fake.url,
        receiver_port=free_port(),
        admin_port=free_port(),
        exporter=exporter,
    )


def _assert_serving_while_refusing(proc: CollectorProcess) -> None:
    assert proc.get("/ping")[0] == 200, "the admin server must stay up while intake refuses"
    status, body = proc.get("/ready")
    assert status == 503, f"/ready must be false while the queue refuses: {status} {body!r}"
    assert b"refusing" in body, body


def _assert_503_with_retry_after(refusals: list[tuple[int, str | None, str]]) -> None:
    assert refusals, "the receiver never refused"
    for status, retry_after, detail in refusals:
        assert status == 503, (status, detail)
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, (retry_after, detail)


def _fill_disk(path: Path, limit_bytes: int) -> None:
    """Write zeros into ``path`` until ENOSPC (bounded by ``limit_bytes``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 65536
        for _ in range(limit_bytes // len(chunk) + 1):
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


# -- tests -------------------------------------------------------------------------


@pytest.mark.slow
def test_queue_cap_refuses_with_503_then_recovers(tmp_path: Path) -> None:
    with FakeOpenMeter.in_thread() as fake:
        cfg = _config(tmp_path / "storage", fake, queue={"max_bytes": 200_000})
        with CollectorProcess(tmp_path, cfg) as proc:
            proc.start()
            proc.wait_started()
            fake.pause_listening_sync(None)
            sender = Sender(proc.ingest_url, "cap")
            for _ in range(100):
                status, _, _ = sender.post()
                if status == 503:
                    break
            _assert_503_with_retry_after(sender.refusals)
            assert "full" in sender.refusals[0][2], sender.refusals
            _assert_serving_while_refusing(proc)
            acked_while_full = len(sender.acked)

            fake.resume_listening_sync()
            assert _wait_recovered(proc, sender, timeout=20), proc.log_tail()
            fake.wait_for_ids_sync(sender.acked, timeout=20)
            proc.wait_drained(timeout=20)
            samples = proc.metrics()
            assert proc.stop() == 0
    # The refusals are counted as such, and the books still balance.
    rx = {"receiver": "http"}
    received = metric_sum(samples, "collector_receiver_received_events_total", **rx)
    accepted = metric_sum(samples, "collector_receiver_accepted_events_total", **rx)
    refused = metric_sum(samples, "collector_receiver_refused_events_total", **rx)
    backpressure = metric_sum(samples, "collector_receiver_refused_events_total", reason="backpressure", **rx)
    assert accepted == len(sender.acked)
    assert backpressure == sender.refused_events
    assert received == accepted + refused
    books = _identity_from(samples)
    assert books["enqueued - (delivered + dead + queued)"] == 0, books
    print(f"\nqueue cap: acked {acked_while_full} events before the 503, {len(sender.acked)} in all, all arrived")


@pytest.mark.slow
def test_enospc_queue_fills_the_disk_then_drains_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "4m") as mnt, FakeOpenMeter.in_thread() as fake:
        # max_bytes far above the tmpfs: the refusal must come from the disk, here the
        # min_free_bytes reserve that keeps room for draining (a real ENOSPC is the next test).
        cfg = _config(mnt, fake, queue={"max_bytes": 64 * 1024 * 1024, "min_free_bytes": 1_500_000})
        with CollectorProcess(tmp_path / "work", cfg) as proc:
            proc.start()
            proc.wait_started()
            fake.pause_listening_sync(None)  # nothing leaves: the queue fills the disk
            sender = Sender(proc.ingest_url, "fill")
            for _ in range(400):
                status, _, _ = sender.post()
                if status != 204:
                    break
            _assert_503_with_retry_after(sender.refusals)
            assert "disk nearly full" in sender.refusals[0][2], f"expected a disk refusal: {sender.refusals[0]}"
            _assert_serving_while_refusing(proc)
            sender.post(n=1)  # still refused, still with Retry-After
            _assert_503_with_retry_after(sender.refusals)
            full_state = {"acked": len(sender.acked), "df": _df(mnt), "files": _files(mnt)}

            fake.resume_listening_sync()
            recovered = _wait_recovered(proc, sender, timeout=12)
            evidence: dict[str, Any] = {}
            if not recovered:
                evidence = {
                    "when full": full_state,
                    "12 s after the fake came back": {
                        "queue": (proc.exporter_health() or {}).get("queue"),
                        "df": _df(mnt),
                        "files": _files(mnt),
                        "last refusal": sender.refusals[-1],
                        "metrics": _identity(proc),
                        "log": _log_lines(proc, "database or disk is full"),
                    },
                }
                # Give space back from outside: does it recover then?
                _remount(mnt, "64m")
                recovered_with_space = _wait_recovered(proc, sender, timeout=6)
                evidence["after the tmpfs grew to 64m"] = {
                    "recovered": recovered_with_space,
                    "queue": (proc.exporter_health() or {}).get("queue"),
                    "last refusal": sender.refusals[-1],
                    "metrics": _identity(proc),
                }
                if not recovered_with_space:
                    # Data safety is still checked strictly: restart and drain.
                    proc.stop()
                    proc.start()
                    proc.wait_started()
                    proc.wait_drained(timeout=30)
            fake.wait_for_ids_sync(sender.acked, timeout=30)  # nothing acknowledged is lost
            assert proc.stop() == 0
    print(f"\nENOSPC (queue fills the disk): when full {full_state['acked']} acked; recovered by itself: {recovered}")
    if not recovered:
        stuck = evidence["12 s after the fake came back"]
        if not (stuck["queue"] and stuck["queue"]["events"] > 0 and stuck["log"]):
            pytest.fail("no recovery, but not the known WAL/ENOSPC stall: " + json.dumps(evidence, default=str))
        known_bug(
            "ENOSPC: the queue cannot drain after filling the disk itself -- every get()/ack() is a SQLite "
            "write into a WAL that has no room left, so nothing is acked, no space is freed and intake never "
            "resumes; all acked events arrived only after more space and/or a restart. Evidence: "
            + json.dumps(evidence, default=str)
        )


@pytest.mark.slow
def test_enospc_other_file_fills_the_disk_then_space_returns(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "8m") as mnt, FakeOpenMeter.in_thread() as fake:
        cfg = _config(mnt / "storage", fake, queue={"max_bytes": 64 * 1024 * 1024, "min_free_bytes": 0})
        with CollectorProcess(tmp_path / "work", cfg) as proc:
            proc.start()
            proc.wait_started()
            sender = Sender(proc.ingest_url, "ballast")
            for _ in range(10):
                assert sender.post()[0] == 204
            fake.wait_for_ids_sync(sender.acked, timeout=20)
            proc.wait_drained(timeout=20)
            # Park the sender so no ack is attempted while the disk is full: this
            # test is about intake coming back, not about acks failing.
            fake.pause_listening_sync(None)

            ballast = mnt / "ballast.bin"
            _fill_disk(ballast, 16 * 1024 * 1024)
            for _ in range(200):  # the WAL may have some room left: use it up
                status, _, _ = sender.post()
                if status != 204:
                    break
            _assert_503_with_retry_after(sender.refusals)
            assert "disk full" in sender.refusals[0][2], f"expected an ENOSPC refusal: {sender.refusals[0]}"
            _assert_serving_while_refusing(proc)

            ballast.unlink()  # space returns
            fake.resume_listening_sync()
            # Retry-After is 1 s: a few seconds is plenty to take data again.
            recovered = _wait_recovered(proc, sender, timeout=8)
            evidence: dict[str, Any] = {}
            if not recovered:
                evidence = {
                    "df": _df(mnt),
                    "queue": (proc.exporter_health() or {}).get("queue"),
                    "refusals since space returned": sender.refusals[-3:],
                    "ready": proc.get("/ready"),
                }
                proc.stop()
                proc.start()
                proc.wait_started()
                status, _, detail = sender.post(n=5, pad=10)
                evidence["after a restart"] = f"{status} {detail}"
                proc.wait_drained(timeout=30)
            fake.wait_for_ids_sync(sender.acked, timeout=30)
            assert proc.stop() == 0
    print(f"\nENOSPC (ballast): acked {len(sender.acked)}; intake resumed by itself: {recovered}")
    if not recovered:
        queue = evidence["queue"] or {}
        if not (queue.get("refusing") and queue.get("bytes", 0) < 64 * 1024 * 1024 * 0.9):
            pytest.fail(
                "intake did not resume, but not the known sticky-refusal bug: " + json.dumps(evidence, default=str)
            )
        known_bug(
            "ENOSPC: intake never resumes after space returns -- ExporterRunner.check_capacity() refuses "
            "while queue.stats().refusing, which stays true after a disk-full commit until a put succeeds, "
            "and check_capacity keeps every put away from the queue. Evidence: " + json.dumps(evidence, default=str)
        )


@pytest.mark.slow
def test_enospc_while_dead_lettering_then_space_returns(tmp_path: Path) -> None:
    """A poison event is rejected (400) while the disk is full, so its dead-letter
    write fails; once space returns the sender must finish the job by itself:
    the poison event in the dead letters, the rest delivered, the queue empty."""
    with tmpfs(tmp_path / "mnt", "8m") as mnt, FakeOpenMeter.in_thread() as fake:
        cfg = _config(mnt / "storage", fake, queue={"min_free_bytes": 0})
        with CollectorProcess(tmp_path / "work", cfg) as proc:
            proc.start()
            proc.wait_started()
            sender = Sender(proc.ingest_url, "dl")
            poison = ("diskfull", "dl-3")
            fake.reject_ids({poison[1]})
            fake.pause_listening_sync(None)
            assert sender.post(n=8, pad=10)[0] == 204
            # Wait until the sender holds the item (claimed: that write is done).
            deadline = time.monotonic() + 10
            while (proc.exporter_health() or {}).get("in_flight_events", 0) == 0:
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.05)
            _fill_disk(mnt / "ballast.bin", 16 * 1024 * 1024)
            fake.resume_listening_sync()  # 400 for the poison: split, dead-letter... on a full disk
            fake.wait_for_ids_sync(sender.acked - {poison}, timeout=20)
            time.sleep(1.0)
            (mnt / "ballast.bin").unlink()  # space returns

            deadline = time.monotonic() + 8
            health = proc.exporter_health() or {}
            while time.monotonic() < deadline:
                health = proc.exporter_health() or {}
                if health["queue"]["events"] == 0 and health["in_flight_events"] == 0:
                    break
                time.sleep(0.25)
            recovered = health["queue"]["events"] == 0 and health["in_flight_events"] == 0
            evidence: dict[str, Any] = {}
            if not recovered:
                evidence = {
                    "queue": health.get("queue"),
                    "in_flight_events": health.get("in_flight_events"),
                    "metrics": _identity(proc),
                    "log": _log_lines(proc, "sender task failed"),
                }
                proc.stop()
                proc.start()
                proc.wait_started()
                proc.wait_drained(timeout=30)
            dead = subprocess.run(
                [*collector_command(), "dlq", "list", "-c", str(proc.config_path), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            assert proc.stop() == 0
        arrived = fake.ids()
    assert sender.acked - {poison} <= arrived
    assert poison not in arrived
    assert f'"id": "{poison[1]}"' in dead, f"the poison event is not in the dead letters: {dead!r}"
    print(f"\nENOSPC (dead-letter write): finished by itself: {recovered}")
    if not recovered:
        if not evidence["log"]:
            pytest.fail("the queue did not drain, but not the known dead-letter bug: " + json.dumps(evidence))
        known_bug(
            "ENOSPC while dead-lettering: DeadLetterStore.add fails (and its ROLLBACK raises 'cannot rollback - "
            "no transaction is active', masking SQLITE_FULL); ExporterRunner._dead_letter does not retry, the "
            "sender task dies and its queue item stays claimed and unacked until a restart, even after space "
            "returns. Evidence: " + json.dumps(evidence, default=str)
        )


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.slow
def test_enospc_dead_letters_keep_the_reserve_and_a_stuck_sender_shows(tmp_path: Path) -> None:
    """Issue 10, point 6: dead letters written while the disk is nearly full must not
    eat the ``min_free_bytes`` reserve (they used to, WAL and all, until every write
    failed with "database or disk is full" while /health said ok).  They are refused
    like the queue's writes; the sender, unable to make progress, shows in /ready
    with the reason after 30 s; once space returns it finishes by itself."""
    reserve = 3 * 1024 * 1024
    with tmpfs(tmp_path / "mnt", "12m") as mnt, FakeOpenMeter.in_thread() as fake:
        cfg = _config(mnt / "storage", fake, queue={"min_free_bytes": reserve}, batch={"max_events": 10})
        with CollectorProcess(tmp_path / "work", cfg) as proc:
            proc.start()
            proc.wait_started()
            sender = Sender(proc.ingest_url, "rsv")
            fake.reject_ids({f"rsv-{i}" for i in range(40)})  # every event: 400, dead-lettered one by one
            fake.pause_listening_sync(None)
            assert sender.post(n=40, pad=20_000)[0] == 204
            deadline = time.monotonic() + 10
            while (proc.exporter_health() or {}).get("in_flight_events", 0) == 0:  # queued and claimed
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.05)
            # Room above the reserve for part of the 40 dead letters (~0.8 MB), not all.
            _fill_disk(mnt / "ballast.bin", max(0, _free(mnt) - reserve - 400_000))
            lowest = _free(mnt)
            assert lowest >= reserve
            fake.resume_listening_sync()
            deadline = time.monotonic() + 60
            status, body = proc.get("/ready")
            while time.monotonic() < deadline and not (status == 503 and b"sender stuck" in body):
                lowest = min(lowest, _free(mnt))
                time.sleep(0.25)
                status, body = proc.get("/ready")
            lowest = min(lowest, _free(mnt))
            health = proc.exporter_health() or {}
            assert lowest >= reserve - 64 * 1024, f"dead letters ate the reserve: {lowest} of {reserve} bytes free"
            assert status == 503 and b"sender stuck: dead-letter writes failing" in body, (status, body, health)
            assert "min_free_bytes" in health.get("stuck_reason", ""), health

            (mnt / "ballast.bin").unlink()  # space returns: the sender finishes by itself
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                health = proc.exporter_health() or {}
                if health["queue"]["events"] == 0 and proc.get("/ready")[0] == 200:
                    break
                time.sleep(0.25)
            assert health["queue"]["events"] == 0 and "stuck_reason" not in health, health
            dead = subprocess.run(
                [*collector_command(), "dlq", "list", "-c", str(proc.config_path), "--json", "--limit", "100"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            assert proc.stop() == 0
    assert len(dead.splitlines()) == 40, dead[:500]
