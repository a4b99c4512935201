"""SDK passthrough: OpenMeter's own Python SDK talks to the collector as if it were OpenMeter.

The path under test is the whole product: ``openmeter`` SDK (or plain aiohttp)
-> ``http`` receiver (bearer token) -> durable queue -> sender -> ``openmeter``
exporter -> the strict fake OpenMeter.  Whatever content type and path the SDK
uses, the receiver must accept it, and the events must arrive unchanged except
for what the collector fills in (``time`` when absent).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from openmeter import Client
from openmeter._generated.models import Event
from openmeter.aio import Client as AsyncClient

from collector.testing.harness import RunningPipeline
from support.fake_openmeter import FakeOpenMeter

INGEST_TOKEN = "ingest-token-c0ffee42"  # what applications present to the collector
OPENMETER_TOKEN = "om-token-1d2e3f4a"  # what the collector presents to OpenMeter
V1 = "/api/v1/events"
V3 = "/api/v3/openmeter/events"
FAST_RETRY = "retry: {initial_interval: 0.01, max_interval: 0.1, auth_interval: 0.1}"
CALL = {"connection_timeout": 5, "read_timeout": 10}  # never let a broken test hang on the SDK


def config(openmeter_url: str) -> str:
    return (
        "receivers:\n"
        f"  http: {{endpoint: '127.0.0.1:0', auth: {{tokens: ['{INGEST_TOKEN}']}}}}\n"
        "exporters:\n"
        "  openmeter:\n"
        f"    url: {openmeter_url}\n"
        f"    token: {OPENMETER_TOKEN}\n"
        "    timeout: 2\n"
        "    batch: {period: 0.01, max_events: 50}\n"
        "    queue: {kind: durable}\n"
        f"    {FAST_RETRY}\n"
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenMeter]:
    server = FakeOpenMeter(token=OPENMETER_TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def receiver_url(p: RunningPipeline) -> str:
    return f"http://127.0.0.1:{p.service.receivers['http'].port}"


def sdk(p: RunningPipeline, token: str = INGEST_TOKEN) -> Client:
    return Client(endpoint=receiver_url(p), token=token, retry_total=0)


def at_fake(fake: FakeOpenMeter) -> dict[str, dict[str, Any]]:
    counts = Counter(e["id"] for e in fake.arrivals)
    assert all(n == 1 for n in counts.values()), f"duplicates: {counts}"
    return {e["id"]: e for e in fake.arrivals}


WHEN = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)


@pytest.mark.parametrize("upstream", ["v1", "v3"])
async def test_sdk_single_and_batch_events_arrive_at_openmeter(collector_run_pipeline, fake, upstream):
    url = fake.url if upstream == "v1" else fake.url + "/api/v3/openmeter"
    async with collector_run_pipeline(config(url)) as p:
        client = sdk(p)

        def use_sync_client() -> None:
            with client:
                client.events.ingest_event(
                    Event(
                        id="sdk-model", source="billing-app", specversion="1.0", type="api-call",
                        subject="cust-1", time=WHEN, data={"tokens": 12, "model": "small"},
                    ),
                    **CALL,
                )  # fmt: skip
                client.events.ingest_event(
                    {"id": "sdk-dict", "source": "billing-app", "specversion": "1.0", "type": "api-call",
                     "subject": "cust-2", "time": "2024-05-01T14:00:00+02:00", "data": {"tokens": 3}},
                    **CALL,
                )  # fmt: skip
                client.events.ingest_events(
                    [
                        Event(id=f"sdk-batch-{i}", source="billing-app", specversion="1.0", type="api-call",
                              subject="cust-3", time=WHEN, data={"tokens": i})
                        for i in range(5)
                    ],
                    **CALL,
                )  # fmt: skip
                client.events.ingest_events_json(
                    [Event(id="sdk-json-list", source="billing-app", specversion="1.0", type="api-call",
                           subject="cust-4")],
                    **CALL,
                )  # fmt: skip
                client.events.ingest_events_json(
                    Event(id="sdk-json-one", source="billing-app", specversion="1.0", type="api-call",
                          subject="cust-5", time=WHEN),
                    **CALL,
                )  # fmt: skip

        await asyncio.to_thread(use_sync_client)
        async with AsyncClient(endpoint=receiver_url(p), token=INGEST_TOKEN, retry_total=0) as aclient:
            await aclient.events.ingest_event(
                Event(id="sdk-async-one", source="billing-app", specversion="1.0", type="api-call",
                      subject="cust-6", time=WHEN),
                **CALL,
            )  # fmt: skip
            await aclient.events.ingest_events(
                [Event(id=f"sdk-async-batch-{i}", source="billing-app", specversion="1.0", type="api-call",
                       subject="cust-7", time=WHEN) for i in range(3)],
                **CALL,
            )  # fmt: skip

        expected = (
            {"sdk-model", "sdk-dict", "sdk-json-list", "sdk-json-one", "sdk-async-one"}
            | {f"sdk-batch-{i}" for i in range(5)}
            | {f"sdk-async-batch-{i}" for i in range(3)}
        )
        await fake.wait_for_ids(expected, timeout=10)
        runner = p.service.exporters["openmeter"]
        while runner.queue.stats().items:  # bounded by the wait above: everything already arrived
            await asyncio.sleep(0.01)

    events = at_fake(fake)
    assert set(events) == expected
    model = events["sdk-model"]
    assert model["source"] == "billing-app" and model["subject"] == "cust-1"
    assert model["data"] == {"tokens": 12, "model": "small"}
    assert dt.datetime.fromisoformat(model["time"].replace("Z", "+00:00")) == WHEN
    assert events["sdk-dict"]["time"] == "2024-05-01T14:00:00+02:00"  # passed through untouched
    assert [events[f"sdk-batch-{i}"]["data"] for i in range(5)] == [{"tokens": i} for i in range(5)]
    assert events["sdk-json-list"]["time"].endswith("Z")  # filled in with the arrival time
    path, status = (V1, 204) if upstream == "v1" else (V3, 202)
    assert {(r.path, r.status) for r in fake.requests} == {(path, status)}


async def test_sdk_with_a_wrong_token_is_refused_and_nothing_arrives(collector_run_pipeline, fake):
    async with collector_run_pipeline(config(fake.url)) as p:
        event = Event(id="sdk-denied", source="app", specversion="1.0", type="t", subject="s")

        def denied() -> None:
            with sdk(p, token="not-the-ingest-token") as client:
                client.events.ingest_event(event, **CALL)

        def anonymous() -> None:
            with Client(endpoint=receiver_url(p), retry_total=0) as client:
                client.events.ingest_events([event], **CALL)

        with pytest.raises(ClientAuthenticationError):
            await asyncio.to_thread(denied)
        with pytest.raises(ClientAuthenticationError):
            await asyncio.to_thread(anonymous)

        def allowed() -> None:
            with sdk(p) as client:
                client.events.ingest_event(
                    Event(id="sdk-allowed", source="app", specversion="1.0", type="t", subject="s"), **CALL
                )

        await asyncio.to_thread(allowed)
        await fake.wait_for_ids({"sdk-allowed"})
        await asyncio.sleep(0.1)
    assert set(at_fake(fake)) == {"sdk-allowed"}


async def test_sdk_gets_a_problem_document_for_an_invalid_event(collector_run_pipeline, fake):
    async with collector_run_pipeline(config(fake.url)) as p:

        def invalid() -> HttpResponseError:
            with sdk(p) as client:
                try:
                    client.events.ingest_events(
                        [
                            {"id": "ok-1", "source": "app", "specversion": "1.0", "type": "t", "subject": "s"},
                            {"id": "bad-1", "source": "app", "specversion": "1.0", "type": "t"},
                        ],
                        **CALL,
                    )
                except HttpResponseError as exc:
                    return exc
            raise AssertionError("an event without subject was accepted")

        exc = await asyncio.to_thread(invalid)
        assert exc.status_code == 400
        problem = orjson.loads(exc.response.read())
        assert problem["invalid"][0]["index"] == 1 and problem["invalid"][0]["field"] == "subject"
        assert problem["invalid"][0]["id"] == "bad-1"
        await asyncio.sleep(0.1)
        assert p.service.exporters["openmeter"].queue.stats().events == 0
    assert not fake.arrivals


@pytest.mark.parametrize(("path", "status"), [(V1, 204), (V3, 202)])
async def test_plain_http_clients_reach_openmeter_through_the_collector(collector_run_pipeline, fake, path, status):
    async with collector_run_pipeline(config(fake.url)) as p:
        auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}

        def event(event_id: str) -> dict[str, Any]:
            return {"specversion": "1.0", "id": event_id, "source": "curl", "type": "t", "subject": "s"}

        no_spec = {k: v for k, v in event("plain-1").items() if k != "specversion"}
        bodies = [
            ("application/cloudevents+json", no_spec),
            ("application/cloudevents-batch+json; charset=utf-8", [event(f"plain-b{i}") for i in range(3)]),
            ("application/json", [event("plain-j")]),
        ]
        async with aiohttp.ClientSession() as s:
            for ctype, body in bodies:
                headers = {**auth, "Content-Type": ctype}
                async with s.post(receiver_url(p) + path, data=orjson.dumps(body), headers=headers) as r:
                    assert r.status == status, await r.text()
        expected = {"plain-1", "plain-j"} | {f"plain-b{i}" for i in range(3)}
        await fake.wait_for_ids(expected)
    events = at_fake(fake)
    assert set(events) == expected
    assert events["plain-1"]["specversion"] == "1.0"  # filled in by the receiver, as OpenMeter requires
