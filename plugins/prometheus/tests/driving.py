"""Driving a pull receiver with a FakeClock while it talks to a real server.

The receiver's HTTP requests take real (if short) time, so a test cannot just
advance the fake clock and look: it advances the clock in steps, yields to the
loop, and waits -- in real time, bounded -- until a condition holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from collector.clock import FakeClock


async def drive(
    clock: FakeClock,
    condition: Callable[[], bool],
    *,
    until: float,
    step: float = 30.0,
    timeout: float = 15.0,
    what: str = "condition",
) -> None:
    """Advance ``clock`` by ``step`` (never past ``until``) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (fake time {clock.time()})")
        if clock.time() < until:
            clock.advance(min(step, until - clock.time()))
        await asyncio.sleep(0.01)


async def advance(clock: FakeClock, seconds: float, step: float = 30.0) -> None:
    """Move the fake clock forward by ``seconds`` in steps, letting the loop run between them."""
    target = clock.time() + seconds
    while clock.time() < target:
        clock.advance(min(step, target - clock.time()))
        await asyncio.sleep(0.01)
