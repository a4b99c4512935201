"""Driving a pull receiver with a FakeClock while it talks to a real server.

The receiver's HTTP requests take real (if short) time, so a test cannot just
advance the fake clock and look: it advances the clock in steps, yields to the
loop, and waits -- in real time, bounded -- until a condition holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from collector.clock import FakeClock
from collector.testing import eventually


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

    def step_then_check() -> bool:
        if condition():
            return True
        if clock.time() < until:
            clock.advance(min(step, until - clock.time()))
        return False

    await eventually(step_then_check, timeout=timeout, message=f"{what} (fake time up to {until})")


async def advance(clock: FakeClock, seconds: float, step: float = 30.0) -> None:
    """Move the fake clock forward by ``seconds`` in steps, letting the loop run between them."""
    target = clock.time() + seconds
    while clock.time() < target:
        clock.advance(min(step, target - clock.time()))
        await asyncio.sleep(0.01)
