#!/usr/bin/env python3
"""Generate a collector plugin distribution from the template beside this script.

    python contrib/plugin-template/generate.py NAME DEST [--kind KIND]

creates DEST (which must not exist, or be empty) holding ``collector-plugin-NAME``
with one component of type NAME, KIND being one of

* ``processor`` (the default): multiplies a numeric member of ``data``;
* ``receiver``: a push receiver that takes JSON-lines files from a spool
  directory, deleting each file only once its events are committed;
* ``pull``: a pull receiver (``collector.api.PullReceiver``) that reports usage
  per time window with deterministic ids, so ``collector backfill`` works;
* ``exporter``: appends delivered events to a JSON-lines file.

Every kind gets ``pyproject.toml`` (the ``collector`` entry point, classifiers,
``collector-core>=0.2,<0.3``), ``src/collector_plugin_NAME/`` (the config model
and the hook in ``__init__``, the implementation in a module imported only when
a configuration uses it, ``py.typed``), tests that use the collector's testing
kit, a README, a LICENSE (Apache-2.0) and a ``.gitignore``.  The generated code
imports only ``collector.api`` (and its tests ``collector.testing``).

The files under ``template/common/`` (every kind) and ``template/KIND/`` use
``string.Template`` placeholders, in file contents and in paths: ``${name}``
(the plugin and component type name, ``acme-units``), ``${package}``
(``acme_units``), ``${class_name}`` (``AcmeUnits``) and ``${component}`` (the
component kind: ``receiver``, ``processor`` or ``exporter``).  Write ``$$`` for a
literal ``$``.  Only the standard library is used, so the script runs before
anything is installed.
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
SKIP = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
# --kind -> the component kind it generates (a pull receiver is a receiver).
KINDS = {"processor": "processor", "receiver": "receiver", "pull": "receiver", "exporter": "exporter"}
DEFAULT_KIND = "processor"


def placeholders(name: str, kind: str = DEFAULT_KIND) -> dict[str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
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
        "component": KINDS[kind],
    }


def render(name: str, kind: str = DEFAULT_KIND) -> dict[Path, str]:
    """Relative path -> text of every file the template produces for ``name`` and ``kind``."""
    values = placeholders(name, kind)
    files: dict[Path, str] = {}
    for root in (TEMPLATE_DIR / "common", TEMPLATE_DIR / kind):
        for source in sorted(root.rglob("*")):
            rel = source.relative_to(root)
            if source.is_dir() or SKIP.intersection(rel.parts) or source.suffix == ".pyc":
                continue
            try:
                target = Template(rel.as_posix()).substitute(values)
                text = Template(source.read_text(encoding="utf-8")).substitute(values)
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"template file {root.name}/{rel}: bad placeholder {exc} (write $$ for a literal $)"
                ) from None
            files[Path(target)] = text  # a kind's file replaces a common one of the same path
    return dict(sorted(files.items()))


def generate(name: str, dest: Path, kind: str = DEFAULT_KIND) -> list[Path]:
    """Write the distribution for ``name`` and ``kind`` into ``dest``; returns the files written."""
    files = render(name, kind)
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
    parser.add_argument("name", help="plugin and component type name, e.g. acme or acme-units")
    parser.add_argument("dest", type=Path, help="directory to create, e.g. ../collector-plugin-acme")
    parser.add_argument(
        "--kind",
        choices=list(KINDS),
        default=DEFAULT_KIND,
        help="what the plugin provides: a push receiver, a pull receiver (windows, watermarks, backfill), "
        f"a processor or an exporter (default: {DEFAULT_KIND})",
    )
    args = parser.parse_args(argv)
    try:
        written = generate(args.name, args.dest, args.kind)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    values = placeholders(args.name, args.kind)
    package, component = values["package"], values["component"]
    print(f"created collector-plugin-{args.name} ({args.kind}) in {args.dest} ({len(written)} files)")
    print("next steps:")
    print(f"  cd {args.dest}")
    print("  pip install -e '.[test]'     # into the environment that has collector-core")
    print(f"  collector plugins            # lists {args.name} with {component}/{args.name}")
    print("  pytest")
    print(f"then edit src/collector_plugin_{package}/ to make the {component} yours (docs/plugin-authors.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
