"""A load generator that keeps the books an oracle needs.

A few concurrent asyncio clients (aiohttp) post CloudEvents to a collector's
ingest endpoint: single events (``application/cloudevents+json``) and small
batches (``application/cloudevents-batch+json``), every event with a unique
``(source, id)``.  The :class:`Ledger` records

* ``attempts``: how many requests carried each id (a retry sends the same ids
  again, so an id with 2 attempts may legitimately be queued twice);
* ``acked``: ids of requests answered 2xx -- the *obligations*: each one must
  reach the sink;
* the status (or error class) of every request.

A request that fails (non-2xx, connection refused or reset, timeout) is not an
obligation; with probability ``retry_prob`` the client retries it with the same
ids (up to ``max_attempts`` in all), otherwise it gives up on it.  Its events
may still arrive at the sink (the collector may have committed them before it
died): they are "sent", hence known, but not owed.

The generator runs in its own thread with its own event loop, so the test's
thread can kill and restart the collector meanwhile.  Every loop is bounded:
by :meth:`LoadGenerator.stop`, by ``max_requests`` and by ``max_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

Key = tuple[str, str]

CT_SINGLE = "application/cloudevents+json"
CT_BATCH = "application/cloudevents-batch+json"


def make_event(source: str, event_id: str, *, pad: int = 0, subject: str = "customer-1") -> dict[str, Any]:
    data: dict[str, Any] = {"tokens": 1 + len(event_id) % 7}
    if pad:
        data["pad"] = "x" * pad
    return {
        "specversion": "1.0",
        "type": "loadgen",
        "id": event_id,
        "source": source,
        "subject": subject,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }


@dataclass
class Ledger:
    """What was sent and what was acknowledged (thread-safe)."""

    attempts: Counter[Key] = field(default_factory=Counter)
    acked: set[Key] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    retry_after_missing: int = 0  # 503 answers without a Retry-After header
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent(self) -> set[Key]:
        with self.lock:
            return set(self.attempts)

    def acked_ids(self) -> set[Key]:
        with self.lock:
            return set(self.acked)

    def retried(self) -> set[Key]:
        """Ids carried by more than one request."""
        with self.lock:
            return {k for k, n in self.attempts.items() if n > 1}

    def record(self, keys: list[Key], outcome: str, ok: bool, attempt: int) -> None:
        with self.lock:
            self.requests += 1
            self.outcomes[outcome] += 1
            for k in keys:
                self.attempts[k] += 1
            if ok:
                self.acked.update(keys)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "sent": len(self.attempts),
                "acked": len(self.acked),
                "retried_ids": sum(1 for n in self.attempts.values() if n > 1),
                "outcomes": dict(self.outcomes),
            }


class LoadGenerator:
    """``clients`` concurrent posters against ``url`` (see the module docstring)."""

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        seed: int,
        clients: int = 4,
        max_batch: int = 8,
        single_prob: float = 0.4,
        retry_prob: float = 0.5,
        max_attempts: int = 3,
        think: tuple[float, float] = (0.005, 0.02),
        error_backoff: tuple[float, float] = (0.02, 0.06),
        max_requests: int | None = None,
        max_seconds: float = 600.0,
        request_timeout: float = 10.0,
        pad: int = 0,
        run_id: str | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._url = url if callable(url) else (lambda: url)
        self.rng = random.Random(seed)
        self.clients = clients
        self.max_batch = max_batch
        self.single_prob = single_prob
        self.retry_prob = retry_prob
        self.max_attempts = max_attempts
        self.think = think
        self.error_backoff = error_backoff
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.request_timeout = request_timeout
        self.pad = pad
        self.run_id = run_id or f"r{seed & 0xFFFFFF:06x}"
        self.ledger = ledger or Ledger()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started_requests = 0

    # -- thread side ---------------------------------------------------------------

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=self._thread_main, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the clients to stop and wait for their last requests."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"load generator did not stop within {timeout}s")
        if self._error is not None:
            raise self._error

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    # -- loop side ------------------------------------------------------------------

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        # force_close: a killed collector leaves no stale keep-alive sockets behind.
        connector = aiohttp.TCPConnector(limit=self.clients * 2, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session, c, deadline) for c in range(self.clients)))

    def _budget_left(self, deadline: float) -> bool:
        if self._stop.is_set() or time.monotonic() >= deadline:
            return False
        return self.max_requests is None or self._started_requests < self.max_requests

    async def _client(self, session: aiohttp.ClientSession, client: int, deadline: float) -> None:
        source = f"loadgen-{self.run_id}-c{client}"
        seq = 0
        while self._budget_left(deadline):
            single = self.rng.random() < self.single_prob
            n = 1 if single else self.rng.randint(2, self.max_batch)
            events = [make_event(source, f"{self.run_id}-c{client}-{seq + i}", pad=self.pad) for i in range(n)]
            seq += n
            body = orjson.dumps(events[0] if single else events)
            ctype = CT_SINGLE if single else CT_BATCH
            keys = [(e["source"], e["id"]) for e in events]
            for attempt in range(1, self.max_attempts + 1):
                if not self._budget_left(deadline) and attempt > 1:
                    break
                self._started_requests += 1
                ok, outcome = await self._post(session, body, ctype)
                self.ledger.record(keys, outcome, ok, attempt)
                if ok:
                    break
                await asyncio.sleep(self.rng.uniform(*self.error_backoff))
                if self.rng.random() >= self.retry_prob:
                    break
            await asyncio.sleep(self.rng.uniform(*self.think))

    async def _post(self, session: aiohttp.ClientSession, body: bytes, ctype: str) -> tuple[bool, str]:
        try:
            async with session.post(self._url(), data=body, headers={"Content-Type": ctype}) as resp:
                await resp.read()
                if resp.status == 503 and "Retry-After" not in resp.headers:
                    with self.ledger.lock:
                        self.ledger.retry_after_missing += 1
                return 200 <= resp.status < 300, str(resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, type(exc).__name__


__all__ = ["CT_BATCH", "CT_SINGLE", "Key", "Ledger", "LoadGenerator", "make_event"]
