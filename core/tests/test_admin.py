"""Admin endpoints over real HTTP on 127.0.0.1."""

from __future__ import annotations

import aiohttp

from collector.errors import AuthError
from collector.runtime.admin import AdminServer
from collector.testing import eventually


async def start_admin(p) -> AdminServer:
    admin = AdminServer("127.0.0.1:0", p.service.telemetry, lambda: p.service)
    await admin.start()
    return admin


YAML = (
    "receivers: {scripted: {}}\n"
    "exporters: {memory: {batch: {period: 0.01}, retry: {initial_interval: 0.01, auth_interval: 0.05}}}\n"
)


async def test_ping_ready_health_metrics(collector_run_pipeline):
    async with collector_run_pipeline(YAML) as p:
        admin = await start_admin(p)
        base = f"http://127.0.0.1:{admin.port}"
        try:
            await p.receiver().send([{"specversion": "1.0", "id": "x", "source": "s", "type": "t", "subject": "u"}])
            await p.exporter().wait_for(1)
            runner = p.service.exporters["memory"]
            # The ack follows the export by a moment.
            await eventually(lambda: runner.queue.stats().events == 0, message="the queue is empty")
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/ping") as r:
                    assert r.status == 200 and await r.text() == "pong"
                async with http.get(base + "/ready") as r:
                    assert r.status == 200 and (await r.json()) == {"ready": True}
                async with http.get(base + "/health") as r:
                    h = await r.json()
                    assert r.status == 200 and h["status"] == "ok"
                    assert set(h["components"]["receivers"]) == {"scripted"}
                    assert h["components"]["exporters"]["memory"]["queue"]["events"] == 0
                async with http.get(base + "/metrics") as r:
                    text = await r.text()
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                for name in (
                    "batch_created",
                    "batch_sent",
                    "buffer_batch_received",
                    "buffer_batch_sent",
                    "buffer_latency_ns_bucket",
                    "collector_exporter_delivered_events_total",
                    "collector_queue_events",
                ):
                    assert f"\n{name}" in text, name
                assert 'collector_exporter_delivered_events_total{exporter="memory"} 1.0' in text
        finally:
            await admin.stop()


async def test_ready_turns_false_while_exporter_paused_on_auth(collector_run_pipeline):
    async with collector_run_pipeline(YAML) as p:
        admin = await start_admin(p)
        try:
            p.exporter().fail_with = [AuthError("403 Forbidden", status=403)] * 1000
            await p.receiver().send([{"specversion": "1.0", "id": "x", "source": "s", "type": "t", "subject": "u"}])
            async with aiohttp.ClientSession() as http:

                async def not_ready() -> dict | None:
                    async with http.get(f"http://127.0.0.1:{admin.port}/ready") as r:
                        return await r.json() if r.status == 503 else None

                body = await eventually(not_ready, timeout=4, message="/ready turns false")
            assert body["ready"] is False, body
            assert any("exporter memory: 403 Forbidden" in reason for reason in body["reasons"])
            p.exporter().fail_with = []
        finally:
            await admin.stop()


async def test_no_service_means_not_ready():
    from collector.telemetry import Telemetry

    admin = AdminServer("127.0.0.1:0", Telemetry(), lambda: None)
    await admin.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{admin.port}/ready") as r:
                assert r.status == 503
            async with http.get(f"http://127.0.0.1:{admin.port}/ping") as r:
                assert r.status == 200
    finally:
        await admin.stop()
