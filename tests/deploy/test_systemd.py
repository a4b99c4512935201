"""contrib/systemd/collector.service: verified by systemd itself, and its environment run for real.

``systemd-analyze verify`` is the check systemd offers without booting a unit: it parses every directive
and fails on unknown ones, bad values and an ExecStart binary that does not exist (so the test points
ExecStart at this venv's collector in a copy). The other tests hold the unit to what
contrib/systemd/README.md promises, and start ``collector run`` with the environment the unit gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from collector.durations import parse_duration
from support.collector_proc import free_port
from support.fake_openmeter import FakeOpenMeter
from support.smoke import post_events, wait_until

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "systemd" / "collector.service"
EXAMPLE = REPO / "contrib" / "systemd" / "config.yaml"
EXEC = "/opt/collector/bin/collector"
COLLECTOR = Path(sys.executable).with_name("collector")


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: systemd allows a key several times (Environment=)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return unit_directives(UNIT.read_text(encoding="utf-8"))


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: .ci/run installs the `systemd` package")
    path = tmp_path / "collector.service"
    path.write_text(text, encoding="utf-8")
    return subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={EXEC} run" in text
    proc = _verify(tmp_path, text.replace(EXEC, str(COLLECTOR)))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is worth something: the same tool refuses a missing binary, and reports a bad value on
    stderr (systemd ignores it with a warning, which the check above counts as a failure)."""
    text = UNIT.read_text(encoding="utf-8")
    assert _verify(tmp_path, text.replace(EXEC, str(tmp_path / "no-such-collector"))).returncode != 0
    broken = text.replace(EXEC, str(COLLECTOR)).replace("ProtectSystem=strict", "ProtectSystem=very")
    proc = _verify(tmp_path, broken)
    assert "protect system value" in proc.stderr and "very" in proc.stderr, proc.stderr


def test_unit_is_hardened_as_documented(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "collector",
        "ConfigurationDirectory": "collector",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
    }
    assert {k: svc.get(k) for k in expected} == expected
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def _unit_env(unit: dict[str, dict[str, list[str]]], state: Path, etc: Path) -> dict[str, str]:
    """The unit's Environment= lines with systemd's specifiers %S (/var/lib) and %E (/etc) mapped."""
    env: dict[str, str] = {}
    for line in unit["Service"]["Environment"]:
        key, _, value = line.partition("=")
        env[key] = value.replace("%S", str(state)).replace("%E", str(etc))
    return env


def test_stop_timeout_outlasts_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    env = _unit_env(unit, Path("/var/lib"), Path("/etc"))
    drain = parse_duration(env["COLLECTOR_DRAIN_TIMEOUT"])
    stop = parse_duration(unit["Service"]["TimeoutStopSec"][-1])
    assert stop is not None and drain is not None
    assert stop > drain, "systemd would SIGKILL the collector in the middle of its drain"


def test_collector_keeps_its_queue_in_the_state_directory(
    unit: dict[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """`collector run` with the unit's environment and the example config: storage in %S/collector, SIGHUP
    reloads, SIGTERM drains and exits 0."""
    state, etc, cwd = tmp_path / "var-lib", tmp_path / "etc", tmp_path / "elsewhere"
    (state / "collector").mkdir(parents=True)  # StateDirectory= creates it before ExecStart
    (etc / "collector").mkdir(parents=True)
    cwd.mkdir()
    receiver, admin = free_port(), free_port()
    config = EXAMPLE.read_text(encoding="utf-8")
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{receiver}").replace("127.0.0.1:4195", f"127.0.0.1:{admin}")
    (etc / "collector" / "config.yaml").write_text(config, encoding="utf-8")
    log = tmp_path / "collector.log"
    with FakeOpenMeter.in_thread(token="om-token") as fake:
        env = {"PATH": os.environ["PATH"], **_unit_env(unit, state, etc)}
        env |= {"OPENMETER_URL": fake.url, "OPENMETER_TOKEN": "om-token"}  # what collector.env would hold
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(COLLECTOR), "run"], env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        try:

            def started() -> bool:  # /health says so once the receivers listen
                assert proc.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=1) as resp:
                        return bool(json.loads(resp.read()).get("started_at"))
                except urllib.error.HTTPError as exc:
                    return bool(json.loads(exc.read()).get("started_at"))
                except (OSError, ValueError):
                    return False

            wait_until(started, 30, "service started (/health)", log)
            event = {"specversion": "1.0", "id": "unit-1", "source": "systemd-test", "type": "t", "subject": "s"}
            assert post_events(f"http://127.0.0.1:{receiver}/api/v1/events", event) == 204
            fake.wait_for_ids_sync({("systemd-test", "unit-1")}, timeout=15)
            proc.send_signal(signal.SIGHUP)  # ExecReload=
            wait_until(lambda: "reloading configuration" in log.read_text(errors="replace"), 15, "SIGHUP reload", log)
            proc.send_signal(signal.SIGTERM)  # KillSignal=
            assert proc.wait(timeout=40) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert "collector stopped" in log.read_text(errors="replace")
    assert (state / "collector" / "exporters" / "openmeter").is_dir(), sorted(map(str, state.rglob("*")))
    assert not any(cwd.iterdir()), "nothing is written to the working directory outside the state directory"
