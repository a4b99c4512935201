"""The event loop ``collector run`` (and each worker process) runs on (docs/operations.md, "Event loop").

uvloop, where it is installed (a default dependency of collector-core on
Linux), does the same asyncio work in less CPU: about 10 % less per
single-event request in tests/bench/bench_ingest.py.  ``COLLECTOR_EVENT_LOOP``
chooses: ``auto`` (the default: uvloop when importable, else asyncio),
``uvloop`` (fail when it is missing) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from collector.errors import ConfigError

T = TypeVar("T")

#: How long a thread may wait for the GIL before the one holding it must let go, in ms (Python's
#: default is 5).  The queue's writer and the senders give the GIL up for every SQLite call and
#: fsync and then wait to get it back from the busy event loop.  Measured with
#: tests/bench/bench_ingest.py and bench_otlp.py on 2 cores: 100-event requests 102k events/s at
#: 5 ms, 114k at 1 ms, 127k at 0.5 ms; OTLP logs 52k records/s at 5 ms, 54k at 1 ms, but 47k at
#: 0.5 ms (its gRPC threads then switch too often).  1 ms is never worse than the default;
#: COLLECTOR_GIL_SWITCH_MS sets it (docs/operations.md, "Ingest performance").
DEFAULT_GIL_SWITCH_MS = 1.0
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
    """``asyncio.run(main)`` on the loop ``choice`` gives, with the GIL switch interval set."""
    _, factory = loop_factory(choice)
    sys.setswitchinterval((gil_switch_ms or DEFAULT_GIL_SWITCH_MS) / 1000)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
