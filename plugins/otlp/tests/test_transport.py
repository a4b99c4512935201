"""What the receiver answers, on both transports: success, partial success, bad input, auth, TLS, backpressure.

Each refusal gets the status the OTLP specification prescribes and a message a
person can act on, and the receiver keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from otlp_support import (
    T0,
    Sdk,
    emit_logs,
    grpc_channel,
    grpc_export,
    logs_request,
    pipeline_yaml,
    self_signed,
    spans_request,
    status_details,
    sum_request,
)

from collector.errors import RetryableError
from collector.testing import run_pipeline

PROTOBUF = {"Content-Type": "application/x-protobuf"}
BASE64_ID = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "AAECAwQFBgcICQoLDA0ODw=="}]}]}]}'
JSON = {"Content-Type": "application/json"}

# Record 0 of a batch without `n` breaks the mapping; one without `user` has no subject (validation).
STRICT_MAPPING = """\
{"specversion": "1.0", "type": "t", "source": "test", "id": stable_id(this),
 "subject": this.attributes.user, "time": coalesce(this.time, this.end_time),
 "data": {"n": this.attributes.n + 1}}"""


async def post(session, url, body, headers):
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def rpc_status(headers: dict, body: bytes) -> status_pb2.Status:
    if headers.get("Content-Type", "").startswith("application/json"):
        data = json.loads(body)
        out = status_pb2.Status(code=data.get("code", 0), message=data.get("message", ""))
        return out
    return status_pb2.Status.FromString(body)


# -- encodings and partial success ---------------------------------------------------------------


async def test_otlp_json_with_hex_ids_camel_case_and_integer_enums(registry, tmp_path):
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chat"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "genai"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "chat",
                                "kind": 3,
                                "startTimeUnixNano": "1714564800000000000",
                                "endTimeUnixNano": 1714564800250000000,
                                "status": {"code": 2, "message": "boom"},
                                "attributes": [
                                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "120"}},
                                    {"key": "blob", "value": {"bytesValue": "AAE="}},
                                    {"key": "aNewFieldFromAFutureVersion", "value": {"stringValue": "x"}},
                                ],
                                "someFutureField": {"nested": True},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    async with run_pipeline(pipeline_yaml(), tmp_path, registry=registry) as p:
        url = f"http://127.0.0.1:{p.service.receivers['otlp'].http.port}/v1/traces"
        async with aiohttp.ClientSession() as s:
            status, headers, answer = await post(s, url, json.dumps(body), JSON)
        assert (status, headers["Content-Type"], json.loads(answer)) == (200, "application/json", {})
        (event,) = await p.exporter().wait_for(1)
    span = event["data"]["record"]
    assert span["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert span["span_id"] == "eee19b7ec3c1b174" and span["parent_span_id"] == "eee19b7ec3c1b173"
    assert span["kind"] == "client" and span["status"] == {"code": "error", "message": "boom"}
    assert span["duration_ms"] == 250.0 and span["end_time"] == "2024-05-01T12:00:00.250Z"
    assert span["attributes"]["gen_ai.usage.input_tokens"] == 120 and span["attributes"]["blob"] == "AAE="
    assert event["subject"] == "chat"


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_http_partial_success_names_the_count_and_the_first_reason(encoding, registry, tmp_path):
    request = logs_request(["bad mapping", "no user", "fine"])
    records = request.resource_logs[0].scope_logs[0].log_records
    records[1].attributes.add(key="n", value={"int_value": 1})
    records[2].attributes.add(key="n", value={"int_value": 2})
    records[2].attributes.add(key="user", value={"string_value": "acme"})
    if encoding == "json":
        from google.protobuf import json_format

        body = json_format.MessageToJson(request).encode()
        for raw in (b"AAECAwQFBgcICQoLDA0ODw==", b"AAECAwQFBgc="):  # base64 ids -> hex, as OTLP/JSON wants
            import base64

            body = body.replace(raw, base64.b64decode(raw).hex().encode())
        headers = JSON
    else:
        body, headers = request.SerializeToString(), PROTOBUF
    async with run_pipeline(pipeline_yaml(mapping=STRICT_MAPPING), tmp_path, registry=registry) as p:
        url = f"http://127.0.0.1:{p.service.receivers['otlp'].http.port}/v1/logs"
        async with aiohttp.ClientSession() as s:
            status, _, answer = await post(s, url, body, headers)
        await p.exporter().wait_for(1)
        await asyncio.sleep(0.2)
        events = p.exporter().events
    assert status == 200
    if encoding == "json":
        partial = json.loads(answer)["partialSuccess"]
        rejected, message = int(partial["rejectedLogRecords"]), partial["errorMessage"]
    else:
        partial = logs_service_pb2.ExportLogsServiceResponse.FromString(answer).partial_success
        rejected, message = partial.rejected_log_records, partial.error_message
    assert rejected == 2
    assert message.startswith("2 of 3 log records rejected by the collector's pipeline (the rest were accepted)")
    assert "log record 0" in message and "TypeError" in message
    assert [e["data"]["n"] for e in events] == [3]  # only the valid record was committed


async def test_grpc_partial_success_for_each_signal(registry, tmp_path):
    async with run_pipeline(pipeline_yaml(mapping=STRICT_MAPPING), tmp_path, registry=registry) as p:
        port = p.service.receivers["otlp"].grpc.port
        with grpc_channel(port) as ch:
            logs = await asyncio.to_thread(grpc_export, ch, "logs", logs_request(["a", "b"], n=1, user="acme"))
            assert not logs.HasField("partial_success")
            spans = await asyncio.to_thread(grpc_export, ch, "traces", spans_request(3, n=1))  # no user
            metrics = await asyncio.to_thread(
                grpc_export, ch, "metrics", sum_request([(1, 5, {"n": 1, "user": "a"}), (1, 6, {"n": 1})])
            )
        await p.exporter().wait_for(3)
        await asyncio.sleep(0.2)
        events = p.exporter().events
    assert isinstance(spans, trace_service_pb2.ExportTraceServiceResponse)
    assert spans.partial_success.rejected_spans == 3
    assert spans.partial_success.error_message.startswith(
        "3 of 3 spans rejected by the collector's pipeline (none was accepted); "
        "span 0 field 'subject': subject is required"
    )
    assert isinstance(metrics, metrics_service_pb2.ExportMetricsServiceResponse)
    assert metrics.partial_success.rejected_data_points == 1
    assert "data point 1" in metrics.partial_success.error_message
    assert len(events) == 3  # two logs and one data point


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_partial_success_commits_the_rest_once_and_counts_each_record_once(transport, registry, tmp_path):
    # Through the real SDK exporter: one record breaks the mapping (no n), one has
    # no subject (the exporter's event rules); the SDK is told success, with the count.
    entries = [("fine", {"n": 1, "user": "acme"}), ("no n", {"user": "acme"}), ("no user", {"n": 2})]
    async with run_pipeline(pipeline_yaml(mapping=STRICT_MAPPING), tmp_path, registry=registry) as p:
        receiver = p.service.receivers["otlp"]
        port = receiver.grpc.port if transport == "grpc" else receiver.http.port
        assert await asyncio.to_thread(emit_logs, Sdk(transport, port).log_exporter(), entries)
        m = p.service.telemetry.metrics
        counts = (
            m.received.labels(receiver="otlp")._value.get(),
            m.accepted.labels(receiver="otlp")._value.get(),
            m.refused.labels(receiver="otlp", reason="invalid")._value.get(),
        )
    # Leaving the context drained the queue: the valid record, once.
    assert [e["data"]["n"] for e in p.exporter().events] == [2]
    assert counts == (3, 1, 2)


# -- bad input -----------------------------------------------------------------------------------


async def test_http_bad_input_gets_the_prescribed_status_and_the_receiver_keeps_serving(registry, tmp_path):
    good = logs_request(["ok"]).SerializeToString()
    big = logs_request(["x" * 5000]).SerializeToString()
    receiver = "max_message_bytes: 4096"
    async with run_pipeline(pipeline_yaml(receiver), tmp_path, registry=registry) as p:
        base = f"http://127.0.0.1:{p.service.receivers['otlp'].http.port}"
        cases = [
            # (path, body, headers, status, words in the message)
            ("/v1/logs", b"\xff\xff\xff\xff\xff", PROTOBUF, 400, "not a valid protobuf"),
            ("/v1/logs", good[: len(good) // 2], PROTOBUF, 400, "not a valid protobuf"),
            ("/v1/metrics", b"{not json", JSON, 400, "not valid JSON"),
            ("/v1/logs", b"[]", JSON, 400, "must be a JSON object"),
            ("/v1/traces", BASE64_ID, JSON, 400, "not hex"),
            ("/v1/logs", b'{"resourceLogs": 5}', JSON, 400, "not a valid OTLP/JSON"),
            ("/v1/logs", good, {"Content-Type": "text/plain"}, 415, "application/x-protobuf"),
            ("/v1/logs", good, {}, 415, "unsupported Content-Type"),
            ("/v1/logs", good, {**PROTOBUF, "Content-Encoding": "snappy"}, 415, "Content-Encoding"),
            ("/v1/logs", b"not gzip at all", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "could not be read"),
            ("/v1/logs", big, PROTOBUF, 413, "max_message_bytes=4096"),
            ("/v1/logs", gzip.compress(b"\x00" * 100_000), {**PROTOBUF, "Content-Encoding": "gzip"}, 413,
             "decompressed"),
            ("/v1/profiles", good, PROTOBUF, 404, "/v1/logs, /v1/metrics, /v1/traces"),
        ]  # fmt: skip
        async with aiohttp.ClientSession() as s:
            for path, body, headers, expected, words in cases:
                status, answer_headers, answer = await post(s, base + path, body, headers)
                assert status == expected, (path, headers, answer)
                message = rpc_status(answer_headers, answer).message
                assert words in message, (expected, message)
                # and the receiver still serves
                assert (await post(s, base + "/v1/logs", good, PROTOBUF))[0] == 200
            async with s.get(base + "/v1/logs") as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "POST"
            # unknown protobuf fields are ignored, as proto3 and OTLP want
            unknown = good + b"\xa2\x06\x03abc"  # field 100, length-delimited
            assert (await post(s, base + "/v1/logs", unknown, PROTOBUF))[0] == 200
        count = len(cases) + 1  # a good request after each bad one, and the one with unknown fields
        events = await p.exporter().wait_for(count)
        assert len(events) == count
        metrics = p.service.telemetry.metrics.requests
        assert metrics.labels(receiver="otlp", code="400")._value.get() == 7


async def test_grpc_bad_input_gets_invalid_argument_and_the_receiver_keeps_serving(registry, tmp_path):
    good = logs_request(["ok"]).SerializeToString()
    async with run_pipeline(pipeline_yaml("max_message_bytes: 4096"), tmp_path, registry=registry) as p:
        with grpc_channel(p.service.receivers["otlp"].grpc.port) as ch:
            for bad, code, words in [
                (b"\xff\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid protobuf"),
                (good[:-3], grpc.StatusCode.INVALID_ARGUMENT, "not a valid protobuf"),
                (logs_request(["x" * 5000]).SerializeToString(), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than"),
            ]:
                with pytest.raises(grpc.RpcError) as refused:
                    await asyncio.to_thread(grpc_export, ch, "logs", bad)
                assert refused.value.code() == code
                assert words in refused.value.details()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    assert status_details(refused.value).code == code.value[0]
                await asyncio.to_thread(grpc_export, ch, "logs", good)
            # a gzip message small on the wire but over the limit once decompressed
            zipped = logs_request(["y" * 6000]).SerializeToString()
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(grpc_export, ch, "logs", zipped, compression=grpc.Compression.Gzip)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # unknown fields are ignored
            await asyncio.to_thread(grpc_export, ch, "logs", good + b"\xa2\x06\x03abc")
        await p.exporter().wait_for(4)


# -- auth and TLS ---------------------------------------------------------------------------------


async def test_bearer_tokens_on_both_transports(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("OTLP_TOKENS", "env-token-1, env-token-2")
    receiver = 'auth: {tokens: ["inline-token"], tokens_env: OTLP_TOKENS}'
    async with run_pipeline(pipeline_yaml(receiver), tmp_path, registry=registry) as p:
        rec = p.service.receivers["otlp"]
        url = f"http://127.0.0.1:{rec.http.port}/v1/logs"
        body = logs_request(["x"]).SerializeToString()
        async with aiohttp.ClientSession() as s:
            for auth in (None, "Bearer wrong", "inline-token", "Basic aW5saW5lLXRva2Vu", "Bearer \udcff"):
                headers = {**PROTOBUF, **({"Authorization": auth} if auth else {})}
                status, answer_headers, answer = await post(s, url, body, headers)
                assert status == 401 and answer_headers["WWW-Authenticate"].startswith("Bearer")
                assert "bearer token is required" in rpc_status(answer_headers, answer).message
            for token in ("inline-token", "env-token-2"):
                status, _, _ = await post(s, url, body, {**PROTOBUF, "Authorization": f"Bearer {token}"})
                assert status == 200
        with grpc_channel(rec.grpc.port) as ch:
            for token in (None, "wrong"):
                with pytest.raises(grpc.RpcError) as refused:
                    await asyncio.to_thread(grpc_export, ch, "logs", body, token=token)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await asyncio.to_thread(grpc_export, ch, "logs", body, token="env-token-1")
        # the SDK exporters with the token header
        for transport, port in (("grpc", rec.grpc.port), ("http", rec.http.port)):
            assert await asyncio.to_thread(emit_logs, Sdk(transport, port, token="inline-token").log_exporter(),
                                           [("sdk", {})])  # fmt: skip
            assert not await asyncio.to_thread(emit_logs, Sdk(transport, port, token="nope").log_exporter(),
                                               [("sdk", {})])  # fmt: skip
        events = await p.exporter().wait_for(5)
    assert len(events) == 5


async def test_tls_on_both_transports(registry, tmp_path):
    cert, key = self_signed(tmp_path)
    tls = f"tls: {{cert_file: '{cert}', key_file: '{key}'}}"
    yaml_text = pipeline_yaml().replace(
        '{grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}',
        f'{{grpc: {{endpoint: "127.0.0.1:0", {tls}}}, http: {{endpoint: "127.0.0.1:0", {tls}}}',
    )
    body = logs_request(["secure"]).SerializeToString()
    async with run_pipeline(yaml_text, tmp_path / "s", registry=registry) as p:
        rec = p.service.receivers["otlp"]
        ctx = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            status, _, _ = await post(s, f"https://127.0.0.1:{rec.http.port}/v1/logs", body, PROTOBUF)
            assert status == 200
        async with aiohttp.ClientSession() as s:  # plain HTTP on the TLS port is not served
            with pytest.raises(aiohttp.ClientError):
                await post(s, f"http://127.0.0.1:{rec.http.port}/v1/logs", body, PROTOBUF)
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc_channel(rec.grpc.port, credentials=credentials) as ch:
            await asyncio.to_thread(grpc_export, ch, "logs", body)
        with grpc_channel(rec.grpc.port) as ch, pytest.raises(grpc.RpcError):  # plaintext against TLS fails
            await asyncio.to_thread(grpc_export, ch, "logs", body, timeout=2)
        await p.exporter().wait_for(2)


# -- backpressure ---------------------------------------------------------------------------------


async def test_backpressure_is_503_with_retry_after_and_resource_exhausted_with_retry_info(registry, tmp_path):
    exporter = "queue: {kind: memory, max_bytes: 100}"
    async with run_pipeline(pipeline_yaml(exporter=exporter), tmp_path, registry=registry) as p:
        p.exporter().fail_with.extend(RetryableError("destination down") for _ in range(1000))
        rec = p.service.receivers["otlp"]
        body = logs_request(["fills the queue"]).SerializeToString()
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{rec.http.port}/v1/logs"
            assert (await post(s, url, body, PROTOBUF))[0] == 200
            status, headers, answer = await post(s, url, body, PROTOBUF)
            assert status == 503 and int(headers["Retry-After"]) >= 1
            refusal = rpc_status(headers, answer)
            assert "full" in refusal.message and "retry after" in refusal.message
            assert refusal.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        with grpc_channel(rec.grpc.port) as ch, pytest.raises(grpc.RpcError) as refused:
            await asyncio.to_thread(grpc_export, ch, "logs", body)
        error = refused.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in error.details()
        details = status_details(error)
        info = error_details_pb2.RetryInfo()
        assert details.details[0].Unpack(info) and info.retry_delay.seconds >= 1
        assert dict(error.trailing_metadata())["google.rpc.retryinfo-bin"] == info.SerializeToString()
        p.exporter().fail_with.clear()


async def test_both_transports_can_be_turned_off_one_at_a_time(registry, tmp_path):
    yaml_text = pipeline_yaml().replace('{grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}',
                                        '{grpc: null, http: {endpoint: "127.0.0.1:0"}')  # fmt: skip
    async with run_pipeline(yaml_text, tmp_path, registry=registry) as p:
        rec = p.service.receivers["otlp"]
        assert rec.grpc is None and rec.http.port
        health = rec.health()
        assert "grpc" not in health and health["http"]["port"] == rec.http.port


async def test_a_record_time_keeps_its_nanoseconds(registry, tmp_path):
    request = logs_request(["precise"])
    request.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = T0 + 123_456_789
    async with run_pipeline(pipeline_yaml(), tmp_path, registry=registry) as p:
        with grpc_channel(p.service.receivers["otlp"].grpc.port) as ch:
            await asyncio.to_thread(grpc_export, ch, "logs", request)
        (event,) = await p.exporter().wait_for(1)
    assert event["time"] == "2024-05-01T12:00:00.123456789Z"


async def test_while_stopping_both_transports_say_retry(registry, tmp_path):
    async with run_pipeline(pipeline_yaml(), tmp_path, registry=registry) as p:
        rec = p.service.receivers["otlp"]
        body = logs_request(["late"]).SerializeToString()
        rec._closing = True  # what shutdown sets first, before the servers stop listening
        async with aiohttp.ClientSession() as s:
            status, headers, answer = await post(s, f"http://127.0.0.1:{rec.http.port}/v1/logs", body, PROTOBUF)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "shutting down" in rpc_status(headers, answer).message
        with grpc_channel(rec.grpc.port) as ch, pytest.raises(grpc.RpcError) as refused:
            await asyncio.to_thread(grpc_export, ch, "logs", body)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "google.rpc.retryinfo-bin" in dict(refused.value.trailing_metadata())
        rec._closing = False
        assert p.exporter().events == []
