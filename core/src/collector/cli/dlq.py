"""``collector dlq list|replay|drop``: working with dead letters.

Replay builds the exporter from the configuration and sends the entries
through an :class:`~collector.runtime.sender.ExporterRunner` backed by a memory
queue, so the same batching, retries, splitting and dead-lettering apply.
It works whether or not a collector is running on the same storage.  An entry
is removed only once its event is delivered or dead-lettered again (with the
new reason); entries left when ``--timeout`` runs out stay where they were.

``list`` masks every configured secret in what it prints (entries written
before the dead-letter store masked them may still hold a token).

With worker processes (``service.workers`` > 1) every worker shard has its
own stores (``<storage>/workers/<n>/``): each command covers the primary's
and every shard's, labelled ``(worker n)``; entry ids are per store, so
``--ids`` needs ``--worker N`` (0: the primary's) when several hold entries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from collector.config import LoadedConfig
from collector.plugins import Registry
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout, deadletters_in
from collector.telemetry import REDACTOR

CHUNK = 1000


def _require(loaded: LoadedConfig, kind: str, cid: str) -> None:
    """Exit 2 naming the configured ones when the configuration has no ``kind`` ``cid``."""
    if (kind, cid) not in loaded.components:
        have = ", ".join(c for (k, c) in loaded.components if k == kind) or "none"
        print(f"error: no {kind} {cid!r} in the configuration (have: {have})", file=sys.stderr)
        raise SystemExit(2)


def _exporters(args: argparse.Namespace, loaded: LoadedConfig) -> list[str]:
    ids = [cid for (kind, cid) in loaded.components if kind == "exporter"]
    if args.exporter:
        _require(loaded, "exporter", args.exporter)
        return [args.exporter]
    return ids


def _layouts(args: argparse.Namespace, loaded: LoadedConfig) -> list[tuple[int, StorageLayout]]:
    """(worker index, layout): the primary's storage (0) and each worker shard on disk, or the one --worker names."""
    root = StorageLayout(loaded.raw.storage.directory)
    found = [(0, root), *root.worker_shards().items()]
    wanted = getattr(args, "worker", None)
    if wanted is None:
        return found
    chosen = [(i, layout) for i, layout in found if i == wanted]
    if not chosen:
        have = ", ".join(str(i) for i, _ in found)
        print(f"error: no worker shard {wanted} under {root.root} (have: {have}; 0 is the primary's)", file=sys.stderr)
        raise SystemExit(2)
    return chosen


def _label(name: str, worker: int) -> str:
    return f"{name} (worker {worker})" if worker else name


def _exporter_stores(args: argparse.Namespace, loaded: LoadedConfig, eid: str) -> list[tuple[str, DeadLetterStore]]:
    """The exporter's dead letters: the primary's store, and each worker shard's that exists."""
    out = []
    for worker, layout in _layouts(args, loaded):
        path = layout.exporter_deadletters(eid)
        if worker == 0 or path.exists():
            out.append((_label(eid, worker), DeadLetterStore(path)))
    return out


