"""Building the project's distributions and installing them as a user would (tests/dist).

One wheelhouse and one fresh virtual environment per test session: building
and installing take a minute, so the packaging test, the container-steps test
and anything else that needs "the collector installed from its wheels, not
editable" share them (``tests/dist/conftest.py`` makes them fixtures).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: every distribution in the repository: the core first, then each plugin
DISTRIBUTIONS: list[Path] = [REPO / "core", *sorted(p.parent for p in (REPO / "plugins").glob("*/pyproject.toml"))]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc  # type: ignore[no-any-return]


def build_distributions(dest: Path, *, sdist: bool = True) -> list[Path]:
    """Wheels (and sdists) of every distribution into ``dest``, built by ``python -m build`` without
    network access to a build backend: ``--no-isolation`` uses this interpreter's setuptools."""
    dest.mkdir(parents=True, exist_ok=True)
    for dist in DISTRIBUTIONS:
        cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dest)]
        cmd += [] if sdist else ["--wheel"]
        _run([*cmd, str(dist)])
    return sorted(dest.iterdir())


def make_venv(path: Path, wheels: list[Path]) -> Path:
    """A fresh virtual environment at ``path`` with ``wheels`` installed (not editable); its bin/."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = path / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *map(str, wheels)])
    return path / "bin"
