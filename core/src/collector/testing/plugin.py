"""pytest plugin of the testing kit (entry point ``pytest11``: ``collector``).

Fixtures:

* ``storage_dir``: a fresh storage directory;
* ``fake_clock``: a :class:`collector.clock.FakeClock`;
* ``collector_registry``: built-ins plus the ``memory`` exporter and
  ``scripted`` receiver;
* ``run_pipeline``: ``async with run_pipeline(yaml) as p:`` starts a service
  from a YAML snippet on ``storage_dir``; ``p.receiver()``/``p.exporter()``
  give the scripted receiver and memory exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.clock import FakeClock


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def collector_registry() -> Any:
    from collector.testing.harness import testing_registry

    return testing_registry()


@pytest.fixture
def run_pipeline(storage_dir: Path) -> Callable[..., Any]:
    from collector.testing.harness import run_pipeline as _run

    def runner(yaml_text: str, **kwargs: Any) -> Any:
        return _run(yaml_text, kwargs.pop("storage_dir", storage_dir), **kwargs)

    return runner
