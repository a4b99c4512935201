"""Shared pytest setup for the repository-level tests (tests/).

The test directories are deliberately not packages (no ``__init__.py``), so put
``tests/`` itself on ``sys.path``: test modules then import the helpers as
``from support.fake_openmeter import FakeOpenMeter`` whatever pytest's import
mode or the directory it was started from.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
