"""Real `collector run` processes reading usage files from moto's S3 server, with known truth.

Twenty objects (JSON lines, half of them gzip-compressed) hold a few thousand
records: most without an id (the receiver gives each ``stable_id("s3", bucket,
key, etag, record number)``, docs/components/s3-receiver.md), some with their
own, and a few malformed lines.  The receiver commits 25 records at a time, so
an object takes several commits.  Then:

* SIGKILL while objects are half read, restart on the same storage, SIGKILL
  again, restart, and let it finish;
* an object uploaded while the collector runs is read on the next poll.

Oracle: de-duplicated by id, the ids billed are exactly those of the
well-formed records (an id sent twice is the same event), and every malformed
line is in the receiver's dead letters (``collector dlq list --receiver s3``)
once -- twice only where a SIGKILL fell between its dead letter and the
checkpoint that covers it, which the test reads from the storage the kill left.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from motoserver import ACCESS_KEY, REGION, SECRET_KEY, MotoS3

from collector.api import StateStore, stable_id
from collector.testing import eventually_sync
from support.collector_proc import CollectorProcess, collector_command, collector_config, free_port
from support.fake_openmeter import FakeOpenMeter

pytestmark = pytest.mark.slow
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request

PREFIX = "billing/"
OBJECTS = 20
RECORDS = 150  # lines per object
BATCH = 25
MAPPING = (
    "{'type': 'api_calls', 'subject': this['customer'], 'id': this['id'] if 'id' in this else None, "
    "'data': {'calls': this['calls'], 'key': meta.key, 'record': meta.record}}"
)


@dataclass(frozen=True)
class Upload:
    """One object as uploaded: its key, ETag, the records' expected ids and its malformed lines."""

    key: str
    etag: str
    ids: dict[str, int]  # expected event id -> record number
    malformed: set[int]  # physical lines


def object_lines(index: int) -> tuple[list[bytes], set[int], dict[int, str | None]]:
    """The lines of object ``index``, its malformed line numbers, and record number -> its own id (or None)."""
    lines: list[bytes] = []
    malformed: set[int] = set()
    own: dict[int, str | None] = {}
    number = 0
    for n in range(RECORDS):
        if index % 4 == 1 and n in (17, 90):
            lines.append(b'{"customer": "acme", "calls": broken')
            malformed.add(len(lines))
            number += 1
            continue
        if index % 6 == 2 and n == 60:
            lines.append(b"")  # a blank line is not a record
            continue
        number += 1
        record: dict[str, Any] = {"customer": f"customer-{(index + n) % 7}", "calls": n + 1}
        if index % 5 == 0 or n % 11 == 0:
            record["id"] = f"given-{index}-{n}"
        own[number] = record.get("id")
        lines.append(orjson.dumps(record))
    return lines, malformed, own


def upload(moto: MotoS3, bucket: str, index: int) -> Upload:
    lines, malformed, own = object_lines(index)
    body = b"\n".join(lines) + b"\n"
    key = f"{PREFIX}usage-{index:03d}.jsonl"
    if index % 2:
        key += ".gz"
        body = gzip.compress(body)
    client = moto.client()
    client.put_object(Bucket=bucket, Key=key, Body=body)
    etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    ids = {(given or stable_id("s3", bucket, key, etag, number)): number for number, given in own.items()}
    return Upload(key, etag, ids, malformed)


def make_config(tmp: Path, moto: MotoS3, bucket: str, fake_url: str) -> dict[str, Any]:
    cfg = collector_config(
        storage=tmp / "storage", openmeter_url=fake_url, receiver_port=free_port(), admin_port=free_port()
    )
    cfg["receivers"]["s3"] = {
        "bucket": bucket,
        "prefix": PREFIX,
        "endpoint_url": moto.endpoint,
        "path_style": True,
        "region": REGION,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "interval": "1s",
        "batch_size": BATCH,
        "mapping": MAPPING,
        "timeout": "5s",
    }
    cfg["service"]["pipelines"]["events"]["receivers"].append("s3")
    return cfg


def wait(condition: Callable[[], object], timeout: float, what: str, proc: CollectorProcess) -> None:
    try:
        eventually_sync(condition, timeout=timeout, interval=0.01, message=what)
    except AssertionError as exc:
        raise TimeoutError(f"{exc}\n{proc.log_tail()}") from None


def receiver_health(proc: CollectorProcess) -> dict[str, Any]:
    health = proc.health()
    return health["components"]["receivers"].get("s3", {}) if health else {}


def billed(fake: FakeOpenMeter) -> dict[str, dict[str, Any]]:
    """The events de-duplicated by id; an id sent twice must be the same event."""
    by_id: dict[str, dict[str, Any]] = {}
    for event in fake.arrivals:
        if event["id"] in by_id:
            assert by_id[event["id"]] == event, "one id, two different events"
        by_id[event["id"]] = event
    return by_id


def dead_letters(proc: CollectorProcess) -> Counter[tuple[str, int]]:
    """(key, line) -> how many dead letters the receiver holds for it (via the CLI, as an operator would)."""
    out = subprocess.run(
        [*collector_command(), "dlq", "list", "--receiver", "s3", "-c", str(proc.config_path), "--json",
         "--limit", "100000"],
        capture_output=True, text=True, timeout=30, env=proc.env, check=True,
    )  # fmt: skip
    letters: Counter[tuple[str, int]] = Counter()
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)["event"]
            letters[(event["key"], event["line"])] += 1
    return letters


