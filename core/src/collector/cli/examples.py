"""``collector examples``: the configuration examples shipped inside collector-core.

A pip user has no repository checkout, so the examples live in the package
(``collector/examples/*.yaml``) and this command lists them or writes one out
(docs/configuration.md#examples).  Each file opens with a comment whose first
line says what it is for; that line is the description in the listing.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from collector.cli.common import EXIT_CONFIG, EXIT_OK, err

#: where a pip user finds the documentation (the repository's docs index)
DOCS_URL = "https://github.com/collector-dev/collector/blob/main/docs/README.md"


def example_files() -> dict[str, Traversable]:
    """The shipped examples by name (the file name without ``.yaml``), sorted."""
    folder = resources.files("collector").joinpath("examples")
    found = {p.name.removesuffix(".yaml"): p for p in folder.iterdir() if p.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def description(text: str) -> str:
    """The first sentence of the file's leading comment: what the example is for."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if not body.strip() or body.startswith("   "):  # a blank comment line or an indented command ends it
            if words:
                break
            continue
        words.append(body.strip())
    joined = " ".join(words)
    end = joined.find(". ")
    return joined[: end + 1] if end >= 0 else joined


def add_examples_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "examples",
        help="list the configuration examples shipped with the collector, or write one out",
        epilog=f"Then: collector validate -c FILE; collector run -c FILE. Docs: {DOCS_URL}",
    )
    p.add_argument("name", nargs="?", help="the example to write out (without NAME: list them)")
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")


def cmd_examples(args: argparse.Namespace) -> int:
    files = example_files()
    if args.name is None:
        width = max(len(n) for n in files)
        for name, path in files.items():
            print(f"{name.ljust(width)}  {description(path.read_text(encoding='utf-8'))}")
        print(f"\nWrite one out with: collector examples NAME -o NAME.yaml   (docs: {DOCS_URL})")
        return EXIT_OK
    name = args.name.removesuffix(".yaml")
    if name not in files:
        err(f"error: no example named {args.name!r}; `collector examples` lists them: {', '.join(files)}")
        return EXIT_CONFIG
    text = files[name].read_text(encoding="utf-8")
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    if args.output.exists() and not args.force:
        err(f"error: {args.output} exists; use --force to overwrite it")
        return EXIT_CONFIG
    args.output.write_text(text, encoding="utf-8")
    err(f"wrote {args.output}: check it with `collector validate -c {args.output}`")
    return EXIT_OK
