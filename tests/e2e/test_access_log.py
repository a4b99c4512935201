"""The seed's access-log example, end to end: raw JSON over HTTP -> mapping -> queue -> fake OpenMeter."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from collector.config import load_config
from collector.events import stable_id
from collector.plugins import PluginSelection, load_registry
from collector.runtime.service import Service
from support.fake_openmeter import FakeOpenMeter

EXAMPLE = Path(__file__).resolve().parents[2] / "core" / "src" / "collector" / "examples" / "access-log.yaml"

RECORDS = [
    {"timestamp": "2026-01-01T12:00:00Z", "method": "GET", "path": "/v1/search", "user": "customer-1", "duration": 42},
    {"timestamp": "2026-01-01T12:00:01Z", "method": "POST", "path": "/v1/items", "user": "customer-2", "duration": 7},
]


@pytest.fixture
async def running(tmp_path):
    fake = FakeOpenMeter(token="om-secret")
    await fake.start()
    env = {
        "COLLECTOR_HTTP_ENDPOINT": "127.0.0.1:0",
        "OPENMETER_URL": fake.url,
        "OPENMETER_TOKEN": "om-secret",
        "COLLECTOR_STORAGE_DIRECTORY": str(tmp_path / "data"),
    }
    text = EXAMPLE.read_text().replace("service:\n", "service:\n  telemetry: {endpoint: null}\n", 1)
    text = text.replace("exporters:\n  openmeter:\n", "exporters:\n  openmeter:\n    batch: {period: 0.05}\n", 1)
    registry = load_registry(PluginSelection(disabled=True))
    service = Service(load_config(text, registry, environ=env), registry)
    await service.start()
    url = f"http://127.0.0.1:{service.receivers['http'].port}/ingest"
    try:
        yield url, fake
    finally:
        await service.stop(5)
        await fake.stop()


async def test_access_log_records_become_api_call_events(running):
    url, fake = running
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=RECORDS) as r:
            assert r.status == 204, await r.text()
        ndjson = b"\n".join(orjson.dumps(r) for r in RECORDS) + b"\n"  # a log shipper retrying the same lines
        async with http.post(url, data=ndjson, headers={"Content-Type": "application/x-ndjson"}) as r:
            assert r.status == 204
    expected_ids = {stable_id(r["timestamp"], r["method"], r["path"], r["user"]) for r in RECORDS}
    await fake.wait_for_ids(expected_ids, timeout=10)
    first = next(e for e in fake.arrivals if e["subject"] == "customer-1")
    assert first == {
        "specversion": "1.0",
        "type": "api-call",
        "source": "api-gateway",
        "id": stable_id("2026-01-01T12:00:00Z", "GET", "/v1/search", "customer-1"),
        "time": "2026-01-01T12:00:00Z",
        "subject": "customer-1",
        "data": {"duration": 42, "method": "GET", "path": "/v1/search"},
    }
    # The retry carried the same ids: OpenMeter would count each record once.
    assert {i for (_, i) in fake.ids()} == expected_ids


async def test_a_bad_record_is_refused_by_index_and_nothing_is_accepted(running):
    url, fake = running
    bad = [RECORDS[0], {"timestamp": "2026-01-01T12:00:02Z", "method": "GET", "path": "/", "duration": 1}]
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=bad) as r:
            assert r.status == 400
            assert r.headers["Content-Type"].startswith("application/problem+json")
            problem = await r.json()
        async with http.post(url, data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "not valid JSON" in (await r.json())["detail"]
        async with http.post(url, data=b"x", headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 415
    assert [(p["index"], p["field"]) for p in problem["invalid"]] == [(1, "subject")]
    assert fake.arrivals == []
