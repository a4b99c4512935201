"""The Grafana dashboard (contrib/helm/collector/files/grafana-dashboard.json) and the metrics it and the alert
rules (contrib/helm/collector/files/prometheus-rules.yaml) query.

* the dashboard is a Grafana dashboard of schemaVersion >= 36 with a ``datasource`` variable and ``job`` and
  ``instance`` variables that every panel query filters on, with the rows docs/operations.md describes;
* every expression parses (the real ``promtool check rules``, on a throw-away file of recording rules);
* every metric name a panel or a rule uses is served by a running collector: a real ``collector run`` with an
  http receiver, a durable queue, an openmeter exporter (to the fake OpenMeter, made to fail once and to
  reject one event), a Prometheus pull receiver (against a minimal fake Prometheus API) and the local
  coordinator. Names that no collector serves (Prometheus's own ``up``) are listed with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from collector.testing import eventually_sync
from support.collector_proc import EXPORTER_ID, CollectorProcess, collector_config, free_port, metric_sum
from support.fake_openmeter import FakeOpenMeter
from support.loadgen import make_event

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib/helm/collector/files/grafana-dashboard.json"
RULES = REPO / "contrib/helm/collector/files/prometheus-rules.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# Names an expression may use that no collector serves, and why.
NOT_FROM_THE_COLLECTOR = {"up": "Prometheus's own scrape-health series (CollectorDown)"}

# -- PromQL identifiers ----------------------------------------------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan",
}  # fmt: skip
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (``_bucket``/``_sum``/``_count`` removed).

    Strips string literals (label values), label matchers ``{...}``, ranges ``[...]``, grouping clauses
    (``by (le)``, ``on (job)``...), then keeps identifiers that are not keywords, numbers or function calls.
    Grafana variables (``$job``, ``$__rate_interval``) only occur inside what is stripped.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(_HISTOGRAM_SUFFIX.sub("", word))
    return names


def test_metric_names_parses_the_hard_cases() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, exporter) "
        '(rate(x_seconds_bucket{job=~"$job", a="b{c}"}[$__rate_interval])))'
        " / 1e9 + on (job) group_left (instance) max without (code) (y_total offset 5m) > bool 0.8"
        " and z unless (time() - w_timestamp_seconds) or -Inf"
    )
    assert metric_names(expr) == {"x_seconds", "y_total", "z", "w_timestamp_seconds"}


# -- the dashboard ---------------------------------------------------------------------------------------


def _dashboard() -> dict[str, object]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _panel_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in _dashboard()["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_structure() -> None:
    doc = _dashboard()
    assert int(doc["schemaVersion"]) >= 36  # type: ignore[call-overload]
    variables = {v["name"]: v for v in doc["templating"]["list"]}  # type: ignore[index]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= variables.keys()
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]  # type: ignore[attr-defined]
    assert rows == ["Intake", "Queue", "Delivery", "Dead letters", "Pull receivers", "Leadership"]
    ids = [p["id"] for p in doc["panels"]]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:  # type: ignore[attr-defined]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # every selector is narrowed to the chosen job and instance
            selectors = re.findall(r"\{([^}]*)\}", target["expr"])
            assert selectors and all('job=~"$job"' in s and 'instance=~"$instance"' in s for s in selectors), panel[
                "title"
            ]


@pytest.mark.skipif(not Path(PROMTOOL).exists(), reason="promtool missing: .ci/run installs 'prometheus'")
def test_every_panel_expression_parses(tmp_path: Path) -> None:
    """promtool parses each query, with Grafana's variables replaced by what Grafana sends."""
    rules = []
    for i, (_title, expr) in enumerate(_panel_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
        rules.append({"record": f"dashboard:panel_{i}", "expr": concrete})
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- a running collector ---------------------------------------------------------------------------------


class _FakePrometheusAPI(BaseHTTPRequestHandler):
    """``/api/v1/query`` and ``/api/v1/query_range`` answering an empty, successful result."""

    def _answer(self) -> None:
        kind = "matrix" if "query_range" in self.path else "vector"
        body = json.dumps({"status": "success", "data": {"resultType": kind, "result": []}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_prometheus() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheusAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", "application/cloudevents-batch+json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def served_names(tmp_path_factory: pytest.TempPathFactory, fake_prometheus: str) -> set[str]:
    """Metric names (histogram suffixes removed) in the /metrics of a collector that has done some of everything."""
    work = tmp_path_factory.mktemp("dash")
    with FakeOpenMeter.in_thread() as fake:
        config = collector_config(
            storage=work / "storage", openmeter_url=fake.url, receiver_port=free_port(), admin_port=free_port()
        )
        config["receivers"]["prometheus"] = {
            "url": fake_prometheus,
            "interval": "5s",
            "offset": "0s",
            "queries": [{"name": "cpu", "query": "sum by (subject) (rate(cpu_seconds_total[5m]))"}],
        }
        config["coordinators"] = {"local": {}}
        config["service"]["coordinator"] = "local"
        config["service"]["pipelines"]["events"]["receivers"] = ["http", "prometheus"]
        with CollectorProcess(work, config) as proc:
            proc.start()
            proc.wait_started()
            fake.fail_next(503)  # one retry, so collector_exporter_retries_total has a series
            good = [make_event("dash", f"ok-{i}") for i in range(5)]
            assert _post(proc.ingest_url, json.dumps(good).encode()) == 204
            assert _post(proc.ingest_url, b'[{"specversion": "1.0"}]') == 400  # refused: invalid
            fake.wait_for_ids_sync([e["id"] for e in good], timeout=15)
            fake.reject_ids(["poison"])  # rejected by the destination: dead-lettered
            assert _post(proc.ingest_url, json.dumps([make_event("dash", "poison")]).encode()) == 204

            def everything_happened() -> bool:
                samples = proc.metrics()
                return (
                    metric_sum(samples, "collector_exporter_dead_lettered_events_total", exporter=EXPORTER_ID) >= 1
                    and metric_sum(samples, "collector_pull_windows_total", outcome="success") >= 1
                    and metric_sum(samples, "collector_exporter_retries_total") >= 1
                )

            eventually_sync(everything_happened, timeout=20, interval=0.1, message="dead letter, retry, window")
            samples = proc.metrics()
            proc.stop()
    return {_HISTOGRAM_SUFFIX.sub("", key.partition("{")[0]) for key in samples}


def test_every_queried_metric_is_served_by_a_running_collector(served_names: set[str]) -> None:
    used: dict[str, set[str]] = {}
    for where, expr in [*_panel_exprs(), *_rule_exprs()]:
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    assert len(used) > 20  # the parser found the queries' names at all
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in served_names and name not in NOT_FROM_THE_COLLECTOR
    }
    assert missing == {}, f"metrics queried but not served by the collector: {missing}"
    # Nothing is left on the exception list that the collector in fact serves or nobody uses.
    assert set(NOT_FROM_THE_COLLECTOR) <= used.keys() - served_names
