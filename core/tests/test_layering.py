"""The layering that `make lint` enforces (pyproject.toml [tool.importlinter]) stays complete and holds.

import-linter forbids what a contract lists; these tests make sure the lists
cannot fall behind the tree (a new internal module would otherwise be
importable by plugins without anyone noticing), and run the contracts
themselves so that `make test` catches a broken layer too.
"""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import collector
import collector.api

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def _top_level_modules() -> set[str]:
    return {f"collector.{m.name}" for m in pkgutil.iter_modules(collector.__path__)}


def _api_modules() -> set[str]:
    """The collector modules collector.api re-exports from."""
    tree = ast.parse(Path(collector.api.__file__).read_text(encoding="utf-8"))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module != "__future__"}


def test_plugins_are_forbidden_every_module_but_the_api() -> None:
    contract = _contracts()["Plugins import only the public API (collector.api)"]
    forbidden = set(contract["forbidden_modules"])
    assert forbidden == _top_level_modules() - {"collector.api"}, (
        "pyproject.toml: list every collector module except collector.api in the plugins contract"
    )


def test_plugins_contract_covers_every_first_party_plugin() -> None:
    contract = _contracts()["Plugins import only the public API (collector.api)"]
    plugins = {p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file()}
    assert set(contract["source_modules"]) == {f"collector_plugin_{p}" for p in plugins}


def test_every_module_behind_the_api_is_held_to_the_api_layer() -> None:
    contract = _contracts()[
        "The public API does not import the runtime, the CLI, the built-in components or the configuration loader"
    ]
    missing = _api_modules() - set(contract["source_modules"])
    assert not missing, f"collector.api re-exports from {sorted(missing)}: add them to the public-API contract"


def test_api_names_are_all_exported() -> None:
    for name in collector.api.__all__:
        assert hasattr(collector.api, name), name


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is missing: `make install` installs requirements-dev.txt"
    result = subprocess.run(
        [exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
