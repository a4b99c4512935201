"""Shared fixtures of the core's own tests."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

CORE_SRC = Path(__file__).resolve().parents[1] / "src"


class DistFactory:
    """Writes installable-looking distributions (module + .dist-info) into a
    directory on ``sys.path``, so importlib.metadata finds their entry points
    exactly as it finds pip-installed plugins."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def __call__(
        self, dist: str, module: str, code: str, *, version: str = "1.0.0", ep_name: str | None = None
    ) -> Path:
        (self.root / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[collector]\n{ep_name or module} = {module}\n", encoding="utf-8")
        self.modules.append(module)
        importlib.invalidate_caches()
        return info


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DistFactory:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    factory = DistFactory(root)
    yield factory
    for m in factory.modules:
        sys.modules.pop(m, None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("COLLECTOR_") or key.startswith("OPENMETER_"):
            monkeypatch.delenv(key)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real console script in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    full_env.update(env or {})
    exe = Path(sys.executable).parent / "collector"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, input=input
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
