"""pytest plugin of the testing kit (entry point ``pytest11``: ``collector``).

Every fixture is named ``collector_*``, and the kit's fixtures depend only on
each other, so a project's own ``storage_dir`` or ``fake_clock`` fixture
neither clashes with the kit nor changes what the kit's fixtures do
(docs/plugin-authors.md, "Testing"):

* ``collector_storage``: a fresh storage directory;
* ``collector_fake_clock``: a :class:`collector.clock.FakeClock`;
* ``collector_registry``: built-ins plus the ``memory`` exporter and
  ``scripted`` receiver;
* ``collector_run_pipeline``: ``async with collector_run_pipeline(yaml) as p:``
  starts a service from a YAML snippet on ``collector_storage``;
  ``p.receiver()``/``p.exporter()`` give the scripted receiver and memory
  exporter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.clock import FakeClock


@pytest.fixture
def collector_storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def collector_fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def collector_registry() -> Any:
    from collector.testing.harness import testing_registry

    return testing_registry()


@pytest.fixture
def collector_run_pipeline(collector_storage: Path) -> Callable[..., Any]:
    from collector.testing.harness import run_pipeline as _run

    def runner(yaml_text: str, **kwargs: Any) -> Any:
        return _run(yaml_text, kwargs.pop("storage_dir", collector_storage), **kwargs)

    return runner
