"""The plugin template produces, for every kind, a plugin that installs, is found, validates and passes its own tests.

The generated distributions are installed with pip (one call for all kinds)
into a target directory that only the subprocesses of this test see
(``PYTHONPATH``), never into the environment running the test suite, so
nothing is left behind even if the test is killed half way, and other tests
never see the plugins.  The pull kind is also run the way a user recovers
history: ``collector backfill`` in a subprocess.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from collector.api import stable_id

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "contrib" / "plugin-template" / "generate.py"


@dataclass(frozen=True)
class Kind:
    kind: str  # --kind
    name: str  # plugin and component type name
    component: str  # receiver, processor or exporter
    module: str  # the implementation module, imported lazily

    @property
    def package(self) -> str:
        return self.name.replace("-", "_")


# Hyphenated names on purpose: they exercise name -> package/class conversion.
KINDS = [
    Kind("processor", "tplcheck-units", "processor", "processor"),
    Kind("receiver", "tplcheck-spool", "receiver", "receiver"),
    Kind("pull", "tplcheck-usage", "receiver", "receiver"),
    Kind("exporter", "tplcheck-sink", "exporter", "exporter"),
]
PULL = next(k for k in KINDS if k.kind == "pull")


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


def _collector_imports(source: str) -> set[str]:
    """The ``collector`` modules a Python source imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "collector" or n.startswith("collector.")}


@dataclass(frozen=True)
class Installed:
    root: Path  # one generated distribution per kind: root / kind
    site: Path  # where pip installed all of them
    generated: dict[str, list[str]]  # kind -> the files generate.py wrote (pip adds build output later)

    def dest(self, kind: Kind) -> Path:
        return self.root / kind.kind

    def env(self) -> dict[str, str]:
        return _env(PYTHONPATH=str(self.site))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("plugins")
    for kind in KINDS:
        generated = _run([sys.executable, str(GENERATE), kind.name, str(root / kind.kind), "--kind", kind.kind])
        assert generated.returncode == 0, generated.stderr
        assert f"({kind.kind})" in generated.stdout
    files = {
        k.kind: sorted(p.relative_to(root / k.kind).as_posix() for p in (root / k.kind).rglob("*") if p.is_file())
        for k in KINDS
    }
    site = root / "site"
    isolation = ["--no-build-isolation"] if _can_build_without_isolation() else []
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    done = _run([*pip, *isolation, "--target", str(site), *(str(root / k.kind) for k in KINDS)])
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return Installed(root, site, files)


def test_generate_refuses_bad_names_kinds_and_non_empty_destinations(tmp_path: Path):
    bad = _run([sys.executable, str(GENERATE), "Bad_Name", str(tmp_path / "x")])
    assert bad.returncode == 2 and "invalid plugin name" in bad.stderr
    unknown = _run([sys.executable, str(GENERATE), "ok", str(tmp_path / "y"), "--kind", "sidecar"])
    assert unknown.returncode == 2 and "invalid choice: 'sidecar'" in unknown.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    refused = _run([sys.executable, str(GENERATE), "ok", str(taken)])
    assert refused.returncode == 2 and "not an empty directory" in refused.stderr
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_generated_files_import_only_the_public_api(installed: Installed, kind: Kind):
    dest = installed.dest(kind)
    pkg = f"src/collector_plugin_{kind.package}"
    files = installed.generated[kind.kind]
    assert files == sorted(
        [
            ".gitignore",
            "LICENSE",
            "README.md",
            "pyproject.toml",
            f"{pkg}/__init__.py",
            f"{pkg}/py.typed",
            f"{pkg}/{kind.module}.py",
            f"tests/test_{kind.name}.py",
        ]
    )
    texts = {f: (dest / f).read_text() for f in files}
    assert not any("${" in t for t in texts.values()), "a placeholder was left unreplaced"
    assert "Apache License" in texts["LICENSE"] and "Version 2.0, January 2004" in texts["LICENSE"]
    assert "__pycache__/" in texts[".gitignore"]
    pyproject = texts["pyproject.toml"]
    assert f'name = "collector-plugin-{kind.name}"' in pyproject
    assert '"collector-core>=0.2,<0.3"' in pyproject and '"collector-core[testing]>=0.2,<0.3"' in pyproject
    assert "License :: OSI Approved :: Apache Software License" in pyproject and "Typing :: Typed" in pyproject
    assert f'[project.entry-points.collector]\n{kind.name} = "collector_plugin_{kind.package}"' in pyproject
    # Plugins build on collector.api only (tests may use collector.testing too).
    for f, text in texts.items():
        if f.endswith(".py"):
            imported = _collector_imports(text)
            allowed = {"collector.api", "collector.testing"} if f.startswith("tests/") else {"collector.api"}
            assert imported <= allowed, f"{f} imports {sorted(imported - allowed)}"
    # The wheel carries the type marker (it is package data, not a module).
    assert (installed.site / f"collector_plugin_{kind.package}" / "py.typed").is_file()


