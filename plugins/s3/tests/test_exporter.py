"""The ``s3`` archive exporter against moto's S3 server, in a real pipeline (scripted receiver -> s3)."""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from collector_plugin_s3.connection import S3ConnectionConfig, describe, error_kind
from collector_plugin_s3.exporter import S3Exporter, S3ExporterConfig, batch_digest, object_key
from motoserver import ACCESS_KEY, SECRET_KEY, MotoS3

from collector.api import AuthError, ComponentSpec, hookimpl
from collector.testing import eventually, testing_registry


class _ExporterUnderTest:
    @hookimpl
    def collector_exporters(self) -> list[ComponentSpec[Any]]:
        return [ComponentSpec("exporter", "s3", S3ExporterConfig, S3Exporter, description="s3 archive (test)")]


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def bucket(s3: MotoS3) -> str:
    return s3.bucket(f"archive-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def registry() -> Any:
    return testing_registry([("s3-exporter-under-test", _ExporterUnderTest())])


def config(s3: MotoS3, bucket: str, *, queue: str = "memory", max_events: int = 3, extra: str = "") -> str:
    return f"""
receivers:
  scripted: {{}}
exporters:
  s3:
    bucket: {bucket}
    prefix: usage/archive
    endpoint_url: {s3.endpoint}
    region: us-east-1
    path_style: true
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
    timeout: 5s
    queue: {{kind: {queue}}}
    batch: {{max_events: {max_events}, period: 20ms}}
    retry: {{initial_interval: 20ms, max_interval: 100ms, auth_interval: 50ms}}
{extra}"""


def event(n: int, time: str | None = "2026-01-15T10:30:00.000Z") -> dict[str, Any]:
    e: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{n}",
        "source": "billing-export",
        "type": "api_calls",
        "subject": f"customer-{n % 3}",
        "data": {"calls": n},
    }
    if time is not None:
        e["time"] = time
    return e


def archived(s3: MotoS3, bucket: str) -> dict[str, list[dict[str, Any]]]:
    """Every archived object: key -> its events (gunzipped JSON lines)."""
    return {
        key: [orjson.loads(line) for line in gzip.decompress(body).splitlines()]
        for key, body in s3.objects(bucket).items()
    }


async def test_events_land_as_gzip_json_lines_partitioned_by_the_first_events_hour(
    collector_run_pipeline, registry, s3, bucket
):
    sent = [event(i, f"2026-01-15T{10 + i // 4:02d}:{i:02d}:00.000Z") for i in range(8)]
    async with collector_run_pipeline(config(s3, bucket), registry=registry) as p:
        for chunk in (sent[:4], sent[4:]):  # hour 10, then hour 11
            await p.receiver().send(chunk)

        def all_archived() -> dict[str, list[dict[str, Any]]]:
            objects = archived(s3, bucket)
            assert sorted(e["id"] for evs in objects.values() for e in evs) == sorted(e["id"] for e in sent)
            return objects

        objects = await eventually(all_archived, timeout=10)

    by_id = {e["id"]: e for e in sent}
    for key, events in objects.items():
        first = events[0]["time"]  # e.g. 2026-01-15T10:00:00.000Z
        hour = f"{first[0:4]}/{first[5:7]}/{first[8:10]}/{first[11:13]}"
        assert key.startswith(f"usage/archive/{hour}/"), key
        assert key.endswith(f"-{batch_digest(events)}.jsonl.gz")
        assert all(e == by_id[e["id"]] for e in events)  # byte-for-byte the events, not a re-mapping
        head = s3.client().head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/x-ndjson"
        assert head["ContentEncoding"] == "gzip"
    assert any("/2026/01/15/10/" in k for k in objects) and any("/2026/01/15/11/" in k for k in objects)


async def test_a_retried_batch_gets_the_same_name_and_is_never_written_twice(
    collector_run_pipeline, registry, s3, bucket
):
    batch = [event(i) for i in range(5)]
    async with collector_run_pipeline(config(s3, bucket), registry=registry) as p:
        exporter = p.component("s3")
        assert isinstance(exporter, S3Exporter)
        key = exporter.key_for(batch)
        assert key == object_key("usage/archive", datetime.fromisoformat(batch[0]["time"]), batch_digest(batch))
        assert key.startswith("usage/archive/2026/01/15/10/20260115T103000.000Z-")

        await exporter.export(batch)
        first = s3.objects(bucket)
        await exporter.export(list(batch))  # the retry after a lost answer: same name, S3 answers 412
        assert s3.objects(bucket) == first
        assert exporter.objects_written == 1
        assert exporter.key_for(batch) == key

        # An object already at the batch's name is never overwritten, whatever it holds.
        other = [event(i) for i in range(10, 12)]
        s3.client().put_object(Bucket=bucket, Key=exporter.key_for(other), Body=b"written earlier")
        await exporter.export(other)
        assert s3.objects(bucket)[exporter.key_for(other)] == b"written earlier"

        # Different events (ids) make a different object.
        await exporter.export([event(i) for i in range(5, 7)])
        assert len(s3.objects(bucket)) == 3


