"""Worker processes (``service.workers``; docs/operations.md, "Worker processes"), end to end.

Real ``collector run`` processes with two workers in front of the fake
OpenMeter: both workers take connections on the one port, the admin server
speaks for all of them, a killed worker comes back on its shard, a stop or a
lower ``workers`` strands nothing, and the dead letters of every shard are
reachable from ``collector dlq``.  The kill -9 oracle with two workers is in
tests/reliability/test_oracle_crash.py.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.testing import eventually_sync
from support.collector_proc import (
    EXPORTER_ID,
    CollectorProcess,
    collector_command,
    collector_config,
    free_port,
    metric_sum,
)
from support.fake_openmeter import FakeOpenMeter
from support.loadgen import make_event

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, url: str, workers: int = 2, **kw: Any) -> dict[str, Any]:
    cfg = collector_config(
        storage=tmp_path / "storage", openmeter_url=url, receiver_port=free_port(), admin_port=free_port(), **kw
    )
    cfg["service"]["workers"] = workers
    return cfg


def _post_each_on_a_new_connection(proc: CollectorProcess, events: list[dict[str, Any]]) -> list[int]:
    """One connection per event: the kernel spreads new connections over the workers' sockets."""
    host, port = proc.config["receivers"]["http"]["endpoint"].rsplit(":", 1)
    codes = []
    for event in events:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(
                "POST", "/api/v1/events", orjson.dumps(event), {"Content-Type": "application/cloudevents+json"}
            )
            codes.append(conn.getresponse().status)
        finally:
            conn.close()
    return codes


def _worker_queues(proc: CollectorProcess) -> dict[str, int]:
    doc = proc.health() or {}
    return {
        index: w["components"]["exporters"][EXPORTER_ID]["queue"]["events"]
        for index, w in doc.get("workers", {}).items()
        if "components" in w
    }


