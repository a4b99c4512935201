"""The event loop ``collector run`` (and each worker process) runs on (docs/operations.md, "Event loop").

uvloop, where it is installed (a default dependency of collector-core on
Linux), does the same asyncio work in less CPU: about 10 % less per
single-event request in tests/bench/bench_ingest.py.  ``COLLECTOR_EVENT_LOOP``
chooses: ``auto`` (the default: uvloop when importable, else asyncio),
``uvloop`` (fail when it is missing) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from collector import interpreter
from collector.errors import ConfigError

T = TypeVar("T")

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def loop_factory(choice: EventLoopChoice | None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(name, factory) of the loop ``choice`` gives; factory None is asyncio's default."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "uvloop is not installed (pip install uvloop), or set COLLECTOR_EVENT_LOOP=asyncio",
                "COLLECTOR_EVENT_LOOP",
            ) from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def new_loop_like(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """A new event loop of the same kind as ``loop``: a sender's thread runs what the main loop runs."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice | None = None, gil_switch_ms: float | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` gives, the interpreter tuned (collector.interpreter)."""
    _, factory = loop_factory(choice)
    interpreter.tune(gil_switch_ms)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