def _check_ids(args: argparse.Namespace, stores: list[tuple[str, DeadLetterStore]]) -> None:
    """Entry ids are per store: with several stores holding entries, --ids must say which (--worker)."""
    if args.ids and sum(1 for _, store in stores if store.count()) > 1:
        labels = ", ".join(label for label, store in stores if store.count())
        print(
            f"error: entry ids are per store and several hold dead letters ({labels}); "
            "say which with --worker N (0: the primary process's)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def _processor_stores(args: argparse.Namespace, loaded: LoadedConfig) -> list[tuple[str, DeadLetterStore]]:
    """Dead letters of a processor (on_error: dead_letter), one store per pipeline it is in."""
    pid = args.processor
    _require(loaded, "processor", pid)
    out = []
    for worker, layout in _layouts(args, loaded):
        for name, pipe in loaded.raw.service.pipelines.items():
            if pid in pipe.processors:
                path = layout.processor_deadletters(pid, name)
                if path.exists():
                    out.append((_label(f"{pid} (pipeline {name})", worker), DeadLetterStore(path)))
    return out


def _receiver_stores(args: argparse.Namespace, loaded: LoadedConfig) -> list[tuple[str, DeadLetterStore]]:
    """Dead letters of a receiver (input it read but could not turn into events)."""
    rid = args.receiver
    _require(loaded, "receiver", rid)
    out = []
    for worker, layout in _layouts(args, loaded):
        path = deadletters_in(layout.receiver_dir(rid))
        if path.exists():
            out.append((_label(rid, worker), DeadLetterStore(path)))
    return out


def _register_secrets(loaded: LoadedConfig) -> None:
    """Every secret of the configuration, for the masking of what ``list`` prints:
    SecretStr values, and what a component's ``secrets()`` adds (a ``token_file``'s
    content, credentials in a URL)."""
    REDACTOR.add(*loaded.secrets())
    for component in loaded.components.values():
        more = getattr(component.config, "secrets", None)
        if callable(more):
            try:
                REDACTOR.add(*more())
            except Exception:  # an unreadable token file: nothing of it to mask
                continue


def run_dlq(args: argparse.Namespace, loaded: LoadedConfig, registry: Registry) -> int:
    action = args.dlq_command
    code = 0
    _register_secrets(loaded)
    component = getattr(args, "processor", None) or getattr(args, "receiver", None)
    if component:
        if action == "replay":
            print(
                f"error: {component}'s dead letters are input it could not turn into events; fix the input (or "
                "the component's settings: try a mapping with `collector map`), then send it again",
                file=sys.stderr,
            )
            return 2
        stores = _processor_stores(args, loaded) if args.processor else _receiver_stores(args, loaded)
        if not stores:
            print(f"{component}: no dead letters")
        _check_ids(args, stores)
        for label, store in stores:
            try:
                if action == "list":
                    _list(args, label, store)
                else:
                    code = max(code, _drop(args, label, store))
            finally:
                store.close()
        return code
    for eid in _exporters(args, loaded):
        stores = _exporter_stores(args, loaded, eid)
        try:
            _check_ids(args, stores)
            for label, store in stores:
                if action == "list":
                    _list(args, label, store)
                elif action == "drop":
                    code = max(code, _drop(args, label, store))
                else:
                    code = max(code, asyncio.run(_replay(args, loaded, registry, eid, store, label)))
        finally:
            for _, store in stores:
                store.close()
    return code


def _list(args: argparse.Namespace, eid: str, store: DeadLetterStore) -> None:
    entries = store.list(ids=args.ids) if args.ids else store.list(limit=args.limit)
    total = store.count()
    scrub = REDACTOR.scrub
    if args.json:
        for e in entries:
            out = e.as_dict()
            out["reason"] = scrub(e.reason)
            out["body"] = scrub(e.body) if e.body is not None else None
            print(json.dumps({"exporter": eid, **out}))
        return
    print(f"{eid}: {total} dead letter(s)" + (f", showing {len(entries)}" if len(entries) < total else ""))
    for e in entries:
        when = datetime.fromtimestamp(e.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = f" {e.status}" if e.status else ""
        body = scrub(e.body or "").replace("\n", " ")[:120]
        print(
            f"  #{e.id} {when} {scrub(e.reason)}{status} id={e.event.get('id')} subject={e.event.get('subject')} {body}"
        )


def _drop(args: argparse.Namespace, eid: str, store: DeadLetterStore) -> int:
    if args.ids:
        n = store.delete(args.ids)
    elif args.all:
        n = store.clear()
    else:
        print("error: say which entries to drop: --ids 1,2,3 or --all", file=sys.stderr)
        return 2
    print(f"{eid}: dropped {n} dead letter(s)")
    return 0


async def _replay(
    args: argparse.Namespace, loaded: LoadedConfig, registry: Registry, eid: str, store: DeadLetterStore, label: str
) -> int:
    from tqdm import tqdm

    from collector.runtime.service import Service

    total = len(args.ids) if args.ids else store.count()
    if total == 0:
        print(f"{label}: no dead letters to replay")
        return 0
    # Re-rejected events land in the same store with their new reason.
    service = Service(loaded, registry)
    runner = service.build_exporter_runner(eid, replay=True)
    queue = runner.queue
    telemetry = service.telemetry
    await runner.start()
    deadline = time.monotonic() + args.timeout
    done = 0
    bar: Any = tqdm(total=total, unit="event", desc=f"replay {label}", disable=args.no_progress or total < 1)
    try:
        for chunk in store.iter_all(CHUNK, ids=args.ids):
            await queue.put([e.event for e in chunk])
            before = 0
            while queue.stats().items:
                if time.monotonic() > deadline:
                    raise TimeoutError
                await asyncio.sleep(0.05)
                finished = len(chunk) - queue.stats().events
                bar.update(finished - before)
                before = finished
            bar.update(len(chunk) - before)
            store.delete(e.id for e in chunk)
            done += len(chunk)
    except TimeoutError:
        bar.close()
        print(
            f"{label}: replay timed out after {args.timeout:g}s; {done} of {total} finished, "
            "the rest stay in the dead-letter store",
            file=sys.stderr,
        )
        await runner.shutdown(1.0)
        return 1
    bar.close()
    await runner.shutdown(5.0)
    delivered = _count(telemetry, "collector_exporter_delivered_events_total", eid)
    again = _count(telemetry, "collector_exporter_dead_lettered_events_total", eid)
    print(f"{label}: replayed {done} event(s): {int(delivered)} delivered, {int(again)} dead-lettered again")
    return 0


def _count(telemetry: Any, sample: str, eid: str) -> float:
    """An exporter's counter summed over its other labels (the dead-letter reasons, say)."""
    return sum(
        s.value
        for metric in telemetry.metrics.registry.collect()
        for s in metric.samples
        if s.name == sample and s.labels.get("exporter") == eid
    )
