"""The plugin template produces a plugin that installs, is found, validates and passes its own tests.

The generated distribution is installed with pip into a target directory that
only the subprocesses of this test see (``PYTHONPATH``), never into the
environment running the test suite, so nothing is left behind even if the test
is killed half way, and other tests never see the plugin.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "contrib" / "plugin-template" / "generate.py"
NAME = "tplcheck-units"  # hyphenated on purpose: exercises name -> package/class conversion
PACKAGE = "tplcheck_units"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    env.update(extra)
    return env


def _collector() -> list[str]:
    exe = Path(sys.executable).parent / "collector"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]


def _can_build_without_isolation() -> bool:
    """setuptools builds wheels by itself from 70.1 on; before that it needs `wheel`."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        major, minor = (int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kwargs)  # type: ignore[call-overload]


def test_generate_refuses_bad_names_and_non_empty_destinations(tmp_path: Path):
    bad = _run([sys.executable, str(GENERATE), "Bad_Name", str(tmp_path / "x")])
    assert bad.returncode == 2 and "invalid plugin name" in bad.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused = _run([sys.executable, str(GENERATE), "ok", str(taken)])
    assert refused.returncode == 2 and "not an empty directory" in refused.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_generated_plugin_installs_loads_validates_and_passes_its_tests(tmp_path: Path):
    dest = tmp_path / f"collector-plugin-{NAME}"
    generated = _run([sys.executable, str(GENERATE), NAME, str(dest)])
    assert generated.returncode == 0, generated.stderr
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        f"src/collector_plugin_{PACKAGE}/__init__.py",
        f"src/collector_plugin_{PACKAGE}/processor.py",
        f"tests/test_{NAME}.py",
    ]
    assert "${" not in "".join((dest / f).read_text() for f in files), "a placeholder was left unreplaced"
    pyproject = (dest / "pyproject.toml").read_text()
    assert f'name = "collector-plugin-{NAME}"' in pyproject
    assert f'[project.entry-points.collector]\n{NAME} = "collector_plugin_{PACKAGE}"' in pyproject

    site = tmp_path / "site"
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    installed = _run([*pip, *isolation, "--target", str(site), str(dest)])
    assert installed.returncode == 0, f"pip install failed:\n{installed.stdout}\n{installed.stderr}"
    env = _env(PYTHONPATH=str(site))

    listed = _run([*_collector(), "plugins", "--json"], env=env)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    assert NAME in plugins, f"collector plugins does not list {NAME}: {sorted(plugins)}"
    mine = plugins[NAME]
    assert mine["status"] == "loaded", mine["error"]
    assert mine["distribution"] == f"collector-plugin-{NAME}" and mine["version"] == "0.1.0"
    assert mine["components"] == [f"processor/{NAME}"]

    # The configuration the generated README shows is valid with the plugin installed.
    readme = (dest / "README.md").read_text()
    config = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert config, "the generated README has no configuration example"
    assert yaml.safe_load(config.group(1))["processors"][NAME]["field"] == "duration_ms"
    (tmp_path / "readme.yaml").write_text(config.group(1))
    validated = _run([*_collector(), "validate", "--strict-plugins", "-c", str(tmp_path / "readme.yaml")], env=env)
    assert validated.returncode == 0, validated.stderr

    # Its own tests, run the way its author runs them, against the installed copy.
    tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dest, env=env)
    assert tests.returncode == 0, f"the generated plugin's tests failed:\n{tests.stdout}\n{tests.stderr}"
    assert re.search(r"\b5 passed\b", tests.stdout), tests.stdout


@pytest.mark.parametrize(("name", "package", "class_name"), [("acme", "acme", "Acme"), ("a-b_c", "a_b_c", "ABC")])
def test_placeholders(name: str, package: str, class_name: str):
    sys.path.insert(0, str(GENERATE.parent))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(GENERATE.parent))
    assert generate.placeholders(name) == {"name": name, "package": package, "class_name": class_name}
