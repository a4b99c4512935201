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

#: How long a thread may hold the GIL while another waits for it (Python's default is 5 ms).
#: The queue's writer and the senders give the GIL up for every SQLite call and fsync and
#: then wait to get it back from the busy event loop: at 5 ms a group commit of 100-event
#: requests took ~10 ms, at 0.5 ms ~7 ms, and 100-event intake rose ~20 % (single events
#: unchanged; 0.25 ms and below cost more in switching than they gain), tests/bench/bench_ingest.py.
SWITCH_INTERVAL_S = 0.0005
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


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` gives."""
    _, factory = loop_factory(choice)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
