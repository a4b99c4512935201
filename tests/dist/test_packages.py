"""The distributions are publishable, and a pip user gets a working collector (issue 15 items 5-6).

Built once per session by tests/dist/conftest.py: wheels and sdists of the core and every plugin,
then the wheels alone installed (not editable) into a fresh venv.  The smoke test runs from a
temporary directory, so nothing of the repository is on the path or under the current directory.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

from support.collector_proc import free_port
from support.dist import DISTRIBUTIONS, REPO
from support.smoke import post_events

ROOT_LICENSE = (REPO / "LICENSE").read_bytes()
PLUGINS = ("kubernetes", "otlp", "prometheus", "runai", "s3")
URL_NAMES = {"Homepage", "Documentation", "Changelog", "Issues"}


def _members(dist: Path) -> dict[str, bytes]:
    """Every file in a wheel or sdist, by path inside the archive (the sdist's top folder stripped)."""
    if dist.suffix == ".whl":
        with zipfile.ZipFile(dist) as z:
            return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    with tarfile.open(dist) as t:
        out = {}
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            if f is not None:
                out[m.name.split("/", 1)[1]] = f.read()
        return out


def _metadata(dist: Path) -> email.message.Message:
    files = _members(dist)
    name = next(n for n in files if n.endswith(".dist-info/METADATA") or n == "PKG-INFO")
    return email.parser.Parser().parsestr(files[name].decode())


def test_every_distribution_has_a_license_copy_identical_to_the_root_one() -> None:
    assert b"Apache License" in ROOT_LICENSE and b"Version 2.0" in ROOT_LICENSE
    for dist in DISTRIBUTIONS:
        assert (dist / "LICENSE").read_bytes() == ROOT_LICENSE, f"{dist / 'LICENSE'} differs from the root LICENSE"


def test_every_distribution_is_built(distributions: list[Path]) -> None:
    assert len([d for d in distributions if d.suffix == ".whl"]) == len(DISTRIBUTIONS) == 1 + len(PLUGINS)
    assert len([d for d in distributions if d.name.endswith(".tar.gz")]) == len(DISTRIBUTIONS)


def test_twine_check_passes_on_every_distribution(distributions: list[Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == len(distributions)


def test_every_wheel_and_sdist_ships_the_license_and_py_typed(distributions: list[Path]) -> None:
    for dist in distributions:
        files = _members(dist)
        licenses = [n for n in files if n.rsplit("/", 1)[-1] == "LICENSE"]
        assert licenses, f"{dist.name} has no LICENSE"
        assert all(files[n] == ROOT_LICENSE for n in licenses), f"{dist.name}: LICENSE differs from the root one"
        assert any(n.endswith("/py.typed") for n in files), f"{dist.name} has no py.typed"


def test_core_ships_the_config_examples(wheels: list[Path]) -> None:
    core = next(w for w in wheels if w.name.startswith("collector_core-"))
    shipped = {n.rsplit("/", 1)[-1] for n in _members(core) if n.startswith("collector/examples/")}
    in_repo = {p.name for p in (REPO / "core" / "src" / "collector" / "examples").glob("*.yaml")}
    assert shipped == in_repo and len(shipped) >= 10


def test_metadata_is_complete_and_the_long_description_has_absolute_links(distributions: list[Path]) -> None:
    for dist in distributions:
        meta = _metadata(dist)
        where = dist.name
        assert meta["License-Expression"] == "Apache-2.0", where
        assert "LICENSE" in (meta.get_all("License-File") or []), where
        assert "Typing :: Typed" in (meta.get_all("Classifier") or []), where
        assert not any(c.startswith("License ::") for c in meta.get_all("Classifier") or []), where  # PEP 639
        urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
        assert set(urls) >= URL_NAMES and all(
            u.startswith("https://github.com/collector-dev/collector") for u in urls.values()
        )
        assert meta["Keywords"] and meta["Requires-Python"] == ">=3.11", where
        body = meta.get_payload()
        assert isinstance(body, str) and len(body) > 300, f"{where}: the long description is a stub"
        links = re.findall(r"\]\(([^)\s]+)\)", body)
        relative = [link for link in links if not link.startswith(("https://", "http://", "#", "mailto:"))]
        assert not relative, f"{where}: PyPI cannot follow these links: {relative}"


def test_plugins_declare_what_they_import(wheels: list[Path]) -> None:
    """Each third-party module a plugin imports is a declared dependency (the issue: orjson, pydantic...)."""
    declared_for = {"orjson": "orjson", "aiohttp": "aiohttp", "pydantic": "pydantic", "kubernetes": "kubernetes"}
    declared_for |= {"boto3": "boto3", "botocore": "botocore", "grpc": "grpcio", "urllib3": "urllib3"}
    for plugin in PLUGINS:
        wheel = next(w for w in wheels if w.name.startswith(f"collector_plugin_{plugin}-"))
        requires = {
            re.split(r"[<>=!;\[ ]", r, maxsplit=1)[0].lower() for r in _metadata(wheel).get_all("Requires-Dist") or []
        }
        source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "plugins" / plugin / "src").rglob("*.py"))
        imported = set(re.findall(r"^\s*(?:import|from) (\w+)", source, re.M))
        missing = [dist for module, dist in declared_for.items() if module in imported and dist not in requires]
        assert not missing, f"collector-plugin-{plugin} imports but does not declare {missing}"


# -- smoke test in the fresh venv --------------------------------------------------------


def _cli(bin_dir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_", "PYTHON"))}
    return subprocess.run(
        [str(bin_dir / "collector"), *args],
        cwd=cwd,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_collector_works_for_a_pip_user(installed_bin: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "user"
    cwd.mkdir()

    version = _cli(installed_bin, cwd, "--version")
    assert version.returncode == 0 and version.stdout == _cli(installed_bin, cwd, "version").stdout
    assert version.stdout.startswith("collector-core 0.2.0\n"), version.stdout

    plugins = _cli(installed_bin, cwd, "plugins", "--json", "--strict-plugins")
    assert plugins.returncode == 0, plugins.stderr
    listed = {p["name"]: p["status"] for p in json.loads(plugins.stdout)}
    assert {name: listed.get(name) for name in PLUGINS} == dict.fromkeys(PLUGINS, "loaded"), listed

    listing = _cli(installed_bin, cwd, "examples")
    assert listing.returncode == 0 and "http-to-openmeter" in listing.stdout and "https://github.com" in listing.stdout
    written = _cli(installed_bin, cwd, "examples", "http-to-openmeter", "-o", "mine.yaml")
    assert written.returncode == 0 and (cwd / "mine.yaml").read_text().startswith("# The usual production")

    refused = _cli(installed_bin, cwd, "validate", "-c", "mine.yaml")
    assert refused.returncode == 2 and "set OPENMETER_TOKEN" in refused.stderr + refused.stdout
    ok = _cli(installed_bin, cwd, "validate", "-c", "mine.yaml", env={"OPENMETER_TOKEN": "om_smoke"})
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok.stderr
    assert not (cwd / "data").exists(), "validate must not create the storage directory"


def test_installed_collector_runs_the_embedded_default_and_stops_on_sigterm(
    installed_bin: Path, tmp_path: Path
) -> None:
    cwd = tmp_path / "run"
    cwd.mkdir()
    http, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_", "PYTHON"))}
    env |= {"COLLECTOR_HTTP_ENDPOINT": http, "COLLECTOR_ADMIN_ENDPOINT": admin, "COLLECTOR_LOG_FORMAT": "json"}
    out_path = cwd / "stdout.log"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [str(installed_bin / "collector"), "run"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"collector exited early:\n{out_path.read_text()}"
            assert time.monotonic() < deadline, f"no /ping within 30 s:\n{out_path.read_text()}"
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
            build = [ln for ln in r.read().decode().splitlines() if ln.startswith("collector_build_info{")]
        assert len(build) == 1 and 'version="0.2.0"' in build[0] and build[0].endswith(" 1.0"), build
        assert all(f"collector-plugin-{p}=0.2.0" in build[0] for p in PLUGINS), build
        event = {"specversion": "1.0", "id": "smoke-1", "source": "pip", "type": "api-call", "subject": "c-1"}
        assert post_events(f"http://{http}/api/v1/events", event) == 204
        deadline = time.monotonic() + 20
        while '"smoke-1"' not in out_path.read_text():  # the debug exporter prints the delivered event
            assert time.monotonic() < deadline, f"event not delivered to stdout:\n{out_path.read_text()}"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert (cwd / "data").is_dir(), "the embedded default keeps its queue in ./data"
