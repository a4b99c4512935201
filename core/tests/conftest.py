"""Shared fixtures of the core's own tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

CORE_SRC = Path(__file__).resolve().parents[1] / "src"


class DistFactory:
    """Writes installable-looking distributions (module + .dist-info) into a
    directory on ``sys.path``, so importlib.metadata finds their entry points
    exactly as it finds pip-installed plugins."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def __call__(
        self, dist: str, module: str, code: str, *, version: str = "1.0.0", ep_name: str | None = None
    ) -> Path:
        (self.root / f"{module}.py").write_text(textwrap.dedent(code), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[collector]\n{ep_name or module} = {module}\n", encoding="utf-8")
        self.modules.append(module)
        importlib.invalidate_caches()
        return info


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DistFactory:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    factory = DistFactory(root)
    yield factory
    for m in factory.modules:
        sys.modules.pop(m, None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("COLLECTOR_") or key.startswith("OPENMETER_"):
            monkeypatch.delenv(key)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real console script in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    full_env.update(env or {})
    exe = Path(sys.executable).parent / "collector"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "collector.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, input=input
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files in ``directory``)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("TLS test needs the `cryptography` package or the `openssl` CLI; neither is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return cert, key
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


@pytest.fixture
def self_signed() -> Callable[[Path], tuple[Path, Path]]:
    """``self_signed(directory)``: (certificate, key) files of a self-signed certificate for 127.0.0.1."""
    return _self_signed


@pytest.fixture
def serve_http(collector_run_pipeline: Callable[..., Any]) -> Callable[..., Any]:
    """``async with serve_http("header_timeout: 0.3", clock=...) as (pipeline, port)``.

    The ``http`` receiver on a free port of 127.0.0.1, with the given receiver settings, feeding the
    memory exporter (memory queue, 10 ms batches); keyword arguments go to ``collector_run_pipeline``.
    """

    @contextlib.asynccontextmanager
    async def serve(receiver: str = "", **kwargs: Any) -> AsyncIterator[tuple[Any, int]]:
        extra = ", " + receiver if receiver else ""
        yaml_text = (
            f"receivers: {{http: {{endpoint: '127.0.0.1:0'{extra}}}}}\n"
            "exporters: {memory: {batch: {period: 0.01}, queue: {kind: memory}}}\n"
        )
        async with collector_run_pipeline(yaml_text, **kwargs) as p:
            port = p.service.receivers["http"].port
            assert port
            yield p, port

    return serve