def checkpoints(proc: CollectorProcess, bucket: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The receiver's per-object checkpoints as the storage holds them (read from a copy: the next start
    must find the files exactly as the crash left them)."""
    db = proc.storage / "receivers" / "s3" / "state.sqlite"
    with tempfile.TemporaryDirectory(prefix="state-copy-") as tmp:
        copy = Path(tmp) / db.name
        for suffix in ("", "-wal", "-shm"):
            src = db.with_name(db.name + suffix)
            if src.exists():
                shutil.copyfile(src, copy.with_name(copy.name + suffix))
        store = StateStore(copy)
        try:
            return {k: s for k in keys if (s := store.get("objects", f"{bucket}/{k}")) is not None}
        finally:
            store.close()


def line_to_record(index: int) -> dict[int, int]:
    """Physical line -> record number of object ``index`` (malformed lines are numbered records too)."""
    lines, _, _ = object_lines(index)
    out: dict[int, int] = {}
    number = 0
    for i, line in enumerate(lines, start=1):
        if line.strip():
            number += 1
            out[i] = number
    return out


@pytest.fixture
def moto() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def bucket(moto: MotoS3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test: moto keeps its buckets in this process, across servers."""
    return moto.bucket("usage-" + request.node.name.lower().replace("_", "-")[5:45].strip("-"))


def test_sigkill_mid_object_twice_bills_every_record_exactly_once(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    uploads = [upload(moto, bucket, i) for i in range(OBJECTS)]
    keys = [u.key for u in uploads]
    expected = {i: u for u in uploads for i in u.ids}
    numbering = {u.key: line_to_record(i) for i, u in enumerate(uploads)}
    malformed = {(u.key, line) for u in uploads for line in u.malformed}
    assert len(expected) > 2500 and len(malformed) == 10
    in_flight: set[tuple[str, int]] = set()  # dead-lettered before a SIGKILL, checkpoint not yet past them
    half_read: list[str] = []

    with FakeOpenMeter.in_thread() as fake:
        proc = CollectorProcess(tmp_path / "c", make_config(tmp_path, moto, bucket, fake.url))
        with proc:
            for share in (0.25, 0.6):
                proc.start()
                proc.wait_started(timeout=30)
                goal = int(share * len(expected))
                wait(lambda: len(fake.ids()) >= goal, 30, f"{goal} records billed", proc)  # noqa: B023
                proc.kill()
                states = checkpoints(proc, bucket, keys)
                half_read += [k for k, s in states.items() if s["record"] > 0 and not s["done"]]
                for key, line in dead_letters(proc):
                    state = states.get(key)
                    if state is None or state["record"] < numbering[key][line]:
                        in_flight.add((key, line))
            proc.start()
            proc.wait_started(timeout=30)
            wait(lambda: set(expected) <= {i for _, i in fake.ids()}, 30, "every record billed", proc)
            proc.wait_drained(timeout=30)
            health = receiver_health(proc)
            proc.stop()
        states = checkpoints(proc, bucket, keys)
        letters = dead_letters(proc)

    assert half_read, "neither SIGKILL fell in the middle of an object: the test did not test a resume"
    assert health["ready"] and "failing_objects" not in health, health
    assert all(states[k]["done"] and states[k]["etag"] == u.etag for k, u in zip(keys, uploads, strict=True))
    events = billed(fake)
    assert set(events) == set(expected), "billed ids differ from the well-formed records"
    for event_id, event in events.items():
        upload_of = expected[event_id]
        assert event["data"]["key"] == upload_of.key and event["data"]["record"] == upload_of.ids[event_id]
    assert set(letters) == malformed
    twice = {where for where, n in letters.items() if n > 1}
    assert twice <= in_flight and max(letters.values()) <= 2, (letters, in_flight)


def test_object_uploaded_while_running_is_read_on_the_next_poll(tmp_path: Path, moto: MotoS3, bucket: str) -> None:
    first = upload(moto, bucket, 0)
    with FakeOpenMeter.in_thread() as fake:
        proc = CollectorProcess(tmp_path / "c", make_config(tmp_path, moto, bucket, fake.url))
        with proc:
            proc.start()
            proc.wait_started(timeout=30)
            wait(lambda: {i for _, i in fake.ids()} == set(first.ids), 20, "the first object billed", proc)
            wait(lambda: receiver_health(proc).get("objects_done") == 1, 10, "the first object done", proc)
            second = upload(moto, bucket, 1)  # gzip, two malformed lines; its key sorts after the first
            wanted = set(first.ids) | set(second.ids)
            wait(lambda: {i for _, i in fake.ids()} == wanted, 10, "the new object billed", proc)
            wait(lambda: receiver_health(proc).get("objects_done") == 2, 10, "the new object done", proc)
            proc.wait_drained(timeout=20)
            proc.stop()
        letters = dead_letters(proc)
    assert not fake.duplicates(), "an id was billed twice without any crash"
    assert set(billed(fake)) == wanted
    assert letters == Counter({(second.key, line): 1 for line in second.malformed})
