"""Fixtures of the otlp receiver's tests.

The test directory is not a package: put it on ``sys.path`` so that the test
modules import their helpers as ``otlp_support``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import otlp_support  # noqa: E402


@pytest.fixture
def registry() -> Any:
    return otlp_support.registry()
