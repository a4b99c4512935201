"""Every CLI command through a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from collector.testing import eventually_sync

GOOD = """
receivers:
  http: {endpoint: "127.0.0.1:%(http)d"}
exporters:
  debug: {path: "%(out)s", batch: {period: 0.05}}
  openmeter/unused: {url: "http://127.0.0.1:9", token: "%(token)s"}
storage: {directory: "%(storage)s"}
service:
  drain_timeout: 5
  telemetry: {endpoint: "127.0.0.1:%(admin)d", log_format: json}
  pipelines:
    events: {receivers: [http], exporters: [debug]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collector_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "collector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 15.0) -> None:
    def up() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    eventually_sync(up, timeout=timeout, message=f"{url} comes up")


def post_event(port: int, eid: str) -> int:
    body = json.dumps({"specversion": "1.0", "id": eid, "source": "cli", "type": "t", "subject": "s"}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/events",
        data=body,
        headers={"Content-Type": "application/cloudevents+json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    ports = {"http": free_port(), "admin": free_port()}
    values = {
        **ports,
        "out": str(tmp_path / "out.jsonl"),
        "storage": str(tmp_path / "data"),
        "token": "super-secret-token-123",
    }
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(GOOD % values)
    return {**values, "config": cfg, "tmp": tmp_path}


def test_help_is_fast(cli):
    t0 = time.perf_counter()
    out = cli("--help")
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0 and "validate" in out.stdout
    assert elapsed < 2.0  # generous bound for CI; the benchmark reports the real figure


def test_version(cli):
    out = cli("version")
    assert out.returncode == 0 and out.stdout.startswith("collector-core ")


def test_validate_ok_and_warning(cli, setup):
    out = cli("validate", "-c", str(setup["config"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("configuration OK: 1 pipeline(s)")
    assert "warning: exporters.openmeter/unused is defined but no pipeline uses it" in out.stderr
    assert "super-secret" not in out.stdout + out.stderr


def test_validate_error_is_one_line_exit_2_no_traceback(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "receivers: {http: {endpoint: 'x'}}\nexporters: {debug: {}}\n"
        "service: {pipelines: {p: {receivers: [http], exporters: [debug]}}}\n"
    )
    out = cli("validate", "-c", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: receivers.http.endpoint: Value error, 'x' is not host:port (for example 127.0.0.1:8080)"
    )
    assert "Traceback" not in out.stderr


def test_validate_missing_file_and_missing_variable(cli, tmp_path):
    out = cli("validate", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "nope.yaml: cannot read configuration: No such file or directory" in out.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exporters: {openmeter: {token: '${OM_TOKEN}'}}\n")
    out = cli("validate", "-c", str(cfg))
    assert out.returncode == 2
    assert "exporters.openmeter.token: environment variable OM_TOKEN is not set" in out.stderr


def test_schema_validates_a_real_config(cli, setup):
    out = cli("schema")
    assert out.returncode == 0
    schema = json.loads(out.stdout)
    config = yaml.safe_load(setup["config"].read_text())
    jsonschema.validate(config, schema)
    config["receivers"]["http"]["endpiont"] = "typo"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)
    config["receivers"]["http"].pop("endpiont")
    config["receivers"]["nosuchtype"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_run_accepts_events_and_stops_gracefully_on_sigterm(setup):
    proc = subprocess.Popen(
        [*collector_cmd(), "run", "-c", str(setup["config"])],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{setup['admin']}/ready")
        assert post_event(setup["http"], "cli-1") == 204
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in lines]
    assert any(m.startswith("collector started") for m in messages)
    assert "received SIGTERM: stopping gracefully" in messages
    assert any(m.startswith("collector stopped") for m in messages)
    out = Path(setup["out"]).read_text().splitlines()
    assert [json.loads(x)["id"] for x in out] == ["cli-1"]
    assert "super-secret-token-123" not in err


def test_sighup_reloads_valid_config_and_refuses_invalid(setup):
    proc = subprocess.Popen(
        [*collector_cmd(), "run", "-c", str(setup["config"])],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cfg: Path = setup["config"]
    try:
        wait_http(f"http://127.0.0.1:{setup['admin']}/ready")
        assert post_event(setup["http"], "before") == 204
        good_text = cfg.read_text()
        cfg.write_text(good_text.replace(f'endpoint: "127.0.0.1:{setup["http"]}"}}', "endpoint: 'broken'}"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert post_event(setup["http"], "still-running") == 204  # old config kept
        new_http = free_port()
        cfg.write_text(good_text.replace(str(setup["http"]), str(new_http)))
        proc.send_signal(signal.SIGHUP)

        def accepted_on_the_new_port() -> bool:
            try:
                return post_event(new_http, "after") == 204
            except OSError:
                return False

        eventually_sync(accepted_on_the_new_port, timeout=15, message="the reloaded config listens on the new port")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "reload refused, keeping the running configuration" in err
    assert "configuration reloaded" in err
    ids = [json.loads(x)["id"] for x in Path(setup["out"]).read_text().splitlines()]
    assert sorted(ids) == ["after", "before", "still-running"]


def test_run_without_arguments_starts_embedded_default(tmp_path):
    http, admin = free_port(), free_port()
    env = clean_env(
        COLLECTOR_HTTP_ENDPOINT=f"127.0.0.1:{http}",
        COLLECTOR_ADMIN_ENDPOINT=f"127.0.0.1:{admin}",
        COLLECTOR_STORAGE_DIRECTORY=str(tmp_path / "data"),
    )
    proc = subprocess.Popen(
        [*collector_cmd(), "run"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_http(f"http://127.0.0.1:{admin}/ready")
        assert post_event(http, "default-1") == 204
        time.sleep(1.5)  # one batch period
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "OPENMETER_URL is not set" in err
    assert json.loads(out.splitlines()[0])["id"] == "default-1"
    assert (tmp_path / "data" / "exporters" / "debug" / "queue").is_dir(), "default must use the durable queue"


def test_unknown_preset(cli):
    out = cli("validate", "--preset", "nope")
    assert out.returncode == 2
    assert "--preset: unknown preset 'nope'; available presets: default, http-server" in out.stderr


def test_http_server_preset_validates(cli, tmp_path):
    out = cli("validate", "--preset", "http-server", env={"COLLECTOR_STORAGE_DIRECTORY": str(tmp_path)})
    assert out.returncode == 0, out.stderr


def test_bad_environment_setting_is_a_one_line_error(cli, setup):
    out = cli("validate", "-c", str(setup["config"]), env={"COLLECTOR_LOG_LEVEL": "verbose"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: COLLECTOR_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'"
    out = cli("run", "-c", str(setup["config"]), env={"COLLECTOR_DRAIN_TIMEOUT": "0"})
    assert (
        out.returncode == 2 and out.stderr.strip() == "error: COLLECTOR_DRAIN_TIMEOUT: Input should be greater than 0"
    )


def test_map_expression_from_stdin(cli):
    records = '{"user": "u1", "n": 2}\n{"user": "u2"}\n{"n": 1}\n'
    out = cli("map", "-e", '{"subject": this.user, "twice": this.n * 2} if this.user else None', input=records)
    assert out.returncode == 1  # one record failed
    assert out.stdout.splitlines() == ['{"subject":"u1","twice":4}']
    assert "record 1: TypeError: unsupported operand type(s) for *: 'NoneType' and 'int'" in out.stderr
    assert "record 2: dropped (the mapping returned None)" in out.stderr


def test_map_compile_error_has_its_location(cli):
    out = cli("map", "-e", '{"a": this.x,\n "b": __import__("os")}', input="{}")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: --expression: line 2, column 7: names starting with '_' are not allowed: __import__"
    )


def test_map_runs_a_configured_pipeline_and_validates(cli):
    example = Path(__file__).resolve().parents[2] / "core" / "src" / "collector" / "examples" / "access-log.yaml"
    good = '{"timestamp":"2026-01-01T12:00:00Z","method":"GET","path":"/a","user":"c1","duration":3}'
    out = cli("map", "-c", str(example), input=good, env={"OPENMETER_TOKEN": "x"})
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)
    assert (event["type"], event["subject"], event["data"]["duration"]) == ("api-call", "c1", 3)
    bad = '{"timestamp":"2026-01-01T12:00:00Z","method":"GET","path":"/a","duration":3}'
    out = cli("map", "-c", str(example), input=good + "\n" + bad, env={"OPENMETER_TOKEN": "x"})
    assert out.returncode == 1
    assert "record 1 field 'subject': subject is required" in out.stderr


def test_map_runs_stateful_processors_without_touching_the_collectors_storage(cli, tmp_path):
    storage = tmp_path / "data"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "receivers: {http: {}}\n"
        "processors: {dedupe: {}}\n"
        "exporters: {debug: {}}\n"
        f"storage: {{directory: {storage}}}\n"
        "service: {pipelines: {p: {receivers: [http], processors: [dedupe], exporters: [debug]}}}\n"
    )
    event = '{"specversion":"1.0","id":"e1","source":"s","type":"t","subject":"u"}'
    for _ in range(2):  # a run keeps no keys: the same event passes the second time too
        out = cli("map", "-c", str(cfg), input=event + "\n" + event)
        assert out.returncode == 0, out.stderr
        assert [json.loads(line)["id"] for line in out.stdout.splitlines()] == ["e1"]
    assert not storage.exists()


def test_validate_honours_collector_config_and_collector_preset(cli, setup, tmp_path):
    out = cli("validate", env={"COLLECTOR_CONFIG": str(setup["config"])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("configuration OK: 1 pipeline(s); receivers: http;")
    out = cli("validate", env={"COLLECTOR_PRESET": "http-server", "COLLECTOR_STORAGE_DIRECTORY": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "receivers: http; processors: -; exporters: openmeter" in out.stdout
    # A flag wins over the environment, and COLLECTOR_CONFIG over COLLECTOR_PRESET.
    out = cli("validate", "--preset", "http-server", env={"COLLECTOR_CONFIG": str(tmp_path / "missing.yaml")})
    assert out.returncode == 0, out.stderr
    out = cli("validate", env={"COLLECTOR_CONFIG": str(setup["config"]), "COLLECTOR_PRESET": "nope"})
    assert out.returncode == 0 and "exporters: debug, openmeter/unused" in out.stdout, out.stderr
    out = cli("validate", env={"COLLECTOR_PRESET": "nope"})
    assert out.returncode == 2
    assert out.stderr.startswith("error: COLLECTOR_PRESET: unknown preset 'nope'; available presets:")


def test_retired_storage_variable_is_an_error_naming_its_replacement(cli, setup, tmp_path):
    out = cli("validate", "-c", str(setup["config"]), env={"COLLECTOR_STORAGE": str(tmp_path)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip() == "error: COLLECTOR_STORAGE is not read any more: set COLLECTOR_STORAGE_DIRECTORY instead"
    )


def test_log_level_from_the_environment_in_any_case(cli, setup):
    out = cli(
        "validate", "-c", str(setup["config"]), env={"COLLECTOR_LOG_LEVEL": "WARNING", "COLLECTOR_LOG_FORMAT": "Text"}
    )
    assert out.returncode == 0, out.stderr
