"""A fake OpenMeter ingest server that enforces the documented ingest contract.

Why a strict fake: a fake that accepts anything only proves that the collector
sends *something*.  This one rejects what the real API rejects (wrong content
type, malformed CloudEvents, oversized bodies, bad credentials) and answers with
the same status codes, so a collector test against it says something about
production behaviour.  It also records every arrival -- duplicates included --
so delivery guarantees (at-least-once, no loss) can be checked exactly, and it
can inject the failures a real deployment sees (5xx, 429/503 with Retry-After,
401 windows, poison events, stalls, refused connections).

This module deliberately imports nothing from ``collector``: it is an
independent statement of the contract, not a mirror of the code under test.

Two ways to run it:

* in-process (pytest)::

      fake = FakeOpenMeter(token="secret")
      await fake.start()                 # binds 127.0.0.1, port 0
      ...                                # fake.url == "http://127.0.0.1:PORT"
      await fake.stop()

  or, with its own event loop in a background thread (sync tests, or tests whose
  collector runs as a subprocess)::

      with FakeOpenMeter.in_thread(token="secret") as fake:
          ...
          fake.wait_for_ids_sync({"id-1"}, timeout=10)

* as a separate process (crash tests)::

      python tests/support/fake_openmeter.py --port 0 --record arrivals.jsonl \\
          --port-file port.txt [--token secret] [--max-body-bytes N]

  Faults are then injected over HTTP with ``POST /_control/faults`` and the state
  is read with ``GET /_control/state`` (see ``_apply_control_action``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from aiohttp import web

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "INGEST_PATHS",
    "Arrival",
    "FakeOpenMeter",
    "Fault",
    "InvalidField",
    "RequestRecord",
    "validate_event",
]

T = TypeVar("T")

# --------------------------------------------------------------------------- contract

#: Ingest endpoints and the status each answers on success.  v1 answers
#: 204 No Content; the v3 API answers 202 Accepted (ingestion is asynchronous).
INGEST_PATHS: Mapping[str, int] = {
    "/api/v1/events": 204,
    "/api/v3/openmeter/events": 202,
}

#: Default request-body limit.  Configurable so tests can probe the edge cheaply.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

CT_SINGLE = "application/cloudevents+json"
CT_BATCH = "application/cloudevents-batch+json"
CT_JSON = "application/json"
_ACCEPTED_CONTENT_TYPES = frozenset({CT_SINGLE, CT_BATCH, CT_JSON})

PROBLEM_CT = "application/problem+json"

# RFC 3339 ``date-time`` (section 5.6): full-date "T" full-time, where the offset is
# mandatory.  ``[0-9]`` rather than ``\d`` because ``\d`` also matches non-ASCII
# digits.  Ranges (month 13, Feb 30, hour 24...) are checked separately below.
_RFC3339_RE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?P<off_h>[0-9]{2}):(?P<off_m>[0-9]{2}))"
)

#: Attributes that OpenMeter requires to be non-empty strings.
_REQUIRED_STRING_ATTRIBUTES = ("id", "source", "type", "subject")


def is_rfc3339(value: str) -> bool:
    """True when ``value`` is an RFC 3339 date-time with a valid calendar date/time."""
    m = _RFC3339_RE.fullmatch(value)
    if m is None:
        return False
    try:
        # datetime() rejects impossible dates (2023-02-30) and out-of-range times.
        dt.datetime(
            int(m["year"]),
            int(m["month"]),
            int(m["day"]),
            int(m["hour"]),
            int(m["minute"]),
            int(m["second"]),
        )
    except ValueError:
        return False
    # A numeric offset must itself be a valid time of day ("+24:00" is not).
    return m["off_h"] is None or (int(m["off_h"]) <= 23 and int(m["off_m"]) <= 59)


@dataclass(frozen=True)
class InvalidField:
    """One contract violation of one event, as reported in the problem body."""

    index: int
    id: str | None  # the event's id when it has a usable one, to name the event
    field: str | None  # None: the event as a whole (e.g. not a JSON object)
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "field": self.field, "message": self.message}


def validate_event(index: int, event: Any) -> list[InvalidField]:
    """Check one decoded event against OpenMeter's event rules; [] when it is valid.

    Every violation is reported (not just the first) so a failing test shows all
    that is wrong with the event at once.
    """
    if not isinstance(event, dict):
        return [InvalidField(index, None, None, "event must be a JSON object")]
    raw_id = event.get("id")
    event_id = raw_id if isinstance(raw_id, str) and raw_id else None
    problems: list[InvalidField] = []

    def bad(field_name: str, message: str) -> None:
        problems.append(InvalidField(index, event_id, field_name, message))

    if "specversion" not in event:
        bad("specversion", "required")
    elif event["specversion"] != "1.0":
        bad("specversion", 'must be the string "1.0"')

    for name in _REQUIRED_STRING_ATTRIBUTES:
        if name not in event:
            bad(name, "required")
        elif not isinstance(event[name], str) or not event[name]:
            bad(name, "must be a non-empty string")

    # Optional attributes: when the key is present it must be well formed.  A JSON
    # null is *not* treated as absent for `time`: a collector that emits
    # "time": null has a bug worth seeing.
    if "time" in event:
        t = event["time"]
        if not isinstance(t, str) or not is_rfc3339(t):
            bad("time", "must be an RFC 3339 timestamp string")

    if "data" in event and event["data"] is not None and not isinstance(event["data"], dict):
        bad("data", "must be a JSON object")

    if "datacontenttype" in event and event["datacontenttype"] != CT_JSON:
        bad("datacontenttype", f'must be "{CT_JSON}"')

    return problems


def _parse_content_type(header: str | None) -> tuple[str | None, str | None]:
    """Return (media type, None) for an acceptable Content-Type, else (None, reason).

    Only a ``charset=utf-8`` parameter is allowed: JSON is UTF-8 (RFC 8259) and
    a client that announces another charset or unknown parameters is wrong.
    """
    if header is None or not header.strip():
        return None, "missing Content-Type"
    media, *params = (part.strip() for part in header.split(";"))
    media = media.lower()
    if media not in _ACCEPTED_CONTENT_TYPES:
        return None, f"unsupported Content-Type {media!r}"
    for param in params:
        if not param:
            continue
        key, sep, value = param.partition("=")
        if key.strip().lower() != "charset" or not sep:
            return None, f"unsupported Content-Type parameter {param!r}"
        if value.strip().strip('"').lower() != "utf-8":
            return None, f"unsupported charset {value.strip()!r} (only utf-8)"
    return media, None


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; real JSON (and Go's decoder
    # behind OpenMeter) does not.
    raise ValueError(f"invalid JSON constant {name}")


@dataclass(frozen=True)
class _Parsed:
    """Outcome of decoding a body: the events, or why the body is unusable."""

    events: list[Any] | None = None
    error: str | None = None


def _decode_body(media_type: str, body: bytes) -> _Parsed:
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return _Parsed(error=f"invalid JSON body: {exc}")
    if media_type == CT_SINGLE:
        if not isinstance(doc, dict):
            return _Parsed(error=f"{CT_SINGLE} body must be a single event object")
        return _Parsed(events=[doc])
    if media_type == CT_BATCH and not isinstance(doc, list):
        return _Parsed(error=f"{CT_BATCH} body must be a JSON array of events")
    if isinstance(doc, dict):
        return _Parsed(events=[doc])
    if not isinstance(doc, list):
        return _Parsed(error="body must be an event object or an array of events")
    if not doc:
        return _Parsed(error="empty batch: at least one event is required")
    return _Parsed(events=doc)


# --------------------------------------------------------------------------- records & faults


@dataclass(frozen=True)
class Arrival:
    """One accepted event, in arrival order."""

    event: dict[str, Any]
    received_at: float  # time.time() when the request was accepted
    path: str
    request_no: int  # 1-based index into FakeOpenMeter.requests


class RequestRecord(NamedTuple):
    """Log line of one request (a tuple, so ``== ("/api/v1/events", 204, 3)`` works)."""

    path: str
    status: int
    n_events: int  # events in the body when it could be decoded, else 0


@dataclass(frozen=True)
class Fault:
    """A scripted response for one ingest request (consumed in FIFO order).

    * ``status=None``: after ``delay`` seconds, process the request normally
      (a stall; the events are recorded even if the client gave up meanwhile,
      which is exactly the "committed but unacknowledged" case).
    * ``status=N``: after ``delay`` seconds, answer N without recording anything.
    * ``status=N, commit=True``: record the events as if accepted, then answer N
      anyway -- a lost acknowledgement, which makes a correct client send duplicates.
    * ``retry_after``: seconds (rounded up to an integer, as HTTP requires) or a
      verbatim header string; with ``retry_after_date`` the header is an HTTP-date
      that many seconds ahead (default 1).
    * ``location``: a ``Location`` header, for a redirect (``status`` 3xx).
    * ``echo_authorization``: the problem's ``detail`` repeats the request's
      ``Authorization`` header, as a careless proxy or gateway does.
    * ``body_bytes``: the error body is this many bytes, streamed in 64 KiB chunks;
      ``FakeOpenMeter.streamed_error_bytes`` then says how many were written before
      the client stopped reading (or all of them).
    """

    status: int | None = None
    delay: float = 0.0
    retry_after: float | str | None = None
    retry_after_date: bool = False
    commit: bool = False
    detail: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    location: str | None = None
    echo_authorization: bool = False
    body_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, not {self.status!r}")
        if (self.location is not None or self.echo_authorization or self.body_bytes is not None) and (
            self.status is None or self.commit
        ):
            raise ValueError("location, echo_authorization and body_bytes need a status and no commit")
        if self.body_bytes is not None and self.body_bytes < 0:
            raise ValueError("body_bytes must be >= 0")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.commit and self.status is None:
            raise ValueError("commit=True needs a status to answer with")

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Fault:
        unknown = set(doc) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        return cls(**dict(doc))

    def retry_after_header(self) -> str | None:
        if self.retry_after_date:
            seconds = 1.0 if self.retry_after is None else float(self.retry_after)
            # HTTP-dates have one-second resolution: round *up* so the client is
            # never told a moment earlier than intended.
            return formatdate(math.ceil(time.time() + seconds), usegmt=True)
        if self.retry_after is None:
            return None
        if isinstance(self.retry_after, str):
            return self.retry_after
        return str(math.ceil(self.retry_after))


def _problem(
    status: int,
    detail: str,
    *,
    invalid: list[InvalidField] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An RFC 7807 problem response, the error format of the OpenMeter API."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:  # a scripted fault may use an unregistered code
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if invalid is not None:
        body["invalid"] = [item.as_json() for item in invalid]
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_CT,
        headers=dict(headers or {}),
    )


def _unauthorized(detail: str) -> web.Response:
    return _problem(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _never_arrived(missing: list[str | tuple[str, str]]) -> str:
    return f"{len(missing)} id(s) never arrived: {sorted(map(str, missing))[:20]}"


def _summarise(invalid: list[InvalidField], limit: int = 5) -> str:
    parts = [f"[{i.index}] {i.field or 'event'}: {i.message}" for i in invalid[:limit]]
    more = f" (+{len(invalid) - limit} more)" if len(invalid) > limit else ""
    events = len({i.index for i in invalid})
    return f"{events} invalid event(s); request rejected: " + "; ".join(parts) + more


# --------------------------------------------------------------------------- the server


class FakeOpenMeter:
    """Strict, fault-injectable OpenMeter ingest server bound to 127.0.0.1.

    Thread-safety: the recording/inspection API (``arrivals``, ``ids()``...) and
    the fault-injection API (``fail_next``, ``reject_ids``...) may be called from
    any thread.  Lifecycle coroutines (``start``/``stop``/``pause_listening``)
    run on the loop that started the fake; called from another loop they are
    forwarded there, and ``*_sync`` variants exist for plain threads.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        record_path: str | os.PathLike[str] | None = None,
        control: bool = True,
        shutdown_timeout: float = 0.5,
    ) -> None:
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.control = control
        # How long stop()/pause_listening() lets in-flight requests finish before
        # cancelling them; short because a "crash" should not wait for stalls.
        self.shutdown_timeout = shutdown_timeout
        self._port = port
        self._record_path = Path(record_path) if record_path is not None else None

        # All mutable state below is guarded by _lock (handlers run on the
        # server loop, tests read and inject faults from their own thread).
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._arrivals: list[Arrival] = []
        self._counts: Counter[tuple[str, str]] = Counter()
        self._requests: list[RequestRecord] = []
        self._faults: deque[Fault] = deque()
        self._unauthorized_until: float | None = None  # time.monotonic() deadline
        self._rejected_ids: frozenset[str] = frozenset()
        self._sink_hits: list[tuple[str, str, int]] = []  # (method, path, body bytes)
        self._streamed_error_bytes: list[int] = []  # one entry per finished body_bytes fault

        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self._record_file: Any = None
        self._thread_loop = False  # True when owned by in_thread()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The bound port (kept across stop()/start() and pause_listening())."""
        if not self._port:
            raise RuntimeError("FakeOpenMeter has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return self.url + "/api/v1/events"

    @property
    def v3_events_url(self) -> str:
        return self.url + "/api/v3/openmeter/events"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 (port 0 the first time, the same port afterwards)."""
        self._loop = asyncio.get_running_loop()
        if self._record_path is not None and self._record_file is None:
            # Append: a restarted fake (crash tests) keeps the earlier arrivals.
            self._record_file = self._record_path.open("a", encoding="utf-8")
        await self._open()

    async def stop(self) -> None:
        """Close the listener and all connections; state and port are kept."""
        if self._loop is None:
            return
        await self._on_owner_loop(self._stop_on_loop)

    async def pause_listening(self, seconds: float | None) -> None:
        """Refuse connections: close the listener (and open connections) now and
        listen again on the same port after ``seconds`` (None: until
        ``resume_listening()``).  Returns once the port is closed."""
        await self._on_owner_loop(lambda: self._pause_on_loop(seconds))

    async def resume_listening(self) -> None:
        await self._on_owner_loop(self._resume_on_loop)

    def pause_listening_sync(self, seconds: float | None, timeout: float = 10.0) -> None:
        """``pause_listening`` for code that is not in an event loop."""
        self._blocking(lambda: self._pause_on_loop(seconds), timeout)

    def resume_listening_sync(self, timeout: float = 10.0) -> None:
        self._blocking(self._resume_on_loop, timeout)

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, token: str | None = None, **kwargs: Any) -> Iterator[FakeOpenMeter]:
        """Run a fake on its own event loop in a daemon thread (same keywords as
        ``__init__``).  For sync tests and for tests whose collector is a
        subprocess, so the fake keeps answering while the test blocks."""
        fake = cls(token, **kwargs)
        fake._thread_loop = True
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-openmeter", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=10)
            yield fake
        finally:
            try:
                asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
                loop.close()

    async def _open(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(middlewares=[self._problem_middleware])
        for path in INGEST_PATHS:
            app.router.add_post(path, self._handle_ingest)
        app.router.add_route("*", "/_sink/{tail:.*}", self._handle_sink)
        if self.control:
            app.router.add_post("/_control/faults", self._handle_control_faults)
            app.router.add_post("/_control/reset", self._handle_control_reset)
            app.router.add_get("/_control/state", self._handle_control_state)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _stop_on_loop(self) -> None:
        await self._cancel_resume()
        await self._close()
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    async def _pause_on_loop(self, seconds: float | None) -> None:
        await self._cancel_resume()
        await self._close()
        if seconds is not None:
            self._resume_task = asyncio.create_task(self._resume_after(seconds))

    async def _resume_on_loop(self) -> None:
        await self._cancel_resume()
        await self._open()

    async def _resume_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._resume_task = None  # done waiting: _open must not cancel us
        await self._open()

    async def _cancel_resume(self) -> None:
        task, self._resume_task = self._resume_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _on_owner_loop(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop the fake was started on, from any loop."""
        owner = self._require_loop()
        if asyncio.get_running_loop() is owner:
            return await make()
        fut = asyncio.run_coroutine_threadsafe(_as_coroutine(make), owner)
        return await asyncio.wrap_future(fut)

    def _blocking(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        owner = self._require_loop()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the normal case
            running = None
        if running is owner:
            raise RuntimeError("blocking call on the fake's own loop would deadlock")
        return asyncio.run_coroutine_threadsafe(_as_coroutine(make), owner).result(timeout)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("FakeOpenMeter has not been started")
        return self._loop

    # ------------------------------------------------------------------ inspection

    @property
    def arrivals(self) -> list[dict[str, Any]]:
        """Every accepted event in arrival order, duplicates included (read-only)."""
        with self._lock:
            return [a.event for a in self._arrivals]

    @property
    def arrival_log(self) -> list[Arrival]:
        """``arrivals`` with the arrival time, path and request number."""
        with self._lock:
            return list(self._arrivals)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request to a non-control path, in order: (path, status, n_events)."""
        with self._lock:
            return list(self._requests)

    def ids(self) -> set[tuple[str, str]]:
        """The distinct (source, id) pairs accepted so far."""
        with self._lock:
            return set(self._counts)

    def duplicates(self) -> Counter[tuple[str, str]]:
        """(source, id) -> times accepted, for pairs accepted more than once."""
        with self._lock:
            return Counter({k: n for k, n in self._counts.items() if n > 1})

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def sink_url(self) -> str:
        """A URL that answers 200 to any method and records the hit: a redirect
        target that would "accept" whatever a client sends after following it."""
        return self.url + "/_sink/events"

    @property
    def sink_hits(self) -> list[tuple[str, str, int]]:
        """Requests that reached ``sink_url`` (or below ``/_sink/``): (method, path, body bytes)."""
        with self._lock:
            return list(self._sink_hits)

    @property
    def streamed_error_bytes(self) -> list[int]:
        """Bytes written of each finished ``body_bytes`` error body, in order: fewer
        than ``body_bytes`` when the client closed the connection early."""
        with self._lock:
            return list(self._streamed_error_bytes)

    def reset(self) -> None:
        """Forget arrivals, the request log and all faults (the record file is kept)."""
        with self._lock:
            self._arrivals.clear()
            self._counts.clear()
            self._requests.clear()
            self._sink_hits.clear()
            self._streamed_error_bytes.clear()
        self.clear_faults()

    async def wait_for_ids(self, ids: Iterable[str | tuple[str, str]], timeout: float = 10.0) -> None:
        """Wait until every id has been accepted at least once.

        An item is an event ``id`` (any source) or a ``(source, id)`` pair.
        Raises ``TimeoutError`` naming the missing ones.  Polls, so it works from
        any event loop, whichever loop the fake runs on.
        """
        wanted = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = self._missing(wanted)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(_never_arrived(missing))
            await asyncio.sleep(0.01)

    def wait_for_ids_sync(self, ids: Iterable[str | tuple[str, str]], timeout: float = 10.0) -> None:
        """Blocking ``wait_for_ids`` for threads (e.g. with ``in_thread``)."""
        wanted = list(ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                missing = self._missing_locked(wanted)
                if not missing:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(_never_arrived(missing))
                self._changed.wait(remaining)

    def _missing(self, wanted: list[str | tuple[str, str]]) -> list[str | tuple[str, str]]:
        with self._lock:
            return self._missing_locked(wanted)

    def _missing_locked(self, wanted: list[str | tuple[str, str]]) -> list[str | tuple[str, str]]:
        bare = {event_id for (_source, event_id) in self._counts}
        return [w for w in wanted if w not in (self._counts if isinstance(w, tuple) else bare)]

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
        retry_after_date: bool = False,
        commit: bool = False,
        detail: str | None = None,
    ) -> None:
        """Answer the next ``count`` ingest requests with ``status`` (e.g. 500;
        503/429 with ``retry_after`` seconds or, with ``retry_after_date``, an
        HTTP-date).  ``commit=True`` records the events first (lost ack)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        fault = Fault(
            status=status,
            retry_after=retry_after,
            retry_after_date=retry_after_date,
            commit=commit,
            detail=detail,
        )
        self.queue_faults([fault] * count)

    def stall_next(self, seconds: float, count: int = 1, *, then_status: int | None = None) -> None:
        """Hold the next ``count`` ingest requests for ``seconds`` before answering.

        With ``then_status=None`` the request is then processed normally -- its
        events are recorded even if the client timed out, as a real server that
        was merely slow would.  Otherwise ``then_status`` is answered and nothing
        is recorded.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        self.queue_faults([Fault(status=then_status, delay=seconds)] * count)

    def redirect_next(self, status: int, location: str, count: int = 1) -> None:
        """Answer the next ``count`` ingest requests with a redirect (301, 302, 303,
        307 or 308) to ``location``; nothing is recorded here.  ``sink_url`` (of
        this fake or another) is a target that answers 200 to anything."""
        if not 300 <= status <= 399:
            raise ValueError(f"a redirect is a 3xx status, not {status}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self.queue_faults([Fault(status=status, location=location, detail=f"moved to {location}")] * count)

    def queue_faults(self, faults: Iterable[Fault]) -> None:
        """Append scripted responses; each ingest request consumes one, in order."""
        new = list(faults)
        with self._lock:
            self._faults.extend(new)

    def unauthorized_for(self, seconds: float | None) -> None:
        """Answer 401 to every ingest request for ``seconds`` (None: until
        ``clear_faults()``), even with the right token -- a revoked/rotated key."""
        with self._lock:
            self._unauthorized_until = math.inf if seconds is None else time.monotonic() + seconds

    def reject_ids(self, ids: Collection[str]) -> None:
        """Treat events with these ids as invalid (400, whole request rejected)
        until replaced or cleared; models poison events."""
        with self._lock:
            self._rejected_ids = frozenset(ids)

    def clear_faults(self) -> None:
        """Drop queued faults, the 401 window and the rejected ids.  Does not
        resume a paused listener (use ``resume_listening``)."""
        with self._lock:
            self._faults.clear()
            self._unauthorized_until = None
            self._rejected_ids = frozenset()

    # ------------------------------------------------------------------ request handling

    @web.middleware
    async def _problem_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # aiohttp's router answers unknown paths/methods with text/plain; the API
        # speaks problem+json, and the request log should show these too.
        try:
            return await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            if not request.path.startswith("/_control/"):
                self._log(request.path, exc.status, 0)
            detail = f"{request.method} {request.path}: {exc.reason}"
            return _problem(exc.status, detail, headers=headers)

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it exceeds ``max_body_bytes``.

        Read in chunks so an oversized body is refused without buffering it;
        aiohttp drains the unread remainder after we answer.
        """
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(64 * 1024):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle_ingest(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await self._read_body(request)
        media_type, ct_error = _parse_content_type(request.headers.get("Content-Type"))
        parsed = None
        if media_type is not None and body is not None:
            parsed = _decode_body(media_type, body)
        # Counted up front so even a faulted or refused request shows how many
        # events the client tried to send.
        n_events = len(parsed.events) if parsed is not None and parsed.events is not None else 0

        with self._lock:
            fault = self._faults.popleft() if self._faults else None

        if fault is not None and fault.delay > 0:
            # Not cancelled when the client hangs up (aiohttp's default), so a
            # stall that outlives the client's timeout still completes below.
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.status is not None and not fault.commit:
            if fault.body_bytes is not None:
                self._log(path, fault.status, n_events)
                return await self._stream_error(request, fault)
            return self._respond(path, n_events, self._fault_response(fault, request))

        response = self._check_and_record(request, path, body, ct_error, parsed)
        if fault is not None and fault.commit and response.status == INGEST_PATHS[path]:
            response = self._fault_response(fault, request)  # recorded, but the ack is "lost"
        return self._respond(path, n_events, response)

    def _check_and_record(
        self,
        request: web.Request,
        path: str,
        body: bytes | None,
        ct_error: str | None,
        parsed: _Parsed | None,
    ) -> web.Response:
        """Apply the contract in the order a real server would and record on success."""
        with self._lock:
            until = self._unauthorized_until
            locked_out = until is not None and time.monotonic() < until
            rejected_ids = self._rejected_ids
        if locked_out:
            return _unauthorized("API token revoked (injected fault)")
        if self.token is not None:
            scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or credential.strip() != self.token:
                return _unauthorized("missing or invalid bearer token")
        if ct_error is not None:
            return _problem(415, ct_error)
        if body is None:
            return _problem(413, f"request body exceeds {self.max_body_bytes} bytes")
        assert parsed is not None  # body and media type are both known here
        if parsed.events is None:
            return _problem(400, parsed.error or "bad request")
        events = parsed.events

        invalid = [item for i, ev in enumerate(events) for item in validate_event(i, ev)]
        if invalid:
            return _problem(400, _summarise(invalid), invalid=invalid)
        if rejected_ids:
            poisoned = [
                InvalidField(i, ev["id"], "id", "event rejected (injected fault)")
                for i, ev in enumerate(events)
                if ev["id"] in rejected_ids
            ]
            if poisoned:
                return _problem(400, _summarise(poisoned), invalid=poisoned)

        self._record(path, events)
        return web.Response(status=INGEST_PATHS[path])

    def _record(self, path: str, events: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._changed:
            request_no = len(self._requests) + 1  # this request is logged right after
            for ev in events:
                self._arrivals.append(Arrival(ev, now, path, request_no))
                self._counts[(ev["source"], ev["id"])] += 1
            self._changed.notify_all()
        if self._record_file is not None:
            # One line per event, flushed per request: a reader of the file in
            # another process sees whole requests or nothing newer.
            lines = (json.dumps(ev, separators=(",", ":")) + "\n" for ev in events)
            self._record_file.write("".join(lines))
            self._record_file.flush()

    def _fault_headers(self, fault: Fault) -> dict[str, str]:
        headers = dict(fault.headers)
        retry_after = fault.retry_after_header()
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if fault.location is not None:
            headers["Location"] = fault.location
        if fault.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return headers

    def _fault_response(self, fault: Fault, request: web.Request) -> web.Response:
        assert fault.status is not None
        detail = fault.detail or "injected fault"
        if fault.echo_authorization:
            detail += f" (you sent Authorization: {request.headers.get('Authorization', '<none>')})"
        return _problem(fault.status, detail, headers=self._fault_headers(fault))

    async def _stream_error(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        """An error body of ``fault.body_bytes`` bytes, written chunk by chunk with
        back-pressure, counting what the client let us write."""
        assert fault.status is not None and fault.body_bytes is not None
        total = fault.body_bytes
        response = web.StreamResponse(status=fault.status, headers=self._fault_headers(fault))
        response.content_type = "text/plain"
        response.content_length = total
        chunk = b"x" * (64 * 1024)
        written = 0
        try:
            await response.prepare(request)
            while written < total:
                part = chunk[: min(len(chunk), total - written)]
                await response.write(part)
                written += len(part)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client closed the connection without reading the rest
        finally:
            with self._changed:
                self._streamed_error_bytes.append(written)
                self._changed.notify_all()
        return response

    async def _handle_sink(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._changed:
            self._sink_hits.append((request.method, request.path, len(body)))
            self._changed.notify_all()
        return web.Response(status=200, text="ok")

    def _respond(self, path: str, n_events: int, response: web.Response) -> web.Response:
        self._log(path, response.status, n_events)
        return response

    def _log(self, path: str, status: int, n_events: int) -> None:
        with self._changed:
            self._requests.append(RequestRecord(path, status, n_events))
            self._changed.notify_all()

    # ------------------------------------------------------------------ control API

    async def _handle_control_faults(self, request: web.Request) -> web.Response:
        """``POST /_control/faults`` with one action object or a list of them::

        {"action": "fail_next", "status": 503, "count": 2, "retry_after": 1}
        {"action": "fail_next", "status": 429, "retry_after": 2, "retry_after_date": true}
        {"action": "stall_next", "seconds": 5, "count": 1, "then_status": null}
        {"action": "redirect_next", "status": 307, "location": "http://...", "count": 1}
        {"action": "unauthorized_for", "seconds": 2.0}        # null: until cleared
        {"action": "reject_ids", "ids": ["id-7"]}
        {"action": "queue_faults", "faults": [{"status": 500}, {"delay": 1.0}]}
        {"action": "pause_listening", "seconds": 1.0}         # also closes this port
        {"action": "clear"} / {"action": "reset"}
        """
        try:
            doc = await request.json()
            actions = doc if isinstance(doc, list) else [doc]
            for action in actions:
                if not isinstance(action, dict):
                    raise ValueError("each action must be a JSON object")
                self._apply_control_action(dict(action))
        except (ValueError, TypeError, KeyError) as exc:
            return _problem(400, f"bad control request: {exc}")
        return web.json_response(self._state(), status=200)

    def _apply_control_action(self, action: dict[str, Any]) -> None:
        name = action.pop("action")
        if name == "fail_next":
            self.fail_next(**action)
        elif name == "stall_next":
            self.stall_next(**action)
        elif name == "redirect_next":
            self.redirect_next(**action)
        elif name == "unauthorized_for":
            self.unauthorized_for(action.get("seconds"))
        elif name == "reject_ids":
            self.reject_ids(list(action["ids"]))
        elif name == "queue_faults":
            self.queue_faults(Fault.from_json(f) for f in action["faults"])
        elif name == "pause_listening":
            seconds = action.get("seconds")
            # Deferred so this control response is written before the port closes.
            asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(self._pause_on_loop(seconds)))
        elif name == "clear":
            self.clear_faults()
        elif name == "reset":
            self.reset()
        else:
            raise ValueError(f"unknown action {name!r}")

    async def _handle_control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self._state())

    async def _handle_control_state(self, request: web.Request) -> web.Response:
        return web.json_response(self._state())

    def _state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "port": self._port,
                "arrivals": len(self._arrivals),
                "ids": sorted([s, i] for (s, i) in self._counts),
                "duplicates": sorted([s, i, n] for (s, i), n in self._counts.items() if n > 1),
                "requests": [list(r) for r in self._requests],
                "pending_faults": len(self._faults),
            }


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


# --------------------------------------------------------------------------- subprocess mode


def _write_port_file(path: Path, port: int) -> None:
    # Write-then-rename so a test polling for the file never reads it half written.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenMeter(
        args.token,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        record_path=args.record,
    )
    await fake.start()
    if args.port_file is not None:
        _write_port_file(Path(args.port_file), fake.port)
    print(f"fake-openmeter listening on {fake.url}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenMeter ingest server (127.0.0.1 only).")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    parser.add_argument("--record", default=None, help="append accepted events to this JSONL file")
    parser.add_argument("--port-file", default=None, help="write the bound port to this file")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