def test_two_workers_share_the_port_and_answer_as_one_collector(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: every event stays in its shard
    with CollectorProcess(tmp_path, _config(tmp_path, unreachable)) as proc:
        proc.start()
        proc.wait_started(timeout=30)
        events = [make_event("workers", f"w-{i}") for i in range(40)]
        assert _post_each_on_a_new_connection(proc, events) == [204] * 40

        queues = _worker_queues(proc)
        assert set(queues) == {"1", "2"}
        assert sum(queues.values()) == 40
        assert all(n > 0 for n in queues.values()), f"one worker took every connection: {queues}"

        samples = proc.metrics()
        assert metric_sum(samples, "collector_receiver_accepted_events_total", receiver="http") == 40
        assert metric_sum(samples, "collector_queue_events", exporter=EXPORTER_ID) == 40
        assert metric_sum(samples, "collector_workers_running") == 2
        assert metric_sum(samples, "collector_up") == 1  # the primary's, not a sum over processes
        status, body = proc.get("/ready")
        assert status == 200, body

        # Each shard is its own durable queue under the storage directory.
        for index in ("1", "2"):
            assert proc.shard_queue_db(int(index)).exists()
        assert proc.stop() == 0
        assert "collector stopped" in proc.log_tail(60)


def test_a_killed_worker_is_started_again_and_delivers_its_shard(tmp_path: Path) -> None:
    with FakeOpenMeter.in_thread() as fake:
        fake.pause_listening_sync(None)  # connection refused: events wait in the shards
        with CollectorProcess(tmp_path, _config(tmp_path, fake.url)) as proc:
            proc.start()
            proc.wait_started(timeout=30)
            events = [make_event("workers", f"k-{i}") for i in range(30)]
            assert _post_each_on_a_new_connection(proc, events) == [204] * 30
            pids = proc.worker_pids()
            victim = 1 if _worker_queues(proc).get("1") else 2
            os.kill(pids[victim], signal.SIGKILL)

            eventually_sync(
                lambda: proc.worker_pids().get(victim) not in (None, pids[victim]),
                timeout=20,
                message="the killed worker started again",
            )
            assert metric_sum(proc.metrics(), "collector_worker_restarts_total", worker=str(victim)) == 1
            assert "exited with status -9" in proc.log_tail(80)

            fake.resume_listening_sync()
            fake.wait_for_ids_sync([("workers", e["id"]) for e in events], timeout=30)
            proc.wait_drained(timeout=30)
            assert proc.stop() == 0


def test_sigterm_drains_every_worker_and_a_lower_count_strands_nothing(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    cfg = _config(tmp_path, unreachable)
    with CollectorProcess(tmp_path, cfg) as proc:
        proc.start()
        proc.wait_started(timeout=30)
        events = [make_event("workers", f"d-{i}") for i in range(30)]
        assert _post_each_on_a_new_connection(proc, events) == [204] * 30
        held = _worker_queues(proc)
        assert proc.stop() == 0  # the destination is down: what is left stays in the shards
    assert sum(held.values()) == 30

    with FakeOpenMeter.in_thread() as fake:
        cfg = _config(tmp_path, fake.url, workers=1)
        cfg["storage"] = {"directory": str(tmp_path / "storage")}
        with CollectorProcess(tmp_path / "second", cfg) as proc:
            proc.start()
            proc.wait_started(timeout=30)
            # No worker runs the two shards any more: the primary's senders deliver them.
            fake.wait_for_ids_sync([("workers", e["id"]) for e in events], timeout=30)
            log = proc.log_tail(80)
            assert "no worker runs shard 1" in log and "no worker runs shard 2" in log
            assert proc.stop() == 0
        assert sorted(e["id"] for e in fake.arrivals) == sorted(e["id"] for e in events)


def test_sighup_restarts_every_worker_on_the_new_configuration(tmp_path: Path) -> None:
    with FakeOpenMeter.in_thread() as fake, CollectorProcess(tmp_path, _config(tmp_path, fake.url)) as proc:
        proc.start()
        proc.wait_started(timeout=30)
        before = proc.worker_pids()
        # The new configuration asks for a bearer token on intake: every worker must enforce it.
        new = dict(proc.config)
        new["receivers"] = {"http": {**proc.config["receivers"]["http"], "auth": {"tokens": ["s3cret-token"]}}}
        proc.config_path.write_text(json.dumps(new), encoding="utf-8")
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        eventually_sync(
            lambda: len(after := proc.worker_pids()) == 2 and not set(after.values()) & set(before.values()),
            timeout=30,
            message="both workers started again",
        )
        codes = _post_each_on_a_new_connection(proc, [make_event("workers", f"h-{i}") for i in range(12)])
        assert codes == [401] * 12, codes
        assert "configuration reloaded" in proc.log_tail(80)
        assert proc.stop() == 0


def test_dead_letters_of_every_shard_are_listed_and_ids_need_a_worker(tmp_path: Path) -> None:
    with FakeOpenMeter.in_thread() as fake:
        poison = {f"p-{i}" for i in range(20)}
        fake.reject_ids(poison)
        with CollectorProcess(tmp_path, _config(tmp_path, fake.url)) as proc:
            proc.start()
            proc.wait_started(timeout=30)
            assert (
                _post_each_on_a_new_connection(proc, [make_event("workers", i) for i in sorted(poison)]) == [204] * 20
            )
            proc.wait_drained(timeout=30)
            assert proc.stop() == 0

        def dlq(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*collector_command(), "dlq", *args, "-c", str(proc.config_path)],
                capture_output=True,
                text=True,
                timeout=60,
            )

        def listed() -> list[dict[str, Any]]:
            out = dlq("list", "--json", "--limit", "1000")
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

        rows = listed()
        assert {r["event"]["id"] for r in rows} == poison
        shards = {r["exporter"] for r in rows}
        assert shards == {f"{EXPORTER_ID} (worker 1)", f"{EXPORTER_ID} (worker 2)"}, shards

        ambiguous = dlq("drop", "--ids", "1")
        assert ambiguous.returncode == 2 and "--worker" in ambiguous.stderr
        dropped = dlq("drop", "--worker", "2", "--all")
        assert dropped.returncode == 0 and f"{EXPORTER_ID} (worker 2): dropped" in dropped.stdout
        assert {r["exporter"] for r in listed()} == {f"{EXPORTER_ID} (worker 1)"}


def test_a_port_of_zero_and_a_single_process_processor_are_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "http://127.0.0.1:9")
    cfg["receivers"]["http"]["endpoint"] = "127.0.0.1:0"
    with CollectorProcess(tmp_path / "port0", cfg) as proc:
        proc.start()
        assert proc.proc is not None
        assert proc.proc.wait(timeout=60) == 1
        assert "give it a fixed port, not 0" in proc.log_tail(40)

    cfg = _config(tmp_path, "http://127.0.0.1:9")
    cfg["processors"] = {"dedupe": {}}
    cfg["service"]["pipelines"]["events"]["processors"] = ["dedupe"]
    path = tmp_path / "dedupe.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    out = subprocess.run(
        [*collector_command(), "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "processor 'dedupe' keeps state that one process must own" in out.stderr


# A cumulative counter billed by its deltas (docs/components/otlp-receiver.md): one usage event per
# non-zero delta, its id from the series and the point's time.
_METER_MAPPING = (
    'None if not this.value else {"specversion": "1.0", "type": "tokens", "source": "otlp-test", '
    '"id": stable_id(this.series, this.time), "subject": this.attributes["user"], "time": this.time, '
    '"data": {"value": this.value}}'
)


def _cumulative_export(value: int, second: int) -> bytes:
    """An OTLP/HTTP metrics export: the counter of user acme stands at ``value`` (CUMULATIVE, one series)."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    start = 1_700_000_000 * 1_000_000_000
    point = metrics_pb2.NumberDataPoint(
        start_time_unix_nano=start,
        time_unix_nano=start + second * 1_000_000_000,
        as_int=value,
        attributes=[common_pb2.KeyValue(key="user", value=common_pb2.AnyValue(string_value="acme"))],
    )
    metric = metrics_pb2.Metric(
        name="tokens",
        sum=metrics_pb2.Sum(
            data_points=[point],
            aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True,
        ),
    )
    request = metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metric])])]
    )
    return request.SerializeToString()


def test_cumulative_otlp_metrics_are_billed_once_whichever_worker_takes_the_connection(tmp_path: Path) -> None:
    """The cumulative-to-delta state belongs to one process. An SDK that opens a new connection per
    export (OTLP/HTTP after an idle timeout) must not reach a worker that never saw the series and
    bills its whole cumulative value again: the otlp receiver then runs in the primary only."""
    otlp_port = free_port()
    with FakeOpenMeter.in_thread() as fake:
        cfg = _config(tmp_path, fake.url)
        cfg["receivers"]["otlp"] = {"grpc": None, "http": {"endpoint": f"127.0.0.1:{otlp_port}"}}
        cfg["processors"] = {"mapping": {"expression": _METER_MAPPING}}
        cfg["service"]["pipelines"]["metrics"] = {
            "receivers": ["otlp"],
            "processors": ["mapping"],
            "exporters": [EXPORTER_ID],
        }
        with CollectorProcess(tmp_path, cfg) as proc:
            proc.start()
            proc.wait_started(timeout=30)
            exports = 16
            for i in range(1, exports + 1):  # the counter grows by 10 between exports
                conn = http.client.HTTPConnection("127.0.0.1", otlp_port, timeout=10)
                try:
                    conn.request(
                        "POST", "/v1/metrics", _cumulative_export(10 * i, i), {"Content-Type": "application/x-protobuf"}
                    )
                    answer = conn.getresponse()
                    assert answer.status == 200, answer.read()
                finally:
                    conn.close()

            def billed() -> int:  # OpenMeter counts an event id once
                return sum(int(e["data"]["value"]) for e in {e["id"]: e for e in fake.arrivals}.values())

            eventually_sync(lambda: billed() >= 10 * exports, timeout=20, message="the usage is delivered")
            time.sleep(0.5)  # room for any event billed twice to arrive too
            assert billed() == 10 * exports, [e["data"]["value"] for e in fake.arrivals]
            assert len(fake.ids()) == exports
            assert "runs in the primary process only" in proc.log_tail(200)
            assert proc.stop() == 0


_LOG_MAPPING = (
    '{"specversion": "1.0", "type": "log", "source": "otlp-test", "id": stable_id(this.time, this.body), '
    '"subject": "acme", "time": this.time, "data": {"body": this.body}}'
)


def test_max_connection_age_spreads_one_grpc_client_over_the_workers(tmp_path: Path) -> None:
    """One gRPC client keeps one connection, which the kernel gave to one worker; with
    grpc.max_connection_age it is asked to reconnect now and then, and its load reaches both."""
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.logs.v1 import logs_pb2

    grpc_port = free_port()
    unreachable = f"http://127.0.0.1:{free_port()}"  # every event stays in the shard that took it
    cfg = _config(tmp_path, unreachable)
    cfg["receivers"]["otlp"] = {
        "grpc": {"endpoint": f"127.0.0.1:{grpc_port}", "max_connection_age": 0.25, "max_connection_age_grace": 5},
        "http": None,
        "metrics": {"cumulative_to_delta": False},  # logs only: the receiver may run in every worker
    }
    cfg["processors"] = {"mapping": {"expression": _LOG_MAPPING}}
    cfg["service"]["pipelines"]["logs"] = {"receivers": ["otlp"], "processors": ["mapping"], "exporters": [EXPORTER_ID]}
    with CollectorProcess(tmp_path, cfg) as proc:
        proc.start()
        proc.wait_started(timeout=30)
        sent = 0
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            export = channel.unary_unary(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                request_serializer=logs_service_pb2.ExportLogsServiceRequest.SerializeToString,
                response_deserializer=logs_service_pb2.ExportLogsServiceResponse.FromString,
            )
            deadline = time.monotonic() + 3.0  # about 12 connection lifetimes
            while time.monotonic() < deadline:
                record = logs_pb2.LogRecord(
                    time_unix_nano=1_700_000_000_000_000_000 + sent,
                    body=common_pb2.AnyValue(string_value=f"call {sent}"),
                )
                request = logs_service_pb2.ExportLogsServiceRequest(
                    resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=[record])])]
                )
                answer = export(request, timeout=10)  # a GOAWAY never fails a call
                assert not answer.partial_success.rejected_log_records
                sent += 1
                time.sleep(0.01)

        queues = _worker_queues(proc)
        assert set(queues) == {"1", "2"}
        assert sum(queues.values()) == sent
        assert all(n > 0 for n in queues.values()), f"one worker took the client's every call: {queues}"
        assert "runs in the primary process only" not in proc.log_tail(200)
        assert proc.stop() == 0
