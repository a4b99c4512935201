"""Fixtures of the kubernetes plugin's tests.

The test directory is not a package; put it (for ``motoserver``) and the
repository's ``tests/`` (for ``support``, the fake OpenMeter and the collector
subprocess helpers) on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parents[2] / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
