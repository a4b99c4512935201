"""The ``runai`` preset: a ready configuration set by RUNAI_* and OPENMETER_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import collector_plugin_runai

from collector import presets
from collector.config import load_config
from collector.testing import testing_registry

ENV = {
    "RUNAI_URL": "https://myorg.run.ai",
    "RUNAI_APP_ID": "collector",
    "RUNAI_APP_SECRET": "preset-secret",
    "OPENMETER_URL": "https://openmeter.example",
}


def test_preset_is_driven_by_environment_variables():
    registry = testing_registry([("runai-under-test", collector_plugin_runai)])
    text = presets.load("runai", plugin_presets=registry.presets())
    loaded = load_config(
        text,
        registry,
        source="preset runai",
        environ={**ENV, "COLLECTOR_RUNAI_INTERVAL": "15m", "COLLECTOR_RUNAI_SUBJECT": "department"},
    )
    receiver = loaded.get("receiver", "runai").config
    assert receiver.url == "https://myorg.run.ai" and receiver.interval == 900 and receiver.subject == "department"
    assert "preset-secret" in loaded.secrets()  # masked in logs


def test_collector_validate_preset_runai_names_what_is_missing(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_", "RUNAI_"))}
    cmd = [str(Path(sys.executable).with_name("collector")), "validate", "--preset", "runai"]
    ok = subprocess.run(cmd, env={**env, **ENV}, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "receivers: runai" in ok.stdout and "preset-secret" not in ok.stdout + ok.stderr
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert missing.returncode != 0 and "RUNAI_URL is not set" in missing.stderr