def test_collector_plugins_lists_every_kind(installed: Installed):
    listed = _run([*_collector(), "plugins", "--json"], env=installed.env())
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)}
    for kind in KINDS:
        assert kind.name in plugins, f"collector plugins does not list {kind.name}: {sorted(plugins)}"
        mine = plugins[kind.name]
        assert mine["status"] == "loaded", mine["error"]
        assert mine["distribution"] == f"collector-plugin-{kind.name}" and mine["version"] == "0.1.0"
        assert mine["components"] == [f"{kind.component}/{kind.name}"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_generated_plugin_validates_and_passes_its_own_tests(installed: Installed, kind: Kind, tmp_path: Path):
    dest = installed.dest(kind)
    # The configuration the generated README shows is valid with the plugin installed.
    config = re.search(r"```yaml\n(.*?)```", (dest / "README.md").read_text(), re.S)
    assert config, "the generated README has no configuration example"
    assert kind.name in yaml.safe_load(config.group(1))[f"{kind.component}s"]
    (tmp_path / "readme.yaml").write_text(config.group(1))
    validated = _run(
        [*_collector(), "validate", "--strict-plugins", "-c", str(tmp_path / "readme.yaml")], env=installed.env()
    )
    assert validated.returncode == 0, validated.stderr

    # Its own tests, run the way its author runs them, against the installed copy.
    tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=dest, env=installed.env())
    assert tests.returncode == 0, f"the generated plugin's tests failed:\n{tests.stdout}\n{tests.stderr}"
    assert re.search(r"\b5 passed\b", tests.stdout), tests.stdout


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_pull_template_emits_usage_per_window_under_backfill(installed: Installed, tmp_path: Path):
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    out = tmp_path / "events.jsonl"
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "receivers": {PULL.name: {"interval": "1h", "subjects": ["customer-1"]}},
                "exporters": {"debug": {"path": str(out), "batch": {"period": 0.05}}},
                "storage": {"directory": str(tmp_path / "data")},
                "service": {"pipelines": {"usage": {"receivers": [PULL.name], "exporters": ["debug"]}}},
            }
        )
    )
    args = ["backfill", PULL.name, "-c", str(cfg), "--from", _rfc3339(start), "--to", _rfc3339(start + 3 * 3600)]
    first = _run([*_collector(), *args, "--no-progress"], env=installed.env())
    assert first.returncode == 0, first.stderr
    assert f"backfill {PULL.name}: 3 window(s)" in first.stdout and "3 event(s) committed" in first.stdout
    events = [json.loads(line) for line in out.read_text().splitlines()]
    # One event per window, at the window's start, with the usage of that window.
    assert [(e["time"], e["subject"], e["data"]) for e in events] == [
        (f"2026-01-01T0{h}:00:00.000Z", "customer-1", {"seconds": 3600.0}) for h in range(3)
    ]
    ids = [e["id"] for e in events]
    assert ids == [stable_id(f"collector-plugin-{PULL.name}", "customer-1", e["time"]) for e in events]
    assert len(set(ids)) == 3

    # Again: the very same ids, so OpenMeter de-duplicates and nothing is billed twice.
    again = _run([*_collector(), *args, "--no-progress"], env=installed.env())
    assert again.returncode == 0, again.stderr
    repeated = [json.loads(line)["id"] for line in out.read_text().splitlines()][len(events) :]
    assert repeated == ids


@pytest.mark.parametrize(("name", "package", "class_name"), [("acme", "acme", "Acme"), ("a-b_c", "a_b_c", "ABC")])
@pytest.mark.parametrize(("kind", "component"), [("processor", "processor"), ("pull", "receiver")])
def test_placeholders(name: str, package: str, class_name: str, kind: str, component: str):
    sys.path.insert(0, str(GENERATE.parent))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(GENERATE.parent))
    expected = {"name": name, "package": package, "class_name": class_name, "component": component}
    assert generate.placeholders(name, kind) == expected
    with pytest.raises(ValueError, match="unknown kind 'sidecar'"):
        generate.placeholders(name, "sidecar")
