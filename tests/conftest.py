"""Shared pytest setup for the repository-level tests (tests/).

The test directories are deliberately not packages (no ``__init__.py``), so put
``tests/`` itself on ``sys.path``: test modules then import the helpers as
``from support.fake_openmeter import FakeOpenMeter`` whatever pytest's import
mode or the directory it was started from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


# -- the project's distributions, built once per session (tests/dist, tests/deploy) --------------------


@pytest.fixture(scope="session")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Wheels and sdists of the core and every plugin (tests/support/dist.py)."""
    from support.dist import build_distributions

    return build_distributions(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def wheels(distributions: list[Path]) -> list[Path]:
    return [p for p in distributions if p.suffix == ".whl"]


@pytest.fixture(scope="session")
def installed_bin(tmp_path_factory: pytest.TempPathFactory, wheels: list[Path]) -> Path:
    """bin/ of a fresh virtual environment holding the wheels alone (not editable, no repository on sys.path)."""
    from support.dist import make_venv

    return make_venv(tmp_path_factory.mktemp("venv") / "venv", wheels)
