"""Fixtures of the prometheus receiver's tests: a real Prometheus with known history.

The test directory is not a package; put it (for ``promserver``) and the
repository's ``tests/`` (for ``support``, the fake OpenMeter and the collector
subprocess helpers) on ``sys.path``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parents[2] / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from promserver import PROMETHEUS, PROMTOOL, PrometheusServer, create_blocks, history_start  # noqa: E402


def _require_prometheus() -> None:
    missing = [p for p in (PROMETHEUS, PROMTOOL) if not Path(p).exists()]
    if missing:
        pytest.skip(
            f"needs the real Prometheus server ({', '.join(missing)} missing): "
            "apt-get install -y --no-install-recommends prometheus"
        )


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """(D0, blocks directory): the history, written once per session."""
    _require_prometheus()
    d0 = history_start()
    return d0, create_blocks(d0, tmp_path_factory.mktemp("history"))


def _server(history: tuple[int, Path], workdir: Path) -> PrometheusServer:
    data = workdir / "data"
    shutil.copytree(history[1], data)
    return PrometheusServer(data, workdir)


@pytest.fixture(scope="session")
def prometheus(history: tuple[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus shared by the tests that only read from it."""
    server = _server(history, tmp_path_factory.mktemp("prometheus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_prometheus(history: tuple[int, Path], tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus of this test alone (to be stopped and started), not yet started."""
    workdir = tmp_path / "own-prometheus"
    workdir.mkdir()
    server = _server(history, workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def d0(history: tuple[int, Path]) -> int:
    return history[0]
