"""List, then watch: a cache feed that knows up to when it is complete.

The ``kubernetes`` receiver bills exactly what ran in each window, so it must
never commit a window whose pod changes it has not seen yet
(docs/components/kubernetes-receiver.md, "How it works" and "Errors").  An
:class:`Informer` lists a resource once (paged), hands the full state to
``on_replace``, then watches from the list's resourceVersion with bookmarks and
hands every change to ``on_event``.  It tracks the resourceVersion itself (from
every event's object and from BOOKMARKs), so:

* a watch that ends normally (its ``timeoutSeconds``) or whose connection
  breaks resumes from the last resourceVersion -- no relist, nothing missed;
* only a 410 Gone (the server no longer has our resourceVersion) relists;
* any other failure (unreachable, 401, 403 missing RBAC, 5xx) is logged once
  per distinct problem, kept in :attr:`Informer.error`, and retried with
  exponential backoff and full jitter -- never fatal, since someone may fix
  the credentials or the RBAC while the collector runs.

:meth:`Informer.complete_through` is the wall time up to which the cache holds
every change: "now" while a watch stream is open and caught up (it delivered a
bookmark, or ran :data:`SETTLE` seconds without an error -- a 410 and the replay
of missed events both come right after the headers), else the time of the last
thing received from the server -- the list (its start time: the snapshot is at
least that new), an event or bookmark of a caught-up stream, or a clean end of
stream.  It is None before the first list.  It assumes events reach us faster
than the receiver's grace period, and it may step back when a stream breaks (a
change in flight when a connection dies is only known once the watch resumes).

The official client blocks, so all of this runs on one daemon thread, and the
callbacks run there too: they must be cheap and lock their own state.  Items
and objects are the server's raw JSON (``_preload_content=False`` +
:func:`json.loads`), far cheaper than the client's models.  List items carry
no ``kind``/``apiVersion`` (the server leaves them out); watch objects do.

The watch stream is read with the client's own line splitter rather than
``kubernetes.watch.Watch``: with ``deserialize=False`` its ERROR handling
looks up a ``raw_object`` key that only deserialised events have, so a 410
would surface as a ``KeyError`` instead of an expired watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import threading
import time as _time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from urllib3.exceptions import HTTPError

from collector_plugin_kubernetes.client import describe, status_of

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# resource -> (CoreV1Api list function over all namespaces / the cluster, namespaced one or None)
_LISTERS: dict[str, tuple[str, str | None]] = {
    "pods": ("list_pod_for_all_namespaces", "list_namespaced_pod"),
    "nodes": ("list_node", None),
    "persistentvolumes": ("list_persistent_volume", None),
    "persistentvolumeclaims": (
        "list_persistent_volume_claim_for_all_namespaces",
        "list_namespaced_persistent_volume_claim",
    ),
}
RESOURCES = tuple(_LISTERS)

_GONE = 410
# How long a freshly opened watch must run before the cache counts as complete through "now" (unless a
# bookmark came first): a too-old resourceVersion is answered by an ERROR right after the headers, and the
# replay of missed events follows them at once, so neither is mistaken for being up to date.
SETTLE = 1.0
# Object addresses in transport errors ("<HTTPConnection object at 0x7f..>") differ on every retry; they
# must not make the same problem look new to the log-once rule.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

Replace = Callable[[Iterable[dict[str, Any]], float], None]
Event = Callable[[str, dict[str, Any], float], None]


class _Gone(Exception):
    """The server no longer has our resourceVersion (410): relist."""


class _Broken(Exception):
    """The connection of an open watch stream failed; ``received``: whether it delivered anything first."""

    def __init__(self, cause: BaseException, received: bool) -> None:
        super().__init__(f"{type(cause).__name__}: {_ADDRESS.sub('', str(cause))}")
        self.received = received


class _PageError(Exception):
    """A list request failed while ``on_replace`` was consuming the pages; carries the real error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Stopped(Exception):
    """stop() was called in the middle of a paged list."""


class _CallbackError(Exception):
    """on_replace or on_event raised."""


