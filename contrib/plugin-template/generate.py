#!/usr/bin/env python3
"""Generate a collector plugin distribution from the template beside this script.

    python contrib/plugin-template/generate.py NAME DEST

creates DEST (which must not exist, or be empty) holding ``collector-plugin-NAME``:
``pyproject.toml`` with the ``collector`` entry point, ``src/collector_plugin_NAME/``
with a processor of type NAME (its config model, a hook that declares it, and the
implementation in a module imported only when a configuration uses it), tests
that use the collector's testing kit, and a README.

The template files under ``template/`` use ``string.Template`` placeholders, in
file contents and in paths: ``${name}`` (the plugin and component type name,
``acme-units``), ``${package}`` (``acme_units``), ``${class_name}``
(``AcmeUnits``).  Write ``$$`` for a literal ``$``.  Only the standard library is
used, so the script runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from string import Template

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
# Component type names allow letters, digits, "_" and "-"; configuration ids
# need a lower-case first letter; we keep the whole name lower-case so that the
# distribution, the package and the type all read the same.
NAME = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")
SKIP = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def placeholders(name: str) -> dict[str, str]:
    if not NAME.match(name):
        raise ValueError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, words joined by '-' or '_', "
            "starting with a letter (e.g. acme or acme-units)"
        )
    words = re.split(r"[-_]", name)
    return {
        "name": name,
        "package": name.replace("-", "_"),
        "class_name": "".join(w.capitalize() for w in words),
    }


def render(name: str) -> dict[Path, str]:
    """Relative path -> text of every file the template produces for ``name``."""
    values = placeholders(name)
    files: dict[Path, str] = {}
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        rel = source.relative_to(TEMPLATE_DIR)
        if source.is_dir() or SKIP.intersection(rel.parts) or source.suffix == ".pyc":
            continue
        try:
            target = Template(rel.as_posix()).substitute(values)
            text = Template(source.read_text(encoding="utf-8")).substitute(values)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"template file {rel}: bad placeholder {exc} (write $$ for a literal $)") from None
        files[Path(target)] = text
    return files


def generate(name: str, dest: Path) -> list[Path]:
    """Write the distribution for ``name`` into ``dest``; returns the files written."""
    files = render(name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not an empty directory")
    written = []
    for rel, text in files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a collector-plugin-NAME distribution from the template.")
    parser.add_argument("name", help="plugin and processor type name, e.g. acme or acme-units")
    parser.add_argument("dest", type=Path, help="directory to create, e.g. ../collector-plugin-acme")
    args = parser.parse_args(argv)
    try:
        written = generate(args.name, args.dest)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    package = placeholders(args.name)["package"]
    print(f"created collector-plugin-{args.name} in {args.dest} ({len(written)} files)")
    print("next steps:")
    print(f"  cd {args.dest}")
    print("  pip install -e '.[test]'     # into the environment that has collector-core")
    print(f"  collector plugins            # lists {args.name}")
    print("  pytest")
    print(f"then edit src/collector_plugin_{package}/ to make the processor yours.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
