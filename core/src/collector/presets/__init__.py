"""Named, ready configurations shipped with the core (``collector run --preset NAME``).

Presets are YAML driven by environment variables.  ``default`` is what
``collector run`` starts with no arguments: an HTTP receiver on 127.0.0.1:8080
feeding the durable queue, delivered to OpenMeter when ``OPENMETER_URL`` is
set and to the debug exporter (stdout) otherwise.
"""

from __future__ import annotations

import os
from importlib import resources


def names() -> list[str]:
    files = resources.files(__name__)
    out = {p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")}
    out = {n.removesuffix("-debug").removesuffix("-openmeter") if n.startswith("default") else n for n in out}
    return sorted(out)


def preset_file(name: str, environ: dict[str, str] | None = None) -> str:
    """The file name of a preset; ``default`` picks its OpenMeter or debug flavour."""
    env = os.environ if environ is None else environ
    if name == "default":
        return "default-openmeter.yaml" if env.get("OPENMETER_URL") else "default-debug.yaml"
    return f"{name}.yaml"


def load(name: str, environ: dict[str, str] | None = None) -> str:
    """The YAML text of preset ``name``; KeyError listing the presets when unknown."""
    fname = preset_file(name, environ)
    path = resources.files(__name__).joinpath(fname)
    if not path.is_file():
        raise KeyError(f"unknown preset {name!r}; available presets: {', '.join(names())}")
    return path.read_text(encoding="utf-8")
