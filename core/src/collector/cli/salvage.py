"""``collector queue salvage FILE --to EXPORTER``: recover the readable items of a damaged queue file.

At start-up a damaged queue database is moved aside as ``queue.db.corrupt-<stamp>``
and salvaged into the fresh queue by itself (docs/delivery.md, "Corruption
and quarantine").  This command does the same for such a file kept from
before (or one whose automatic salvage failed): every item that can still be
read goes into EXPORTER's queue, in one transaction, to be delivered by the
next ``collector run``; the rows lost to the damage are counted.  FILE is only
read.  Like ``collector run`` it holds the storage directory's lock, so it
refuses while a collector runs on the same storage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from collector.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, err, load_or_report


def add_salvage_parser(
    queue_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    config_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``salvage`` under the ``collector queue`` subcommands."""
    a = queue_sub.add_parser(
        "salvage", parents=[common], help="put the readable items of a damaged queue file (*.corrupt-*) into a queue"
    )
    config_args(a)
    a.add_argument("file", type=Path, help="the damaged queue database, e.g. .../queue/queue.db.corrupt-<stamp>")
    a.add_argument("--to", required=True, metavar="EXPORTER", help="the exporter whose queue receives the items")
    a.add_argument(
        "--again",
        action="store_true",
        help="salvage a file that was salvaged before (its events would be sent twice; ids let OpenMeter drop them)",
    )


def run_salvage(args: argparse.Namespace) -> int:
    from collector.runtime.layout import StorageLayout
    from collector.runtime.queue.sqlite import DurableQueue, salvage_note
    from collector.runtime.storage_lock import StorageLock, StorageLockedError

    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    _, loaded = found
    source: Path = args.file
    exporters = [cid for (kind, cid) in loaded.components if kind == "exporter"]
    if args.to not in exporters:
        err(f"no exporter {args.to!r} in the configuration (have: {', '.join(exporters)})")
        return EXIT_CONFIG
    if not source.is_file():
        err(f"{source}: no such file")
        return EXIT_CONFIG
    note = salvage_note(source)
    if note.exists() and not args.again:
        err(f"{source} was salvaged already ({note.read_text(encoding='utf-8').strip()}); --again to do it twice")
        return EXIT_CONFIG
    layout = StorageLayout(loaded.raw.storage.directory)
    layout.root.mkdir(parents=True, exist_ok=True)
    settings = loaded.get("exporter", args.to).config
    queue_cfg = getattr(settings, "queue", None)
    try:
        with StorageLock(layout.root):
            queue = DurableQueue(
                layout.exporter_queue(args.to),
                durability=getattr(queue_cfg, "durability", "full"),
                max_bytes=1 << 62,  # a salvage is never refused for size: the items were accepted once
            )
            queue.open()
            try:
                events, items, unreadable = queue.salvage(source)
            finally:
                queue.close()
    except StorageLockedError as exc:
        err(str(exc))
        return EXIT_FAILURE
    except Exception as exc:
        err(f"salvaging {source} failed: {exc}")
        return EXIT_FAILURE
    print(
        f"salvaged {events} event(s) in {items} item(s) from {source} into exporter {args.to}'s queue; "
        f"{unreadable} item(s) could not be read. {source} is kept.",
        file=sys.stdout,
    )
    return EXIT_OK


__all__ = ["add_salvage_parser", "run_salvage"]
