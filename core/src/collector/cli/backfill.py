"""``collector backfill RECEIVER --from T --to T``: re-emit past windows.

The receiver's pipelines are built from the configuration on a storage
directory of their own (``<storage>/backfill/<receiver>-<stamp>``, see
:meth:`collector.runtime.layout.StorageLayout.for_backfill`), so a
collector running on the same storage is not disturbed and the live
watermark is not touched.  Each window is collected and committed in order
(a progress bar shows the windows), then the backfill's own senders deliver
until its queues are empty (a second bar).  Ids are the same deterministic
ids a live run produces, so windows that were already delivered are
de-duplicated by OpenMeter: a backfill can be repeated safely, for example
after it was interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from collector.backoff import Backoff
from collector.config import LoadedConfig
from collector.errors import ConfigError
from collector.functions import unix_time
from collector.plugins import Registry

# A failed window is retried after up to 2 s, 4 s, 8 s... at most 30 s (full jitter).
_WINDOW_BACKOFF = Backoff(base=2.0, cap=30.0)


def _parse_time(value: str, flag: str) -> float:
    try:
        out = unix_time(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{value!r} is not a time ({exc}); use RFC 3339, e.g. 2026-01-01T00:00:00Z", flag) from None
    assert out is not None
    return out


def _scoped(loaded: LoadedConfig, receiver_id: str) -> LoadedConfig:
    """The configuration reduced to the receiver's pipelines, fed by that receiver alone."""
    raw = loaded.raw
    pipelines = {n: p for n, p in raw.service.pipelines.items() if receiver_id in p.receivers}
    if not pipelines:
        raise ConfigError(f"no pipeline uses receiver {receiver_id!r}", "service.pipelines")
    pipelines = {n: p.model_copy(update={"receivers": [receiver_id]}) for n, p in pipelines.items()}
    service = raw.service.model_copy(update={"pipelines": pipelines})
    new_raw = raw.model_copy(update={"service": service})
    return LoadedConfig(raw=new_raw, components=loaded.components, warnings=[], source=loaded.source)


async def run_backfill(args: argparse.Namespace, loaded: LoadedConfig, registry: Registry) -> int:
    from tqdm import tqdm

    from collector.pull import PullReceiver
    from collector.runtime.layout import StorageLayout
    from collector.runtime.service import Service

    rid = args.receiver
    if ("receiver", rid) not in loaded.components:
        have = ", ".join(cid for (k, cid) in loaded.components if k == "receiver")
        print(f"error: no receiver {rid!r} in the configuration (have: {have})", file=sys.stderr)
        return 2
    start, end = _parse_time(args.start, "--from"), _parse_time(args.end, "--to")
    if end <= start:
        print("error: --to must be after --from", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    layout = StorageLayout(loaded.raw.storage.directory).for_backfill(rid, stamp)
    service = Service(_scoped(loaded, rid), registry, layout=layout)
    service.build()
    receiver = service.receivers[rid]
    if not isinstance(receiver, PullReceiver):
        print(f"error: receiver {rid!r} is not a pull receiver; only those have windows to backfill", file=sys.stderr)
        return 2
    receiver.autorun = False
    first = receiver.schedule.end_at_or_before(start)
    windows = list(receiver.schedule.windows(first, end))
    if not windows:
        print(f"error: no complete window between {args.start} and {args.end}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    await service.start()
    events = 0
    try:
        bar: Any = tqdm(windows, unit="window", desc=f"backfill {rid}", disable=not progress)
        for window in bar:
            attempt = 0
            while True:
                try:
                    events += await receiver.run_window(window)
                    break
                except Exception as exc:
                    attempt += 1
                    if attempt > args.retries:
                        bar.close()
                        print(f"error: window {window} failed {attempt} time(s): {exc}", file=sys.stderr)
                        return 1
                    await asyncio.sleep(_WINDOW_BACKOFF.delay(attempt - 1))
        bar.close()
        drained = await _drain(service, args.timeout, progress)
    finally:
        await service.stop(10.0)
    print(
        f"backfill {rid}: {len(windows)} window(s) from {windows[0].start_time} to {windows[-1].end_time}, "
        f"{events} event(s) committed" + ("" if drained else f"; NOT all delivered within {args.timeout:g}s")
    )
    if not drained:
        print(
            f"the rest stays queued under {layout.root}; run the same backfill again to resend "
            "(ids are deterministic, so nothing is billed twice)",
            file=sys.stderr,
        )
    return 0 if drained else 1


async def _drain(service: Any, timeout: float, progress: bool) -> bool:
    from tqdm import tqdm

    def queued() -> int:
        return sum(r.queue.stats().events for r in service.exporters.values())

    total = queued()
    deadline = time.monotonic() + timeout
    with tqdm(total=total, unit="event", desc="delivering", disable=not progress or total == 0) as bar:
        while (left := queued()) > 0:
            bar.n = total - left
            bar.refresh()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        bar.n = total
        bar.refresh()
    return True
