"""``eventually()``: wait for a condition instead of sleeping and hoping.

Tests of a running pipeline observe work that happens on other tasks and
threads (the sender delivers on its own thread, a pull receiver on its own
task), so an assertion right after an action may run too early, and one after
a fixed ``sleep`` passes or fails with the machine's load.  Waiting on the
condition itself, with a deadline that is a failure, is both fast and honest
(docs/plugin-authors.md, "Testing").

The deadline is real time on purpose: it bounds how long a broken test hangs,
it does not decide the behaviour under test (that time comes from the
component's clock, a ``FakeClock`` in tests).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually", "eventually_sync"]

T = TypeVar("T")


def _failure(what: str, timeout: float, last: object, error: AssertionError | None) -> AssertionError:
    if error is not None:
        failure = AssertionError(f"{what} did not hold within {timeout:g}s: {error}")
        failure.__cause__ = error
        return failure
    return AssertionError(f"{what} did not hold within {timeout:g}s (last value: {last!r})")


def _describe(check: Callable[..., object], message: str | None) -> str:
    return message or getattr(check, "__qualname__", None) or repr(check)


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value, and return that value.

    ``check`` may be a plain function or a coroutine function.  It may also
    assert: an ``AssertionError`` counts as "not yet", and the last one is
    raised (chained) when ``timeout`` seconds pass.  A falsy result at the
    deadline raises ``AssertionError`` naming ``message`` (or the function) and
    the last value.  Other exceptions propagate at once: they are bugs, not
    "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        error: AssertionError | None = None
        value: object = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            error = exc
        if error is None and value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(_describe(check, message), timeout, value, error)
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """:func:`eventually` for code that is not on an event loop (subprocess tests).

    Blocks the calling thread between tries, so never call it on a running loop.
    """
    deadline = time.monotonic() + timeout
    while True:
        error: AssertionError | None = None
        value: object = None
        try:
            value = check()
        except AssertionError as exc:
            error = exc
        if inspect.isawaitable(value):
            close = getattr(value, "close", None)
            if close is not None:
                close()  # no "never awaited" warning on top of the error
            raise TypeError("eventually_sync() got an awaitable: use `await eventually(...)` on an event loop")
        if error is None and value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _failure(_describe(check, message), timeout, value, error)
        time.sleep(interval)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything a server sends on a raw connection until it closes it (TimeoutError if it never does).

    For tests of connection handling (idle and header timeouts, connection caps).
    """
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return out
