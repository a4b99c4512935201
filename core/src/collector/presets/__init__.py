"""Named, ready configurations shipped with the core (``collector run --preset NAME``).

Presets are YAML driven by environment variables.  ``default`` is what
``collector run`` starts with no arguments: an HTTP receiver on 127.0.0.1:8080
feeding the durable queue, delivered to OpenMeter when ``OPENMETER_URL`` is
set and to the debug exporter (stdout) otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from typing import Any


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


def load(name: str, environ: dict[str, str] | None = None, plugin_presets: Mapping[str, Any] | None = None) -> str:
    """The YAML text of preset ``name`` (built-in first, then ``plugin_presets``: PresetSpec by name);
    KeyError listing the presets when unknown."""
    fname = preset_file(name, environ)
    path = resources.files(__name__).joinpath(fname)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    extra = plugin_presets or {}
    if name in extra:
        return str(extra[name].text)
    available = sorted({*names(), *extra})
    raise KeyError(f"unknown preset {name!r}; available presets: {', '.join(available)}")
