"""The ``kubernetes`` preset: what a Helm chart selects with COLLECTOR_PRESET=kubernetes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import collector_plugin_kubernetes

from collector import presets
from collector.config import load_config
from collector.testing import testing_registry


def _load(environ: dict[str, str]):
    registry = testing_registry([("kubernetes-under-test", collector_plugin_kubernetes)])
    text = presets.load("kubernetes", plugin_presets=registry.presets())
    return load_config(text, registry, source="preset kubernetes", environ=environ)


def test_preset_is_driven_by_environment_variables():
    loaded = _load({
        "OPENMETER_URL": "https://openmeter.example",
        "COLLECTOR_K8S_NAMESPACES": "team-a, team-b",
        "COLLECTOR_K8S_LABEL_SELECTOR": "billing=on",
        "COLLECTOR_K8S_INTERVAL": "5m",
        "COLLECTOR_K8S_LEASE_NAME": "metering",
    })  # fmt: skip
    receiver = loaded.get("receiver", "kubernetes").config
    assert receiver.namespaces == ["team-a", "team-b"]
    assert receiver.label_selector == "billing=on"
    assert receiver.interval == 300
    assert receiver.subject.fallback == "namespace"
    assert loaded.raw.service.coordinator == "kubernetes_lease"
    assert loaded.get("coordinator", "kubernetes_lease").config.name == "metering"


def test_preset_defaults_watch_every_namespace_without_a_selector():
    receiver = _load({"OPENMETER_URL": "https://openmeter.example"}).get("receiver", "kubernetes").config
    assert receiver.namespaces == [] and receiver.label_selector is None and receiver.interval == 60


def test_collector_validate_preset_kubernetes(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    cmd = [str(Path(sys.executable).with_name("collector")), "validate", "--preset", "kubernetes"]
    ok = subprocess.run(cmd, env={**env, "OPENMETER_URL": "https://openmeter.example"}, capture_output=True,
                        text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "receivers: kubernetes" in ok.stdout
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode != 0 and "OPENMETER_URL is not set" in missing.stderr
