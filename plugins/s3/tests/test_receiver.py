"""The ``s3`` receiver against moto's S3 server: every record billed exactly once, by id."""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from collector_plugin_s3.config import S3ReceiverConfig
from collector_plugin_s3.receiver import S3Receiver
from motoserver import ACCESS_KEY, REGION, SECRET_KEY, MotoS3, free_port

from collector.api import BackpressureError, ComponentSpec, hookimpl, stable_id
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import deadletters_in
from collector.testing.harness import RunningPipeline, run_pipeline, testing_registry
from collector.testing.waiting import eventually

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


class _Plugin:
    @hookimpl
    def collector_receivers(self) -> list[ComponentSpec[Any]]:
        return [ComponentSpec("receiver", "s3", S3ReceiverConfig, S3Receiver)]


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def bucket(moto: MotoS3, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test (moto's state is shared by the module's server)."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:50]
    moto.bucket(name)
    return name


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "source": "billing", "type": "api_calls", "subject": f"customer-{n % 7}",
            "time": "2024-05-01T12:00:00Z", "data": {"n": n}, **extra}  # fmt: skip


def jsonl(*records: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def config(moto: MotoS3, bucket: str, **extra: Any) -> str:
    receiver = {"bucket": bucket, "endpoint_url": moto.endpoint, "region": REGION, "path_style": True,
                "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "interval": "1h", **extra}  # fmt: skip
    return orjson.dumps({"receivers": {"s3": receiver}, "exporters": {"memory": {}}}).decode()


@asynccontextmanager
async def pipeline(
    text: str, storage: Path, first_poll: float = 10.0
) -> AsyncIterator[tuple[RunningPipeline, S3Receiver]]:
    async with run_pipeline(text, storage, registry=testing_registry([("s3", _Plugin())])) as p:
        rec = p.component("s3")
        assert isinstance(rec, S3Receiver)
        await eventually(lambda: rec.polls >= 1, timeout=first_poll)  # the poll at start
        yield p, rec


async def poll(rec: S3Receiver) -> None:
    """Run one more poll and wait for it to finish."""
    before = rec.polls
    rec.poll_soon()
    await eventually(lambda: rec.polls > before, timeout=20)


def ids_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


def expected_id(bucket: str, key: str, etag: str, number: int) -> str:
    return stable_id("s3", bucket, key, etag, number)


def etag(moto: MotoS3, bucket: str, key: str) -> str:
    return str(moto.client().head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


@pytest.mark.slow  # about 12 s: 1200 objects, each a GET, an emit and a checkpoint
async def test_thousands_of_objects_across_list_pages_are_billed_once(
    moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    client = moto.client()
    keys = [f"exports/{i:05d}.jsonl" for i in range(1200)]  # two pages of ListObjectsV2

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=keys[i], Body=jsonl(event(2 * i), event(2 * i + 1)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(len(keys))))
    async with pipeline(config(moto, bucket, prefix="exports/"), tmp_path, first_poll=60) as (p, rec):
        events = await p.exporter().wait_for(2400, timeout=60)
        await poll(rec)  # listed again: everything is done, nothing is sent twice
        assert rec.health()["objects_done"] == 1200
    assert len(events) == 2400
    assert len(set(ids_of(events))) == 2400
    assert sorted(e["data"]["n"] for e in events) == list(range(2400))


async def test_jsonl_gzip_csv_and_json_array(moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="a.jsonl.gz", Body=gzip.compress(jsonl(event(1), event(2))))
    client.put_object(  # gzip announced by Content-Encoding only
        Bucket=bucket, Key="b.jsonl", Body=gzip.compress(jsonl(event(3))), ContentEncoding="gzip"
    )
    client.put_object(Bucket=bucket, Key="c.json", Body=orjson.dumps([event(4), event(5, id="given-id")]))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerows([["customer", "calls", "ok"], ["acme", "12", "true"], ["globex", "3", "false"]])
    client.put_object(Bucket=bucket, Key="d.csv", Body=text.getvalue().encode())
    mapping = (
        "{'type': 'api_calls', 'subject': this['customer'], 'data': {'calls': this['calls'], 'ok': this['ok'], "
        "'key': meta.key, 'line': meta.line}} if 'customer' in this else this"
    )
    cfg = config(moto, bucket, csv_types={"calls": "int", "ok": "bool"}, mapping=mapping)
    async with pipeline(cfg, tmp_path) as (p, _rec):
        events = await p.exporter().wait_for(7)
    by_subject = {e["subject"]: e for e in events}
    assert by_subject["acme"]["data"] == {"calls": 12, "ok": True, "key": "d.csv", "line": 2}
    assert by_subject["globex"]["data"]["calls"] == 3
    assert by_subject["acme"]["id"] == expected_id(bucket, "d.csv", etag(moto, bucket, "d.csv"), 1)
    assert by_subject["acme"]["source"] == "s3"
    assert sorted(e["data"]["n"] for e in events if "n" in e["data"]) == [1, 2, 3, 4, 5]
    assert "given-id" in ids_of(events)  # an id the record carries is kept
    assert len(set(ids_of(events))) == 7


async def test_malformed_line_is_dead_lettered_and_the_rest_delivered(
    moto: MotoS3, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = jsonl(event(1), event(2)) + b'{"specversion": "1.0", broken\n' + jsonl(event(3), {"no": "specversion"})
    async with pipeline(config(moto, bucket, batch_size=2), tmp_path) as (p, rec):
        moto.client().put_object(Bucket=bucket, Key="u.jsonl", Body=body)
        await poll(rec)
        events = await p.exporter().wait_for(3)
        assert p.metric("collector_s3_malformed_records_total", receiver="s3") == 2
        store_path = deadletters_in(rec.ctx.storage_dir)
    assert sorted(e["data"]["n"] for e in events) == [1, 2, 3]
    # In the receiver's own dead-letter store, where `collector dlq list --receiver s3` looks.
    store = DeadLetterStore(store_path)
    try:
        letters = [entry.event for entry in store.list()]
    finally:
        store.close()
    assert [(d["bucket"], d["key"], d["line"]) for d in letters] == [(bucket, "u.jsonl", 3), (bucket, "u.jsonl", 5)]
    assert "broken" in letters[0]["raw"] and letters[0]["error"]
    assert "specversion" in letters[1]["error"]
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1 and "u.jsonl" in warnings[0] and "3, 5" in warnings[0]


async def test_restart_mid_object_resumes_at_the_next_record(moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    key = "big.jsonl"
    moto.client().put_object(Bucket=bucket, Key=key, Body=jsonl(*(event(n) for n in range(7))))
    tag = etag(moto, bucket, key)
    first: list[dict[str, Any]] = []
    cfg = config(moto, bucket, batch_size=2)
    async with run_pipeline(cfg, tmp_path, registry=_refusing_registry(after_calls=1)) as p:
        rec = p.component("s3")
        assert isinstance(rec, S3Receiver)
        first = await p.exporter().wait_for(2)
        await eventually(lambda: rec.polls >= 1)
        assert rec.health()["objects_done"] == 0
    assert len(first) == 2
    async with pipeline(cfg, tmp_path) as (p, _rec):
        second = await p.exporter().wait_for(5)
    assert ids_of(first) + ids_of(second) == [expected_id(bucket, key, tag, n) for n in range(1, 8)]


async def test_crash_between_commit_and_checkpoint_resends_the_same_ids(
    moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    key = "k.jsonl"
    moto.client().put_object(Bucket=bucket, Key=key, Body=jsonl(*(event(n) for n in range(4))))
    cfg = config(moto, bucket, batch_size=2)
    async with run_pipeline(cfg, tmp_path, registry=_refusing_registry(after_calls=0, commit_first=True)) as p:
        first = await p.exporter().wait_for(2)
    async with pipeline(cfg, tmp_path) as (p, _rec):
        second = await p.exporter().wait_for(4)
    # The batch committed before the "crash" comes again with the same ids: de-duplicated downstream.
    assert ids_of(second)[:2] == ids_of(first)
    assert len(set(ids_of(first) + ids_of(second))) == 4


def _refusing_registry(after_calls: int, commit_first: bool = False) -> Any:
    """The s3 receiver whose emit fails after ``after_calls`` calls (as a SIGKILL would stop it)."""

    class Refusing(S3Receiver):
        calls = 0

        async def emit(self, events: list[dict[str, Any]], meta: Any = None, *, partial: bool = False) -> Any:
            Refusing.calls += 1
            if Refusing.calls > after_calls:
                if commit_first:
                    await super().emit(events, meta, partial=partial)
                raise BackpressureError("stopped here")
            return await super().emit(events, meta, partial=partial)

    class Plugin:
        @hookimpl
        def collector_receivers(self) -> list[ComponentSpec[Any]]:
            return [ComponentSpec("receiver", "s3", S3ReceiverConfig, Refusing)]

    return testing_registry([("s3", Plugin())])


@pytest.mark.parametrize("on_replaced", ["reread", "ignore"])
async def test_replaced_object(moto: MotoS3, bucket: str, tmp_path: Path, on_replaced: str) -> None:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="r.jsonl", Body=jsonl(event(1)))
    # Key order lists only keys after the last finished one: a replaced object is seen in last_modified order.
    cfg = config(moto, bucket, on_replaced=on_replaced, order="last_modified")
    async with pipeline(cfg, tmp_path) as (p, rec):
        await p.exporter().wait_for(1)
        client.put_object(Bucket=bucket, Key="r.jsonl", Body=jsonl(event(1), event(2)))
        client.put_object(Bucket=bucket, Key="s.jsonl", Body=jsonl(event(3)))  # after it: proves the poll ran
        await poll(rec)
        events = await p.exporter().wait_for(2)
        if on_replaced == "reread":
            events = await p.exporter().wait_for(4)
    got = sorted(e["data"]["n"] for e in events)
    assert got == ([1, 1, 2, 3] if on_replaced == "reread" else [1, 3])
    assert len(set(ids_of(events))) == len(events)  # the new version's records have new ids


@pytest.mark.parametrize("after", ["delete", "move", "tag"])
async def test_after_action_runs_only_after_commit(moto: MotoS3, bucket: str, tmp_path: Path, after: str) -> None:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="in/a.jsonl", Body=jsonl(event(1), event(2)))
    choices: dict[str, dict[str, Any]] = {
        "delete": {"delete": True}, "move": {"move": {"prefix": "done/"}}, "tag": {"tag": {"billed": "yes"}}
    }  # fmt: skip
    settings = choices[after]
    cfg = config(moto, bucket, prefix="in/", after=settings)
    async with run_pipeline(cfg, tmp_path, registry=_refusing_registry(after_calls=0)) as p:
        rec = p.component("s3")
        await eventually(lambda: isinstance(rec, S3Receiver) and rec.polls >= 1)
    # Nothing committed: the object is untouched.
    assert set(moto.objects(bucket)) == {"in/a.jsonl"}
    assert client.get_object_tagging(Bucket=bucket, Key="in/a.jsonl")["TagSet"] == []
    async with pipeline(cfg, tmp_path) as (p, _rec):
        await p.exporter().wait_for(2)
    objects = set(moto.objects(bucket))
    if after == "delete":
        assert objects == set()
    elif after == "move":
        assert objects == {"done/in/a.jsonl"}
    else:
        assert objects == {"in/a.jsonl"}
        assert client.get_object_tagging(Bucket=bucket, Key="in/a.jsonl")["TagSet"] == [
            {"Key": "billed", "Value": "yes"}
        ]


async def test_include_exclude_and_last_modified_order(moto: MotoS3, bucket: str, tmp_path: Path) -> None:
    client = moto.client()
    for i, key in enumerate(["x/1.jsonl", "x/2.jsonl.gz", "x/skip-3.jsonl", "x/readme.txt"]):
        body = jsonl(event(i))
        client.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body) if key.endswith(".gz") else body)
    cfg = config(moto, bucket, include=["*.jsonl", "*.jsonl.gz"], exclude="*/skip-*", order="last_modified")
    async with pipeline(cfg, tmp_path) as (p, rec):
        events = await p.exporter().wait_for(2)
        client.put_object(Bucket=bucket, Key="x/4.jsonl", Body=jsonl(event(4)))
        await poll(rec)
        events = await p.exporter().wait_for(3)
        assert rec.health().get("failing_objects") is None  # readme.txt is not included: not an error
    assert sorted(e["data"]["n"] for e in events) == [0, 1, 4]


async def test_unreadable_object_is_reported_and_retried_without_blocking_others(
    moto: MotoS3, bucket: str, tmp_path: Path
) -> None:
    client = moto.client()
    client.put_object(Bucket=bucket, Key="a.jsonl.gz", Body=b"this is not gzip")
    client.put_object(Bucket=bucket, Key="b.jsonl", Body=jsonl(event(1)))
    async with pipeline(config(moto, bucket), tmp_path) as (p, rec):
        await p.exporter().wait_for(1)
        health = rec.health()
        assert health["ready"] is True
        assert "not gzip" in health["failing_objects"][f"{bucket}/a.jsonl.gz"]
        client.put_object(Bucket=bucket, Key="a.jsonl.gz", Body=gzip.compress(jsonl(event(2))))
        await poll(rec)
        events = await p.exporter().wait_for(2)
        assert "failing_objects" not in rec.health()
    assert sorted(e["data"]["n"] for e in events) == [1, 2]


async def test_unreachable_endpoint_is_one_clear_line_and_no_secret(
    moto: MotoS3, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = MotoS3()  # never started: connections are refused
    down.port = free_port()
    down.endpoint = f"http://127.0.0.1:{down.port}"
    caplog.set_level(logging.INFO)
    async with pipeline(config(down, bucket), tmp_path) as (_p, rec):
        await poll(rec)
        health = rec.health()
    assert health["ready"] is False and "cannot reach" in health["reason"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "s3" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    text = "\n".join(r.getMessage() for r in caplog.records) + repr(health)
    assert SECRET_KEY not in text


def test_config_requires_a_bucket_and_a_move_outside_the_prefix() -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3ReceiverConfig()
    with pytest.raises(ValueError, match="read again"):
        S3ReceiverConfig(bucket="b", after={"move": {"prefix": "done/"}})  # type: ignore[arg-type]
    ok = S3ReceiverConfig(bucket="b", exclude=["done/*"], after={"move": {"prefix": "done/"}})  # type: ignore[arg-type]
    assert ok.buckets[0].bucket == "b" and ok.after.action == "move"