class _WatchError(Exception):
    """An ERROR event other than 410 on a watch stream, shaped for :func:`describe` like an ApiException."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = int(status.get("code") or 500)
        self.reason = status.get("reason")
        self.body = json.dumps(status)
        super().__init__(f"{self.status} {self.reason}: {status.get('message', '')}")


class Informer:
    """List+watch of one resource kind on a daemon thread; see the module docstring.

    ``watch_timeout`` is the server-side ``timeoutSeconds`` of one watch request; ``read_timeout`` the longest
    silence tolerated on an open stream (it must exceed the server's bookmark period, about a minute for
    kube-apiserver): after it the stream is treated as broken and resumed.  ``request_timeout`` bounds a
    list request and the connection of a watch.
    """

    def __init__(
        self,
        api_client: ApiClient,
        resource: str,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_replace: Replace,
        on_event: Event,
        watch_timeout: float = 300.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        page_size: int = 500,
        time: Callable[[], float] = _time.time,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        name: str = "",
        read_timeout: float = 90.0,
        request_timeout: float = 30.0,
    ) -> None:
        if resource not in _LISTERS:
            raise ValueError(f"unknown resource {resource!r}; expected one of {', '.join(RESOURCES)}")
        every, namespaced = _LISTERS[resource]
        if namespace is not None and namespaced is None:
            raise ValueError(f"{resource} are cluster-scoped: no namespace")
        from kubernetes.client import CoreV1Api

        api = CoreV1Api(api_client)
        self._list_fn: Callable[..., Any] = getattr(api, namespaced if namespace is not None else every)  # type: ignore[arg-type]
        self._args: tuple[str, ...] = (namespace,) if namespace is not None else ()
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._server = str(getattr(api_client.configuration, "host", "") or "") or None
        scope = (
            f"in namespace {namespace}"
            if namespace is not None
            else ("" if namespaced is None else "in all namespaces")
        )
        self._target = f"{resource} {scope}".strip()

        self.resource = resource
        self.namespace = namespace
        self.name = name or resource
        self._on_replace = on_replace
        self._on_event = on_event
        self._watch_timeout = max(1, round(watch_timeout))  # the API's timeoutSeconds is an integer
        self._read_timeout = read_timeout
        self._request_timeout = request_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = max(backoff_max, backoff_initial)
        self._page_size = page_size
        self._time = time
        self._log = log if log is not None else logging.getLogger(__name__)

        self.relists = 0  # lists after the first one (each caused by a 410 Gone)
        self.watch_restarts = 0  # watch requests resumed from a resourceVersion (not right after a list)
        self.events = 0  # ADDED/MODIFIED/DELETED delivered to on_event

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None  # the open watch response, to cut it on stop()
        self._rv: str | None = None
        self._listed = False
        self._open_at: float | None = None  # time.monotonic() when the open watch stream began
        self._caught_up = False  # the open stream delivered a bookmark
        self._last_seen = 0.0
        self._error: str | None = None
        self._logged: str | None = None  # the problem last logged, to log each one once

    # --- the caller's side ---------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"informer {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop promptly: cut the open watch's socket (the thread is blocked reading it) and join."""
        self._stopping.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)
        if self._thread is not None:
            self._thread.join(timeout)

    def complete_through(self) -> float | None:
        with self._lock:
            if not self._listed:
                return None
            if self._open_at is not None and (self._caught_up or self._settled()):
                return self._time()
            return self._last_seen

    def _settled(self) -> bool:
        """The open stream ran SETTLE seconds (monotonic: the injected wall clock may be a test's fake)."""
        return self._open_at is not None and _time.monotonic() - self._open_at >= SETTLE

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def resource_version(self) -> str | None:
        return self._rv

    @property
    def synced(self) -> bool:
        return self._listed

    async def wait_synced(self, timeout: float) -> bool:
        """True once the first list was delivered; False after ``timeout`` seconds without it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._listed:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # consecutive failures, for the backoff
        gones = 0  # consecutive 410s without a watch that ran to its end
        need_list = True
        first_watch = True
        while not self._stopping.is_set():
            doing = f"list {self._target}" if need_list else f"watch {self._target}"
            try:
                if need_list:
                    self._list()
                    first_watch = True
                if not first_watch:
                    self.watch_restarts += 1
                need_list = False
                first_watch = False
                doing = f"watch {self._target}"
                quick = self._watch()
                failures = gones = 0
                if quick:  # the server ended the stream at once: do not spin on it
                    self._stopping.wait(self._backoff_initial)
            except _Broken as broken:
                # The connection died under an open stream (or stayed silent past read_timeout): resume from
                # the resourceVersion at once.  Not an error by itself -- the resumed watch says whether there
                # is one -- and complete_through stays at the last thing received meanwhile.
                self._log.debug("%s: %s: stream broke (%s); resuming", self.name, doing, broken)
                if not broken.received:
                    failures += 1
                    self._stopping.wait(self._backoff(failures))
            except _Gone as gone:
                self._log.debug("%s: %s (410 Gone); listing %s again", self.name, gone, self._target)
                need_list = True
                gones += 1
                if gones > 1:  # 410 again right after a relist: back off rather than spin
                    self._stopping.wait(self._backoff(gones - 1))
            except _CallbackError as exc:
                # A bug of the receiver: its state may now be inconsistent, so start it over from a list.
                if str(exc) != self._logged:
                    self._logged = str(exc)
                    self._log.error("%s: %s; listing %s again", self.name, exc, self._target, exc_info=exc.__cause__)
                self._error = str(exc)
                need_list = True
                failures += 1
                self._stopping.wait(self._backoff(failures))
            except Exception as exc:
                if self._stopping.is_set():
                    break
                failures += 1
                self._fail(exc, doing)
                self._stopping.wait(self._backoff(failures))
        with self._lock:
            self._open_at = None

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with full jitter."""
        cap = min(self._backoff_max, self._backoff_initial * 2 ** min(failures - 1, 30))
        return random.uniform(0.0, cap)

    def _fail(self, exc: BaseException, doing: str) -> None:
        message = describe(exc, doing, self._server)
        key = _ADDRESS.sub("", message)
        self._error = message
        if key != self._logged:
            self._logged = key
            self._log.warning("%s: %s; retrying with backoff", self.name, message)

    def _healthy(self) -> None:
        if self._error is not None:
            self._log.info("%s: recovered: watching %s again", self.name, self._target)
        self._error = None
        self._logged = None

    def _list(self) -> None:
        """List page by page into ``on_replace``: it consumes the items as the pages arrive, so a list of
        10,000 pods is never held whole (only one page of raw objects is alive at a time)."""
        started = self._time()
        state: dict[str, Any] = {"rv": None, "count": 0, "stopped": False}

        def pages() -> Iterator[dict[str, Any]]:
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = dict(self._selectors)
                if self._page_size > 0:
                    kwargs["limit"] = self._page_size
                if token:
                    kwargs["_continue"] = token
                try:
                    page = _read_json(
                        self._list_fn(
                            *self._args, _preload_content=False, _request_timeout=self._request_timeout, **kwargs
                        )
                    )
                except Exception as exc:
                    if status_of(exc) == _GONE:  # the continue token expired mid-list: start over
                        raise _PageError(_Gone("the list's continue token expired")) from None
                    raise _PageError(exc) from None
                meta = page.get("metadata") or {}
                if state["rv"] is None:  # every page is of the first page's snapshot
                    state["rv"] = str(meta.get("resourceVersion") or "")
                items = page.get("items") or []
                state["count"] += len(items)
                del page
                yield from items
                token = meta.get("continue") or None
                if token is None:
                    return
                if self._stopping.is_set():
                    state["stopped"] = True
                    raise _PageError(_Stopped())

        try:
            self._on_replace(pages(), started)
        except _PageError as failed:
            # The list itself failed (not the callback): what was applied so far is current state; the
            # list is done again from the start.
            if isinstance(failed.cause, _Stopped):
                return
            raise failed.cause from None
        except Exception as exc:
            raise _CallbackError(f"on_replace failed on {state['count']} {self.resource}: {exc!r}") from exc
        with self._lock:
            self._rv = state["rv"] or None
            if self._listed:
                self.relists += 1
            self._listed = True
            self._last_seen = max(self._last_seen, started)

    def _watch(self) -> bool:
        """One watch request, to its end; True when it ended cleanly at once with nothing received."""
        kwargs: dict[str, Any] = dict(self._selectors)
        if self._rv:
            kwargs["resource_version"] = self._rv
        try:
            resp = self._list_fn(
                *self._args,
                watch=True,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(self._request_timeout, self._read_timeout),
                **kwargs,
            )
        except Exception as exc:
            if status_of(exc) == _GONE:
                raise _Gone(f"resourceVersion {self._rv} is too old") from None
            raise
        opened = _time.monotonic()
        received = False
        with self._lock:
            self._resp = resp
            self._open_at = _time.monotonic()
            self._caught_up = False
        try:
            if self._stopping.is_set():
                return False
            self._healthy()
            lines = _lines(resp)
            while True:
                try:
                    line = next(lines, None)
                except (OSError, HTTPError) as exc:
                    raise _Broken(exc, received) from exc
                if line is None or self._stopping.is_set():
                    break
                if not line:
                    continue
                now = self._time()
                received = True
                self._handle(json.loads(line), now)
            if self._stopping.is_set():
                return False
            with self._lock:  # a clean end of stream: everything up to now was sent
                self._last_seen = self._time()
            return not received and _time.monotonic() - opened < min(1.0, self._watch_timeout / 2)
        finally:
            with self._lock:
                self._open_at = None
                self._resp = None
            with contextlib.suppress(Exception):
                resp.close()
            with contextlib.suppress(Exception):
                resp.release_conn()

    def _handle(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            if obj.get("code") == _GONE:
                raise _Gone(str(obj.get("message") or f"resourceVersion {self._rv} is too old"))
            raise _WatchError(obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                self._on_event(kind, obj, now)
            except Exception as exc:
                raise _CallbackError(f"on_event failed on {kind} {_name_of(obj)}: {exc!r}") from exc
            self.events += 1
        elif kind != "BOOKMARK":
            self._log.debug("%s: ignoring watch event of type %r", self.name, kind)
            return
        with self._lock:
            if rv:
                self._rv = str(rv)
            if kind == "BOOKMARK":
                self._caught_up = True
            if self._caught_up or self._settled():  # not while a replay of missed events may run
                self._last_seen = now


def _name_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return "/".join(str(part) for part in (meta.get("namespace"), meta.get("name")) if part)


def _read_json(resp: Any) -> dict[str, Any]:
    try:
        data = json.loads(resp.data)
    finally:
        with contextlib.suppress(Exception):
            resp.release_conn()
    if not isinstance(data, dict):
        raise ValueError(f"the API server answered a list with {type(data).__name__}, not an object")
    return data


def _lines(resp: Any) -> Iterator[str]:
    from kubernetes.watch.watch import iter_resp_lines

    return iter(iter_resp_lines(resp))


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading ``resp`` (what ``Watch.stop()`` does): shut its socket down."""
    conn = getattr(resp, "connection", None) or getattr(resp, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
