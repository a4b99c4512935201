"""The helpers that collector.api adds for plugins: metrics, component ids, HTTP client settings, endpoints."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from collector.api import ComponentContext, ComponentID, Endpoint, HttpClientConfig, HttpUrl, Meter, parse_endpoint
from collector.telemetry import Telemetry


def test_meter_creates_once_under_the_collector_prefix() -> None:
    meter = Meter(CollectorRegistry())
    first = meter.counter("widgets_seen", "Widgets.", ["receiver"])
    again = meter.counter("collector_widgets_seen_total", "Widgets.", ["receiver"])
    assert first is again
    first.labels(receiver="x").inc(3)
    text = generate_latest(meter.registry).decode()
    assert 'collector_widgets_seen_total{receiver="x"} 3.0' in text


def test_meter_refuses_another_kind_or_other_labels_with_what_was_first() -> None:
    meter = Meter(CollectorRegistry())
    meter.gauge("depth", "Depth.", ["queue"])
    with pytest.raises(ValueError, match=r"already registered as a gauge with labels \['queue'\]"):
        meter.counter("depth", "Depth.", ["queue"])
    with pytest.raises(ValueError, match="asked for a gauge with labels"):
        meter.gauge("depth", "Depth.", ["other"])
    with pytest.raises(ValueError, match="lower-case"):
        meter.histogram("Bad-Name", "x")


def test_meter_does_not_shadow_the_core_metrics() -> None:
    telemetry = Telemetry()
    with pytest.raises(ValueError, match="cannot be registered"):
        telemetry.meter.counter("receiver_received_events", "clash with the core", ["receiver"])


def test_components_share_the_meter_of_their_service(tmp_path: Path) -> None:
    telemetry = Telemetry()
    a = ComponentContext("prometheus/a", "receiver", tmp_path, telemetry)
    b = ComponentContext("prometheus/b", "receiver", tmp_path, telemetry)
    assert a.metrics.counter("x", "x", ["receiver"]) is b.metrics.counter("x", "x", ["receiver"])
    assert a.component_id == ComponentID("prometheus", "a") and a.type == "prometheus"


@pytest.mark.parametrize(
    ("text", "type_", "name"), [("openmeter", "openmeter", None), ("openmeter/eu-1", "openmeter", "eu-1")]
)
def test_component_id_round_trips(text: str, type_: str, name: str | None) -> None:
    cid = ComponentID.parse(text)
    assert (cid.type, cid.name, str(cid)) == (type_, name, text)


@pytest.mark.parametrize("bad", ["", "OpenMeter", "a/", "a/b/c", "/x", "1x"])
def test_component_id_refuses_what_the_config_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="type/name"):
        ComponentID.parse(bad)


class _Client(HttpClientConfig):
    url: HttpUrl


def test_http_client_settings_build_headers_and_secrets(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    cfg = _Client(url="https://api.example.com/v1/", token_file=token_file, headers={"X-Api-Key": "k1", "X-Team": "a"})
    assert cfg.url == "https://api.example.com/v1"
    assert cfg.auth_headers()["Authorization"] == "Bearer first"
    token_file.write_text("rotated\n")
    assert cfg.auth_headers()["Authorization"] == "Bearer rotated"  # read on every call
    assert cfg.secrets() == ["k1"]  # credential-like headers only; the file's token is not in the config
    basic = _Client(url="http://h:1", username="u", password="p", timeout="2s")
    assert basic.timeout == 2.0
    assert basic.auth_headers()["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert basic.secrets() == ["p"]
    assert basic.ssl_context() is True
    assert _Client(url="https://h", insecure_skip_verify=True).ssl_context() is False


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "ftp://h"}, r"is not an http\(s\) URL"),
        ({"url": "http://u:p@h"}, "not in the URL"),
        ({"url": "http://h", "token": "t", "username": "u"}, "not both"),
        ({"url": "http://h", "password": "p"}, "password needs a username"),
        ({"url": "http://h", "token": "t", "headers": {"authorization": "x"}}, "conflicts"),
        ({"url": "http://h", "timeout": "soon"}, "duration"),
    ],
)
def test_http_client_settings_refuse_contradictions(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _Client(**fields)


def test_http_client_settings_name_an_unreadable_ca_file(tmp_path: Path) -> None:
    from collector.api import ConfigError

    cfg = _Client(url="https://h", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as err:
        cfg.ssl_context("receivers.x")
    assert err.value.path == "receivers.x.ca_file" and "missing.pem" in err.value.message


class _Listener(BaseModel):
    endpoint: Endpoint


def test_endpoints() -> None:
    assert parse_endpoint("[::1]:4317") == ("::1", 4317)
    assert parse_endpoint(":8080") == ("0.0.0.0", 8080)
    assert _Listener(endpoint="127.0.0.1:1").endpoint == "127.0.0.1:1"
    with pytest.raises(ValidationError, match="is not host:port"):
        _Listener(endpoint="localhost")
