"""The sender's host: its own thread, its own event loop, and one thread for blocking queue calls.

Intake (receivers, on the service loop) and delivery must not starve each
other: a prototype with the sender on the receivers' loop delivered 2-3k
events/s while ingest ran at 60k/s; on its own thread it kept pace
(docs/delivery.md, "The sender").  The queue's calls block (SQLite), so they
run on a single I/O thread: one at a time, in the order they were asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from collector.runtime.eventloop import new_loop_like

T = TypeVar("T")


class LoopHost:
    """A thread running an asyncio loop, driven from another loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"queue-{name}")

    @property
    def running(self) -> bool:
        return self._loop is not None

    async def start(self) -> None:
        """Start the thread and return once its loop runs."""
        ready = threading.Event()
        like = asyncio.get_running_loop()

        def run() -> None:
            loop = new_loop_like(like)
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"sender-{self.name}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the host's loop and await its result from the caller's loop."""
        assert self._loop is not None, "the host is not started"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def run_io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the I/O thread (from the host's loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def stop(self, join_timeout: float = 5.0) -> None:
        """Stop the loop, join the thread, and finish the I/O thread's work."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, join_timeout)
            self._thread = None
        await asyncio.to_thread(self._io.shutdown, True)
