"""The receiver against a tiny aiohttp stand-in (auth, headers, errors) and canned API answers.

Prometheus itself has no authentication, and some failures (timeouts, 5xx
pages from a proxy, the rarer result types) are easiest to produce on demand,
so these tests talk to a fake that answers what each test scripts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import collector_plugin_prometheus
import orjson
import pytest
from aiohttp import web
from collector_plugin_prometheus.config import PrometheusReceiverConfig, QueryConfig
from collector_plugin_prometheus.receiver import PrometheusQueryError, PrometheusReceiver
from collector_plugin_prometheus.results import PrometheusAPIError, parse_data, parse_response
from promserver import free_port

from collector.clock import FakeClock
from collector.components import ComponentContext
from collector.errors import AuthError, ConfigError
from collector.pull import Window
from collector.telemetry import REDACTOR, Telemetry
from collector.testing import testing_registry

T = 1_767_225_600.0  # 2026-01-01T00:00:00Z
WINDOW = Window(T - 300, T)


def ok(data: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"status": "success", "data": data, **extra})


VECTOR = {"resultType": "vector", "result": [{"metric": {"subject": "acme", "tier": "gold"}, "value": [T, "12.5"]}]}


@dataclass
class FakePrometheus:
    """Answers /api/v1/query(_range) with whatever ``handler`` returns; records every request."""

    handler: Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]] | None = None
    requests: list[tuple[str, dict[str, str], dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append((request.path, dict(request.headers), form))
        if self.handler is not None:
            return await self.handler(request, form)
        return web.Response(body=ok(VECTOR), content_type="application/json")


@asynccontextmanager
async def fake_prometheus(handler: Any = None, *, token: str | None = None) -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus(handler)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401, text="Unauthorized\n")
        return await fake._handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", guarded)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


class NotLeader:
    """Keeps the receiver's own loop idle, so each test calls collect() itself."""

    def is_leader(self) -> bool:
        return False


@asynccontextmanager
async def receiver(tmp_path: Path, url: str, **cfg: Any) -> AsyncIterator[PrometheusReceiver]:
    cfg.setdefault("queries", [{"name": "usage", "query": "sum by (subject) (increase(x[{window}]))"}])
    config = PrometheusReceiverConfig(url=url, interval="5m", **cfg)
    ctx = ComponentContext(
        id="prometheus/unit", kind="receiver", storage_dir=tmp_path, telemetry=Telemetry(),
        clock=FakeClock(start=T), coordinator=NotLeader(),
    )  # fmt: skip
    rec = PrometheusReceiver(ctx, config)
    await rec.start()
    try:
        yield rec
    finally:
        await rec.shutdown()


# -- requests ----------------------------------------------------------------------------------------------


async def test_instant_query_request_and_default_event(tmp_path):
    async with fake_prometheus() as fake, receiver(tmp_path, fake.url + "/prefix/") as rec:
        events = await rec.collect(WINDOW)
    path, _headers, form = fake.requests[0]
    assert path == "/prefix/api/v1/query"
    assert form == {"query": "sum by (subject) (increase(x[300s]))", "time": "1767225600", "timeout": "30s"}
    assert events == [{
        "specversion": "1.0", "id": rec.event_id(WINDOW, "usage", [("subject", "acme"), ("tier", "gold")]),
        "source": "prometheus", "type": "usage", "subject": "acme", "time": "2025-12-31T23:55:00.000Z",
        "data": {"subject": "acme", "tier": "gold", "value": 12.5},
    }]  # fmt: skip


async def test_range_query_request(tmp_path):
    queries = [{"name": "r", "type": "range", "step": "1m", "query": "increase(x[{step}]) / {window}"}]
    async with fake_prometheus() as fake, receiver(tmp_path, fake.url, queries=queries) as rec:
        with pytest.raises(PrometheusQueryError, match="query 'r': a range query answered a vector, not a matrix"):
            await rec.collect(WINDOW)  # this fake answers a vector
    path, _, form = fake.requests[0]
    assert path == "/api/v1/query_range"
    assert form["query"] == "increase(x[60s]) / 300s"
    assert (form["start"], form["end"], form["step"]) == (str(int(T - 240)), str(int(T)), "60")