async def test_a_batch_without_time_keeps_its_name_across_retries(collector_run_pipeline, registry, s3, bucket):
    batch = [event(i, time=None) for i in range(3)]
    async with collector_run_pipeline(config(s3, bucket), registry=registry) as p:
        exporter = p.component("s3")
        key = exporter.key_for(batch)
        await exporter.export(batch)
        await exporter.export(batch)
        assert list(s3.objects(bucket)) == [key]


async def test_events_queued_during_an_outage_are_all_archived_once_it_ends(
    collector_run_pipeline, registry, s3, bucket
):
    sent = [event(i) for i in range(20)]
    async with collector_run_pipeline(config(s3, bucket, queue="durable", max_events=4), registry=registry) as p:
        s3.pause()
        try:
            for i in range(0, len(sent), 5):
                await p.receiver().send(sent[i : i + 5])  # committed to the durable queue while S3 is down
            await eventually(lambda: p.metric("collector_exporter_retries_total", exporter="s3") >= 2, timeout=10)
            health = p.service.exporters["s3"].health()
            assert "network: writing" in health["last_error"] and "cannot reach the S3 endpoint" in health["last_error"]
            assert health["queue"]["events"] == len(sent)  # kept in the durable queue meanwhile
        finally:
            s3.resume()

        def all_archived() -> list[str]:
            ids = [e["id"] for evs in archived(s3, bucket).values() for e in evs]
            assert sorted(ids) == sorted(e["id"] for e in sent)  # each once: nothing lost, nothing twice
            return ids

        await eventually(all_archived, timeout=15)
        await eventually(lambda: p.service.exporters["s3"].health()["queue"]["events"] == 0, timeout=5)


async def test_wrong_credentials_pause_the_exporter_with_a_clear_reason_and_no_secret(
    collector_run_pipeline, registry, s3, bucket
):
    wrong = (
        config(s3, bucket).replace(SECRET_KEY, "wrong-secret-value-1234").replace(ACCESS_KEY, "AKIAWRONGWRONGWRONG0")
    )
    with s3.require_credentials():
        async with collector_run_pipeline(wrong, registry=registry) as p:
            await p.receiver().send([event(1)])
            await eventually(lambda: p.service.exporters["s3"].health()["paused"], timeout=10)
            health = p.service.exporters["s3"].health()
    reason = health["paused_reason"]
    assert "403 InvalidAccessKeyId" in reason and "check access_key_id" in reason, reason
    assert bucket in reason
    assert "wrong-secret-value-1234" not in str(health)
    assert health["ready"] is False and health["queue"]["events"] == 1  # kept, not dropped
    assert s3.objects(bucket) == {}


async def test_a_missing_bucket_is_an_auth_like_error_naming_the_bucket(collector_run_pipeline, registry, s3, bucket):
    async with collector_run_pipeline(config(s3, bucket), registry=registry) as p:
        exporter = p.component("s3")
        exporter.config = exporter.config.model_copy(update={"bucket": "no-such-bucket-here"})
        with pytest.raises(AuthError) as raised:
            await exporter.export([event(1)])
    assert "'no-such-bucket-here' does not exist" in raised.value.message
    assert "check bucket, region and endpoint_url" in raised.value.message


def _client_error(code: str, status: int, operation: str, message: str = "") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def test_describe_says_which_permission_is_missing_and_classifies_failures():
    denied = describe(_client_error("AccessDenied", 403, "PutObject"), "writing s3://b1/k", bucket="b1")
    assert denied == (
        "writing s3://b1/k: 403 AccessDenied: access denied to bucket 'b1': the credentials need s3:PutObject on it"
    )
    listing = describe(_client_error("AccessDenied", 403, "ListObjectsV2"), "listing", bucket="b1")
    assert "s3:ListBucket" in listing
    assert "no AWS credentials found" in describe(NoCredentialsError(), "writing")
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b1")
    assert "cannot reach the S3 endpoint" in describe(down, "writing")
    assert error_kind(down) == "unavailable"
    assert error_kind(_client_error("SlowDown", 503, "PutObject")) == "throttled"
    assert error_kind(_client_error("InternalError", 500, "PutObject")) == "unavailable"
    assert error_kind(_client_error("NoSuchBucket", 404, "PutObject")) == "missing"
    assert error_kind(_client_error("PreconditionFailed", 412, "PutObject")) == "conflict"


def test_connection_settings_are_checked_and_secrets_listed():
    cfg = S3ConnectionConfig(access_key_id="AKIA1", secret_access_key="s3cr3t-value", session_token="tok-value")
    assert cfg.secrets() == ["s3cr3t-value", "tok-value"]
    assert "s3cr3t-value" not in repr(cfg)
    with pytest.raises(ValueError, match="go together"):
        S3ConnectionConfig(access_key_id="AKIA1")
    with pytest.raises(ValueError, match="kms_key_id needs sse"):
        S3ExporterConfig(bucket="b12", kms_key_id="k")
    archive = S3ExporterConfig(bucket="b12")
    assert (archive.batch.max_events, archive.batch.max_bytes, archive.batch.period) == (10_000, 16 * 1024 * 1024, 60)
    assert archive.queue.kind == "durable"
