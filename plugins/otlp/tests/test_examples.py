"""The config examples and the docs page work as written; the plugin declares itself lazily; config errors read well."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from otlp_support import Meter, Sdk, emit_logs, emit_spans

from collector.config import load_config
from collector.errors import ConfigError
from collector.testing import run_pipeline

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "core" / "src" / "collector" / "examples"
PAGE = ROOT / "docs" / "components" / "otlp-receiver.md"


def example(name: str) -> str:
    """A config example with ports the OS picks and the memory exporter instead of OpenMeter."""
    data = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    data["receivers"]["otlp"]["grpc"]["endpoint"] = "127.0.0.1:0"
    data["receivers"]["otlp"]["http"]["endpoint"] = "127.0.0.1:0"
    data["exporters"] = {"memory": {"batch": {"period": 0.01}}}
    for pipeline in data["service"]["pipelines"].values():
        pipeline["exporters"] = ["memory"]
    data.pop("storage", None)
    return yaml.safe_dump(data)


async def test_genai_tokens_example_bills_spans_and_metrics(registry, tmp_path):
    async with run_pipeline(example("otlp-genai-tokens.yaml"), tmp_path, registry=registry, environ={}) as p:
        rec = p.service.receivers["otlp"]
        chat = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 42,
            "enduser.id": "customer-7",
        }
        ok, spans = await asyncio.to_thread(
            emit_spans,
            Sdk("grpc", rec.grpc.port, gzip=True).span_exporter(),
            [("chat gpt-4o", chat), ("GET /health", {"http.route": "/health"})],
        )
        assert ok
        (call,) = await p.exporter().wait_for(1)
        ctx = spans[0].get_span_context()
        assert call["type"] == "llm-call" and call["subject"] == "customer-7"
        assert call["source"] == "otlp/sdk-app"
        expected = {"model": "gpt-4o-2024-08-06", "provider": "openai", "operation": "chat", "input_tokens": 120}
        assert call["data"] == {**expected, "output_tokens": 42, "duration_ms": call["data"]["duration_ms"]}
        # the same span exported again gets the same id: OpenMeter counts it once
        assert await asyncio.to_thread(
            lambda: Sdk("http", rec.http.port).span_exporter().export(spans).name == "SUCCESS"
        )
        events = await p.exporter().wait_for(2)
        assert events[1]["id"] == call["id"] and f"{ctx.span_id:016x}"

        # metrics: the GenAI client histogram, cumulative as SDKs export it
        app = Meter(**{"tenant.id": "acme"})
        usage = app.meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
        exporter = Sdk("http", rec.http.port, gzip=True).metric_exporter()
        model = {"gen_ai.request.model": "gpt-4o", "gen_ai.operation.name": "chat"}
        usage.record(120, {**model, "gen_ai.token.type": "input"})
        usage.record(42, {**model, "gen_ai.token.type": "output"})
        assert await asyncio.to_thread(app.export, exporter)
        usage.record(80, {**model, "gen_ai.token.type": "input"})
        assert await asyncio.to_thread(app.export, exporter)
        assert await asyncio.to_thread(app.export, exporter)  # nothing new: no event
        app.shutdown()
        events = await p.exporter().wait_for(5)
        await asyncio.sleep(0.1)
        tokens = [e for e in p.exporter().events if e["type"] == "llm-tokens"]
    assert [(e["subject"], e["data"]["token_type"], e["data"]["tokens"], e["data"]["calls"]) for e in tokens] == [
        ("acme", "input", 120.0, 1),
        ("acme", "output", 42.0, 1),
        ("acme", "input", 80.0, 1),
    ]


async def test_logs_usage_example_bills_the_records_that_name_a_customer(registry, tmp_path):
    async with run_pipeline(example("otlp-logs-usage.yaml"), tmp_path, registry=registry, environ={}) as p:
        rec = p.service.receivers["otlp"]
        entries = [
            ("request served", {"customer.id": "c-1", "request.id": "req-1", "http.route": "/v1/x", "duration_ms": 12}),
            ("cache warmed", {}),
            ("request served", {"customer.id": 42, "http.route": "/v1/y"}),
        ]
        assert await asyncio.to_thread(emit_logs, Sdk("http", rec.http.port).log_exporter(), entries)
        events = await p.exporter().wait_for(2)
    assert (events[0]["subject"], events[0]["id"], events[0]["data"]["route"]) == ("c-1", "req-1", "/v1/x")
    assert events[1]["subject"] == "42" and len(events[1]["id"]) == 36 and events[1]["type"] == "api-request"


# -- the plugin and its configuration ------------------------------------------------------------


def test_the_hook_declares_the_receiver(registry):
    info = next(p for p in registry.plugins if p.name == "otlp")
    assert info.status == "loaded" and "receiver/otlp" in info.components


def test_importing_the_plugin_imports_no_grpc_nor_protobuf():
    code = (
        "import sys, collector_plugin_otlp\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google') or m.startswith('opentelemetry')"
        " or m.startswith('collector_plugin_otlp.receiver')]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("{grpc: null, http: null}", "enable at least one transport"),
        ("{grpc: {endpoint: nowhere}}", "is not host:port"),
        ("{grpc: {port: 4317}}", r"receivers\.otlp\.grpc\.port: unknown field"),
        ("{metrics: {series_ttl: soon}}", r"metrics\.series_ttl: .*not a duration"),
        ("{metrics: {series_ttl: 0}}", r"metrics\.series_ttl: Input should be greater than 0"),
        ("{max_message_bytes: 0}", "max_message_bytes"),
    ],
)
def test_configuration_errors_name_the_setting(fragment, message, registry):
    text = f"receivers:\n  otlp: {fragment}\nexporters:\n  memory: {{}}\n"
    text += "service:\n  pipelines:\n    p: {receivers: [otlp], exporters: [memory]}\n"
    with pytest.raises(ConfigError, match=message):
        load_config(text, registry, source="<test>")


def test_defaults_listen_on_localhost(registry):
    text = "receivers:\n  otlp: {}\nexporters:\n  memory: {}\n"
    text += "service:\n  pipelines:\n    p: {receivers: [otlp], exporters: [memory]}\n"
    cfg = load_config(text, registry, source="<test>")
    model = next(c.config for c in cfg.components.values() if c.type == "otlp")
    assert (model.grpc.endpoint, model.http.endpoint) == ("127.0.0.1:4317", "127.0.0.1:4318")
    assert model.metrics.cumulative_to_delta and model.metrics.initial_value == "keep"


async def test_a_port_in_use_is_a_clear_start_up_error(registry, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for transport in ("grpc", "http"):
            other = "http" if transport == "grpc" else "grpc"
            text = (
                f"receivers:\n  otlp: {{{transport}: {{endpoint: '127.0.0.1:{port}'}}, {other}: null}}\n"
                "exporters:\n  memory: {}\n"
            )
            with pytest.raises(OSError, match=f"cannot listen for OTLP/.* on 127.0.0.1:{port}"):
                async with run_pipeline(text, tmp_path / transport, registry=registry):
                    pass


def test_the_docs_page_covers_every_setting(registry):
    model = registry.component("receiver", "otlp").config_model
    text = PAGE.read_text(encoding="utf-8")
    missing = [n for n in model.model_fields if not re.search(rf"`{re.escape(n)}[`.:\s]", text)]
    assert not missing, f"docs/components/otlp-receiver.md does not mention: {', '.join(missing)}"
    for nested in ("metrics", "grpc", "http"):
        sub = model.model_fields[nested].annotation
        sub = next(a for a in getattr(sub, "__args__", (sub,)) if a is not type(None))
        gaps = [n for n in sub.model_fields if f"`{n}`" not in text and f"{nested}.{n}" not in text]
        assert not gaps, f"the page does not mention {nested}: {gaps}"
    assert "../reference/receiver-otlp.md" in text
    for name in ("otlp-genai-tokens.yaml", "otlp-logs-usage.yaml"):
        assert f"collector/examples/{name}" in text