async def test_headers_tenant_and_basic_auth(tmp_path):
    cfg = {"username": "alice", "password": "pa55word", "tenant": "team-1", "headers": {"X-Extra": "yes"}}
    async with fake_prometheus() as fake, receiver(tmp_path, fake.url, **cfg) as rec:
        await rec.collect(WINDOW)
    headers = fake.requests[0][1]
    assert headers["X-Scope-OrgID"] == "team-1" and headers["X-Extra"] == "yes"
    assert headers["Authorization"] == "Basic YWxpY2U6cGE1NXdvcmQ="  # alice:pa55word
    assert REDACTOR.scrub("password pa55word") == "password ***"


async def test_wrong_token_is_a_401_naming_receiver_and_query(tmp_path):
    async with fake_prometheus(token="right-token") as fake:
        async with receiver(tmp_path, fake.url, token="wrong-token") as rec:
            with pytest.raises(AuthError) as refused:
                await rec.collect(WINDOW)
        async with receiver(tmp_path, fake.url, token="right-token") as rec:
            assert len(await rec.collect(WINDOW)) == 1
    message = str(refused.value)
    assert message.startswith("receiver prometheus/unit: query 'usage': HTTP 401 unauthorized")
    assert "refused our credentials" in message and "wrong-token" not in message


async def test_token_file_is_read_every_window_and_redacted(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    async with fake_prometheus() as fake, receiver(tmp_path, fake.url, token_file=str(token_file)) as rec:
        await rec.collect(WINDOW)
        token_file.write_text("rotated-token")
        await rec.collect(WINDOW)
        token_file.unlink()
        with pytest.raises(AuthError, match="cannot read token_file"):
            await rec.collect(WINDOW)
    assert [r[1]["Authorization"] for r in fake.requests] == ["Bearer first-token", "Bearer rotated-token"]
    assert REDACTOR.scrub("rotated-token first-token") == "*** ***"


# -- errors ------------------------------------------------------------------------------------------------


async def answer(status: int, body: bytes, content_type: str = "application/json") -> Any:
    async def handler(request: web.Request, form: dict[str, str]) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    return handler


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (400, b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}', "application/json",
         "query 'usage': Prometheus answered HTTP 400 bad_data: 1:5: parse error: unexpected"),
        (422, b'{"status":"error","errorType":"execution","error":"query processing would load too many samples"}',
         "application/json", "Prometheus answered HTTP 422 execution: query processing would load too many"),
        (503, b"<html><body>Service Unavailable</body></html>", "text/html",
         "query 'usage': HTTP 503: <html><body>Service Unavailable</body></html>"),
        (200, b"not json", "text/plain", "not a Prometheus API answer (HTTP 200 but no status/data): not json"),
    ],
)  # fmt: skip
async def test_error_answers_name_receiver_query_and_reason(tmp_path, status, body, content_type, expected):
    async with fake_prometheus(await answer(status, body, content_type)) as fake, receiver(tmp_path, fake.url) as rec:
        with pytest.raises(PrometheusQueryError) as failed:
            await rec.collect(WINDOW)
    assert str(failed.value).startswith("receiver prometheus/unit: query 'usage': ")
    assert expected in str(failed.value)


async def test_forbidden_is_an_auth_error(tmp_path):
    async with fake_prometheus(await answer(403, b"denied", "text/plain")) as fake, receiver(tmp_path, fake.url) as rec:
        with pytest.raises(AuthError, match=r"query 'usage': HTTP 403 forbidden.*: denied"):
            await rec.collect(WINDOW)


