"""`collector backfill` as a user runs it: a subprocess, the real Prometheus, the fake OpenMeter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_against_prometheus import API, GPU, WINDOW, by_id, expected_events, rfc3339

from support.fake_openmeter import FakeOpenMeter


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "collector"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_backfill_reemits_the_windows_with_the_live_ids(prometheus, d0, tmp_path):
    start = d0 + 3600
    with FakeOpenMeter.in_thread() as fake:
        cfg = tmp_path / "collector.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "receivers": {
                        "prometheus": {
                            "url": prometheus.url,
                            "interval": "5m",
                            "subject_label": "namespace",
                            "queries": [GPU, API],
                        }
                    },
                    "exporters": {"openmeter": {"url": fake.url, "batch": {"period": 0.05}}},
                    "storage": {"directory": str(tmp_path / "data")},
                    "service": {"pipelines": {"usage": {"receivers": ["prometheus"], "exporters": ["openmeter"]}}},
                }
            )
        )
        args = ("backfill", "prometheus", "-c", str(cfg), "--from", rfc3339(start), "--to", rfc3339(start + 3 * WINDOW))
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
        assert "backfill prometheus: 3 window(s)" in out.stdout and "12 event(s) committed" in out.stdout
        assert "backfill prometheus" in out.stderr  # the progress bar
        first = list(fake.arrivals)
        # Ids and values are those of a live run over the same windows.
        assert by_id(first) == by_id(expected_events([start, start + WINDOW, start + 2 * WINDOW]))
        # Running it again sends the very same ids: OpenMeter de-duplicates, nothing is billed twice.
        assert run_cli(*args).returncode == 0
        again = fake.arrivals[len(first) :]
        assert sorted(e["id"] for e in again) == sorted(e["id"] for e in first)


def test_backfill_usage_errors(prometheus, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "receivers": {"http": {"endpoint": "127.0.0.1:0"}},
                "exporters": {"debug": {}},
                "storage": {"directory": str(tmp_path / "data")},
                "service": {"pipelines": {"p": {"receivers": ["http"], "exporters": ["debug"]}}},
            }
        )
    )
    out = run_cli("backfill", "http", "-c", str(cfg), "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z")
    assert out.returncode == 2 and "is not a pull receiver" in out.stderr
    out = run_cli("backfill", "nope", "-c", str(cfg), "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z")
    assert out.returncode == 2 and "no receiver 'nope'" in out.stderr
    out = run_cli("backfill", "http", "-c", str(cfg), "--from", "yesterday", "--to", "2026-01-02T00:00:00Z")
    assert out.returncode == 2 and "--from: 'yesterday' is not a time" in out.stderr
