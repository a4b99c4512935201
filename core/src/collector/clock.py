"""Time sources.  Components read time through a Clock so tests can fake it."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


def utcnow(clock: Clock | None = None) -> datetime:
    return datetime.fromtimestamp((clock or SystemClock()).time(), UTC)


async def sleep_until_woken(clock: Clock, seconds: float, wake: asyncio.Event) -> None:
    """Sleep ``seconds`` on ``clock``, or less if ``wake`` is set first (a component's loop that must stop
    at once on shutdown, or poll early on request).

    The deadline is fixed now, not when the sleeper task first runs: a clock that moves in between (a
    FakeClock advanced by a test) must not push the wake-up later.
    """
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    deadline = clock.monotonic() + seconds

    async def until_deadline() -> None:
        while (left := deadline - clock.monotonic()) > 0:
            await clock.sleep(left)

    sleeper = asyncio.ensure_future(until_deadline())
    waker = asyncio.ensure_future(wake.wait())
    await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    sleeper.cancel()
    waker.cancel()


async def finish_task(task: asyncio.Task[Any], grace: float) -> None:
    """Let a component's background ``task`` (told to stop already) finish for up to ``grace`` seconds,
    then cancel it and wait until it has ended: a batch being committed completes (its watermark or
    checkpoint is saved), a read in progress is abandoned and done again next time.
    """
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when told to; ``sleep`` waits for ``advance``.

    Thread-safe: an exporter's sender sleeps on its own thread's event loop
    (docs/delivery.md, "The sender") while a test advances the clock from
    another, so a sleeper on another loop is woken through that loop.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._sleepers.append((self._mono + seconds, fut))
        await fut

    @property
    def sleeping(self) -> list[float]:
        """Seconds left for each waiting ``sleep`` call, soonest first.

        A test waits until the component it drives is asleep (``60.0 in
        clock.sleeping``) and then advances, instead of sleeping for real.
        """
        with self._lock:
            return sorted(t - self._mono for t, _ in self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline passed."""
        with self._lock:
            self._now += seconds
            self._mono += seconds
            due = [f for t, f in self._sleepers if t <= self._mono]
            self._sleepers = [(t, f) for t, f in self._sleepers if t > self._mono]
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for fut in due:
            loop = fut.get_loop()
            if loop.is_closed():
                continue
            if loop is here or not loop.is_running():
                _wake(fut)
            else:
                loop.call_soon_threadsafe(_wake, fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