async def test_timeout(tmp_path):
    async def slow(request: web.Request, form: dict[str, str]) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(body=ok(VECTOR), content_type="application/json")

    async with fake_prometheus(slow) as fake, receiver(tmp_path, fake.url, timeout="200ms") as rec:
        with pytest.raises(PrometheusQueryError, match=r"query 'usage': no answer from .*/api/v1/query within 200ms"):
            await rec.collect(WINDOW)
    assert fake.requests[0][2]["timeout"] == "200ms"


async def test_connection_refused(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    async with receiver(tmp_path, url) as rec:
        with pytest.raises(PrometheusQueryError, match=rf"query 'usage': cannot connect to {url}"):
            await rec.collect(WINDOW)


async def test_every_failing_query_is_named_and_nothing_is_returned(tmp_path):
    async def half(request: web.Request, form: dict[str, str]) -> web.Response:
        if "broken" in form["query"]:
            return web.Response(status=400, body=b'{"status":"error","errorType":"bad_data","error":"nope"}')
        return web.Response(body=ok(VECTOR), content_type="application/json")

    queries = [{"name": "good", "query": "x"}, {"name": "bad1", "query": "broken"}, {"name": "bad2", "query": "broken"}]
    async with fake_prometheus(half) as fake, receiver(tmp_path, fake.url, queries=queries) as rec:
        with pytest.raises(PrometheusQueryError) as failed:
            await rec.collect(WINDOW)
    assert "query 'bad1'" in str(failed.value) and "query 'bad2'" in str(failed.value)
    assert "query 'good'" not in str(failed.value)


async def test_not_finite_values_are_skipped_and_counted(tmp_path):
    data = {"resultType": "vector", "result": [
        {"metric": {"subject": "a"}, "value": [T, "NaN"]},
        {"metric": {"subject": "b"}, "value": [T, "+Inf"]},
        {"metric": {"subject": "c"}, "value": [T, "1"]},
    ]}  # fmt: skip

    async def handler(request: web.Request, form: dict[str, str]) -> web.Response:
        return web.Response(body=ok(data), content_type="application/json")

    async with fake_prometheus(handler) as fake, receiver(tmp_path, fake.url) as rec:
        events = await rec.collect(WINDOW)
        skipped = rec.ctx.telemetry.metrics.registry.get_sample_value(
            "collector_prometheus_dropped_series_total",
            {"receiver": "prometheus/unit", "query": "usage", "reason": "not_finite"},
        )
    assert [e["subject"] for e in events] == ["c"] and skipped == 2


async def test_warnings_are_logged(tmp_path, caplog):
    async def handler(request: web.Request, form: dict[str, str]) -> web.Response:
        return web.Response(body=ok(VECTOR, warnings=["partial response"]), content_type="application/json")

    async with fake_prometheus(handler) as fake, receiver(tmp_path, fake.url) as rec:
        await rec.collect(WINDOW)
    assert "query 'usage': Prometheus warns for window" in caplog.text and "partial response" in caplog.text


async def test_a_mapping_error_fails_the_window_naming_the_series(tmp_path):
    async with fake_prometheus() as fake, receiver(tmp_path, fake.url, mapping="{'n': 1 / 0}") as rec:
        with pytest.raises(PrometheusQueryError) as failed:
            await rec.collect(WINDOW)
    assert 'query \'usage\': mapping of series {subject="acme", tier="gold"} failed: ZeroDivisionError' in str(
        failed.value
    )


# -- result types (canned answers) -----------------------------------------------------------------------


def test_matrix_result():
    series = parse_data({"resultType": "matrix", "result": [
        {"metric": {"__name__": "up", "job": "a"}, "values": [[T - 60, "1"], [T, "0"]]},
        {"metric": {"job": "b"}, "values": []},
    ]})  # fmt: skip
    assert [(s.labels, s.samples) for s in series] == [
        ({"__name__": "up", "job": "a"}, [(T - 60, 1.0), (T, 0.0)]),
        ({"job": "b"}, []),
    ]


def test_scalar_and_string_results():
    assert [(s.labels, s.samples) for s in parse_data({"resultType": "scalar", "result": [T, "42"]})] == [
        ({}, [(T, 42.0)])
    ]
    assert [(s.labels, s.samples) for s in parse_data({"resultType": "string", "result": [T, "hello"]})] == [
        ({}, [(T, "hello")])
    ]


def test_vector_envelope_and_malformed_answers():
    result = parse_response(200, ok(VECTOR, warnings=["w"]))
    assert result.result_type == "vector" and result.warnings == ["w"]
    assert result.series[0].samples == [(T, 12.5)]
    with pytest.raises(PrometheusAPIError, match="unknown result type 'table'"):
        parse_data({"resultType": "table", "result": []})
    with pytest.raises(PrometheusAPIError, match="native histogram samples are not supported"):
        parse_data({"resultType": "vector", "result": [{"metric": {}, "histogram": [T, {}]}]})
    with pytest.raises(PrometheusAPIError, match="not a number"):
        parse_data({"resultType": "scalar", "result": [T, "twelve"]})


async def test_an_instant_range_selector_gives_the_raw_samples(tmp_path):
    data = {"resultType": "matrix", "result": [
        {"metric": {"__name__": "gpu_util", "subject": "acme"}, "values": [[T - 200, "0.5"], [T - 100, "0.75"]]},
    ]}  # fmt: skip

    async def handler(request: web.Request, form: dict[str, str]) -> web.Response:
        return web.Response(body=ok(data), content_type="application/json")

    queries = [{"name": "util", "query": "gpu_util[{window}]"}]
    async with fake_prometheus(handler) as fake, receiver(tmp_path, fake.url, queries=queries) as rec:
        events = await rec.collect(WINDOW)
    assert fake.requests[0][2]["query"] == "gpu_util[300s]"
    assert [(e["time"], e["data"]) for e in events] == [
        ("2025-12-31T23:56:40.000Z", {"subject": "acme", "value": 0.5}),
        ("2025-12-31T23:58:20.000Z", {"subject": "acme", "value": 0.75}),
    ]
    assert len({e["id"] for e in events}) == 2  # the sample time is part of the id


async def test_scalar_and_string_records_through_a_mapping(tmp_path):
    answers = iter([
        {"resultType": "scalar", "result": [T, "7"]},
        {"resultType": "string", "result": [T, "v1.2"]},
    ])  # fmt: skip

    async def handler(request: web.Request, form: dict[str, str]) -> web.Response:
        return web.Response(body=ok(next(answers)), content_type="application/json")

    mapping = '{"subject": "acme", "data": {"value": this.value, "kind": this.type, "labels": this.labels}}'
    queries = [{"name": "total", "query": "scalar(sum(x))"}, {"name": "version", "query": '"v1.2"'}]
    async with fake_prometheus(handler) as fake:
        async with receiver(tmp_path, fake.url, queries=[queries[0]], mapping=mapping) as rec:
            scalar = await rec.collect(WINDOW)
        async with receiver(tmp_path, fake.url, queries=[queries[1]], mapping=mapping) as rec:
            string = await rec.collect(WINDOW)
        async with receiver(tmp_path, fake.url, queries=[queries[0]]) as rec:
            answers = iter([{"resultType": "scalar", "result": [T, "7"]}])
            unmapped = await rec.collect(WINDOW)
    assert scalar[0]["data"] == {"value": 7.0, "kind": "instant", "labels": {}}
    assert scalar[0]["type"] == "total" and scalar[0]["id"] == rec.event_id(WINDOW, "total", [])
    assert string[0]["data"]["value"] == "v1.2"
    assert unmapped == []  # no labels, so no subject label: skipped by the default mapping


# -- configuration and the hook -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "prometheus:9090"}, "is not an http(s) URL"),
        ({"url": "http://user:pw@prom:9090"}, "put credentials in username/password or token"),
        ({"queries": []}, "at least 1 item"),
        ({"queries": [{"name": "a", "query": "x"}, {"name": "a", "query": "y"}]}, "repeated: a"),
        ({"queries": [{"name": "a", "query": "x", "type": "range"}]}, "a range query needs a step"),
        ({"queries": [{"name": "a", "query": "x", "step": "1m"}]}, "step is only for range queries"),
        ({"queries": [{"name": "a", "query": "x[{step}]"}]}, "{step} is only allowed in range queries"),
        ({"queries": [{"name": "a", "query": "x[{windw}]"}]}, "unknown placeholder {windw}"),
        ({"queries": [{"name": "a", "query": "x", "type": "range", "step": "7m"}]}, "step 7m does not divide"),
        ({"token": "t", "token_file": "/f"}, "set token or token_file, not both"),
        ({"username": "u", "token": "t"}, "basic authentication (username/password) or a bearer token"),
        ({"password": "p"}, "password needs a username"),
        ({"token": "t", "headers": {"Authorization": "x"}}, "headers.Authorization conflicts"),
        ({"timeout": "soon"}, "not a duration"),
        ({"max_series": 0}, "greater than 0"),
        ({"scrape": "1m"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(settings, message):
    base: dict[str, Any] = {"url": "http://prom:9090", "interval": "5m", "queries": [{"name": "q", "query": "up"}]}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        PrometheusReceiverConfig(**{**base, **settings})


def test_window_placeholder_follows_the_schedule():
    cfg = PrometheusReceiverConfig(
        url="http://prom:9090/", queries=[{"name": "q", "query": 'increase(x{a="{b}"}[{window}])'}]
    )
    assert cfg.url == "http://prom:9090" and cfg.offset == 60.0 and cfg.subject_label == "subject"
    assert cfg.queries[0].render(300) == 'increase(x{a="{b}"}[300s])'
    assert cfg.queries[0].render(3600) == 'increase(x{a="{b}"}[3600s])'
    assert cfg.queries[0].render(1.5) == 'increase(x{a="{b}"}[1500ms])'
    q = QueryConfig(
        name="r", type="range", step="30s", query="avg_over_time(x[{step}]) * {step_seconds} / {window_seconds}"
    )
    assert q.render(600) == "avg_over_time(x[30s]) * 30 / 600"
    assert q.render(1.5).endswith("/ 1.5")


def test_every_field_is_described():
    for model in (PrometheusReceiverConfig, QueryConfig):
        assert model.model_config.get("extra") == "forbid"
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


async def test_a_bad_mapping_is_a_config_error_with_its_path(collector_run_pipeline):
    registry = testing_registry([("prometheus-under-test", collector_plugin_prometheus)])
    cfg = """
receivers:
  prometheus: {url: "http://127.0.0.1:9", queries: [{name: q, query: up}], mapping: "this.x +"}
exporters: {memory: {}}
"""
    with pytest.raises(ConfigError, match=r"receivers\.prometheus\.mapping: line 1, column \d+: syntax error"):
        async with collector_run_pipeline(cfg, registry=registry):
            pass


def test_the_hook_declares_the_receiver():
    registry = testing_registry([("prometheus-under-test", collector_plugin_prometheus)])
    info = next(p for p in registry.plugins if p.name == "prometheus-under-test")
    assert info.status == "loaded" and "receiver/prometheus" in info.components


def test_the_installed_plugin_is_listed_and_importing_it_stays_light():
    code = (
        "import sys, collector_plugin_prometheus\n"
        "heavy = [m for m in ('collector_plugin_prometheus.receiver', 'aiohttp') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("collector")), "plugins"], capture_output=True, text=True, timeout=60
    )
    assert "collector-plugin-prometheus" in listed.stdout and "receiver/prometheus" in listed.stdout


def test_the_docs_page_covers_every_setting():
    page = Path(__file__).resolve().parents[3] / "docs" / "components" / "prometheus-receiver.md"
    text = page.read_text(encoding="utf-8")
    for model in (PrometheusReceiverConfig, QueryConfig):
        missing = [n for n in model.model_fields if f"`{n}`" not in text]
        assert not missing, f"docs/components/prometheus-receiver.md does not mention: {', '.join(missing)}"
    assert "../reference/receiver-prometheus.md" in text
