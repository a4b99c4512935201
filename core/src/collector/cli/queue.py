"""``collector queue list|drain``: the exporter queues on disk, owned or left behind.

``list`` shows every ``exporters/<name>/`` directory of the storage with what
its queue and dead-letter store hold, and which configured exporter owns it;
one that none owns (the exporter was renamed or removed) is ``orphaned``.  It
only reads (SQLite read-only), so it runs beside a live collector.

``drain OLD --to NEW`` moves an orphaned directory's queued events into the
queue of exporter NEW (and its dead letters into NEW's dead-letter store),
then removes what it emptied; the next ``collector run`` delivers them.
Like ``collector run`` it holds the storage directory's lock, so it refuses
while a collector runs on the same storage, and no collector can start
while it runs.  Each item is committed to NEW before it is removed from OLD:
interrupted, a drain leaves at most one item in both (sent twice, with the
same ids, which the destination de-duplicates), never none.
See docs/operations.md, "Renamed or removed exporters".
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, err, load_or_report

if TYPE_CHECKING:
    from collector.config import LoadedConfig
    from collector.plugins import Registry
    from collector.runtime.deadletters import DeadLetterStore
    from collector.runtime.layout import StorageLayout
    from collector.runtime.queue import BatchQueue


def add_queue_parsers(
    queue_sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
    config_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register ``list`` and ``drain`` under the ``collector queue`` subcommands."""
    ls = queue_sub.add_parser("list", parents=[common], help="every exporter queue on disk, owned or orphaned")
    config_args(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    dr = queue_sub.add_parser(
        "drain", parents=[common], help="move an orphaned exporter directory's events into a configured exporter"
    )
    config_args(dr)
    dr.add_argument("old", metavar="OLD", help="the orphaned directory (as `queue list` names it) or the old id")
    dr.add_argument("--to", required=True, metavar="NEW", help="the configured exporter that will deliver them")
    dr.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    dr.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_queue(args: argparse.Namespace) -> int:
    import asyncio  # here, not at import: `collector --help` builds this parser

    found = load_or_report(args)
    if found is None:
        return EXIT_CONFIG
    registry, loaded = found
    if args.queue_command == "list":
        return _list(args, loaded)
    return asyncio.run(_drain(args, loaded, registry))


def _used_exporters(loaded: LoadedConfig) -> list[str]:
    """Exporters a pipeline uses: the ones whose queues a collector delivers."""
    out: list[str] = []
    for pipe in loaded.raw.service.pipelines.values():
        out.extend(e for e in pipe.exporters if e not in out)
    return out


def _list(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from collector.runtime.layout import StorageLayout, dir_name
    from collector.runtime.orphans import ExporterContents, exporter_contents

    layout = StorageLayout(loaded.raw.storage.directory)
    owners = {dir_name(eid): eid for eid in _used_exporters(loaded)}
    on_disk = layout.exporter_dirs()
    rows: list[tuple[ExporterContents, str | None]] = []
    for name in sorted(set(on_disk) | set(owners)):
        path = on_disk.get(name, layout.root / "exporters" / name)
        contents = exporter_contents(name, path) if name in on_disk else ExporterContents(name, path)
        rows.append((contents, owners.get(name)))
    if args.json:
        for contents, owner in rows:
            doc = {"name": contents.name, "exporter": owner, "orphaned": owner is None, **contents.as_dict()}
            print(json.dumps(doc))
        return EXIT_OK
    table = [("DIRECTORY", "EXPORTER", "EVENTS", "ITEMS", "DEAD-LETTERS", "STATE")]
    for contents, owner in rows:
        if contents.error:
            state = f"unreadable: {contents.error}"
        elif owner is None:
            state = "orphaned" if not contents.empty else "orphaned (empty)"
        else:
            state = "ok"
        table.append(
            (
                contents.name,
                owner or "-",
                str(contents.queue_events),
                str(contents.queue_items),
                str(contents.dead_letters),
                state,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    for r in table:
        print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    orphans = [c for c, owner in rows if owner is None and not c.empty]
    if orphans:
        print(
            f"\n{len(orphans)} orphaned director{'y' if len(orphans) == 1 else 'ies'}: nothing delivers them. "
            "Stop the collector, then: collector queue drain DIRECTORY --to EXPORTER"
        )
    return EXIT_OK


async def _drain(args: argparse.Namespace, loaded: LoadedConfig, registry: Registry) -> int:
    from collector.components import ExporterConfig
    from collector.runtime.layout import StorageLayout, dir_name
    from collector.runtime.service import Service
    from collector.runtime.storage_lock import StorageLock, StorageLockedError

    layout = StorageLayout(loaded.raw.storage.directory)
    used = _used_exporters(loaded)
    if args.to not in used:
        err(f"error: no exporter {args.to!r} in a pipeline of the configuration (have: {', '.join(used) or 'none'})")
        return EXIT_CONFIG
    old = dir_name(args.old)
    owner = next((eid for eid in used if dir_name(eid) == old), None)
    if owner is not None:
        err(f"error: exporters/{old} is the directory of configured exporter {owner!r}; only orphaned ones are drained")
        return EXIT_CONFIG
    old_dir = layout.exporter_dirs().get(old)
    if old_dir is None:
        err(f"error: no directory exporters/{old} under {layout.root} (see `collector queue list`)")
        return EXIT_CONFIG
    cfg = loaded.get("exporter", args.to).config
    if not isinstance(cfg, ExporterConfig) or cfg.queue.kind != "durable":
        err(f"error: exporter {args.to!r} has no durable queue to drain into (queue.kind: durable)")
        return EXIT_CONFIG
    lock = StorageLock(layout.root, layout.lock_file)
    try:
        lock.acquire()
    except StorageLockedError as exc:
        err(f"error: {exc}; draining needs the storage directory to itself")
        return EXIT_FAILURE
    except OSError as exc:
        err(f"error: {exc}")
        return EXIT_FAILURE
    try:
        target = Service(loaded, registry).build_queue(args.to, cfg)
        moved = await _move_queue(args, old, old_dir, target)
        if moved is None:
            return EXIT_FAILURE
        letters = _move_dead_letters(old_dir, layout, args.to)
        left = _remove_emptied(old_dir)
    finally:
        lock.release()
    print(
        f"moved {moved} event(s) from exporters/{old} into the queue of exporter {args.to}"
        + (f" and {letters} dead letter(s) into its dead-letter store" if letters else "")
        + "; "
        + (f"kept in exporters/{old}: {', '.join(left)}" if left else f"removed exporters/{old}")
        + ". The next `collector run` delivers them."
    )
    return EXIT_OK


async def _move_queue(args: argparse.Namespace, old: str, old_dir: Path, target: BatchQueue) -> int | None:
    """Every item of OLD's queue committed to ``target``, then acknowledged in OLD; the events moved."""
    import asyncio  # here, not at import: `collector --help` builds this parser

    from tqdm import tqdm

    from collector.errors import BackpressureError
    from collector.runtime.layout import QUEUE_DIR
    from collector.runtime.orphans import QUEUE_NAME
    from collector.runtime.queue.sqlite import DurableQueue

    queue_dir = old_dir / QUEUE_DIR
    if not (queue_dir / f"{QUEUE_NAME}.db").is_file():
        return 0
    # Never refused for size: these events were accepted once already.
    source = DurableQueue(queue_dir, name=QUEUE_NAME, max_bytes=1 << 62)
    await asyncio.to_thread(source.open)
    await asyncio.to_thread(target.open)
    moved = 0
    deadline = time.monotonic() + args.timeout
    total = source.stats().events
    bar: Any = tqdm(total=total, unit="event", desc=f"drain {old}", disable=args.no_progress or total == 0)
    try:
        while (item := source.get(0.0)) is not None:
            while True:
                try:
                    await target.put(item.events)
                    break
                except BackpressureError as exc:
                    if time.monotonic() > deadline:
                        bar.close()
                        err(
                            f"error: the queue of the new exporter keeps refusing ({exc.message}); "
                            f"{moved} of {total} event(s) moved, the rest stay in exporters/{old}"
                        )
                        return None
                    await asyncio.sleep(min(1.0, exc.retry_after or 1.0))
            source.ack(item.id)
            moved += len(item.events)
            bar.update(len(item.events))
    finally:
        bar.close()
        await asyncio.to_thread(target.close)
        await asyncio.to_thread(source.close)
    return moved


def _move_dead_letters(old_dir: Path, layout: StorageLayout, to: str) -> int:
    """OLD's dead letters into NEW's store, reasons and bodies kept (``collector dlq`` then sees them)."""
    from collector.runtime.deadletters import DeadLetterStore
    from collector.runtime.layout import DEADLETTER_FILE

    path = old_dir / DEADLETTER_FILE
    if not path.is_file():
        return 0
    source = DeadLetterStore(path)
    target: DeadLetterStore | None = None
    moved = 0
    try:
        for chunk in source.iter_all(1000):
            target = target or DeadLetterStore(layout.exporter_deadletters(to))
            _add_like(target, chunk)
            source.delete(e.id for e in chunk)
            moved += len(chunk)
    finally:
        source.close()
        if target is not None:
            target.close()
    return moved


def _add_like(target: DeadLetterStore, entries: list[Any]) -> None:
    """Add entries with their own reason, status and body, consecutive equal ones in one write."""
    for (reason, status, body), run in itertools.groupby(entries, key=lambda e: (e.reason, e.status, e.body)):
        target.add([e.event for e in run], reason, status=status, body=body)


def _remove_emptied(old_dir: Path) -> list[str]:
    """Delete OLD's emptied databases, then the directories left empty; what had to stay."""
    from collector import sqlite
    from collector.runtime.layout import DEADLETTER_FILE, QUEUE_DIR
    from collector.runtime.orphans import QUEUE_NAME, exporter_contents

    contents = exporter_contents(old_dir.name, old_dir)
    if not contents.empty:
        return [f"{contents.queue_events} queued event(s), {contents.dead_letters} dead letter(s)"]
    for db in (old_dir / QUEUE_DIR / f"{QUEUE_NAME}.db", old_dir / DEADLETTER_FILE):
        sqlite.remove_database(db)
    for d in (old_dir / QUEUE_DIR, old_dir):
        with contextlib.suppress(FileNotFoundError, OSError):
            d.rmdir()  # only if empty: quarantined items and damaged files stay
    if not old_dir.exists():
        return []
    return sorted(str(p.relative_to(old_dir)) for p in old_dir.rglob("*") if p.is_file())


__all__ = ["add_queue_parsers", "run_queue"]
