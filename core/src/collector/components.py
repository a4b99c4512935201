"""Base classes of every component, their lifecycle, and shared config models.

The service drives the lifecycle; plugins override the underscored hooks::

    start()     -> _start()      idempotent; a failure leaves the component stopped
    shutdown(t) -> _shutdown()   idempotent; bounded by ``t`` seconds (drain)

The hand-off contract (docs/delivery.md): a receiver calls
``await self.emit(events)``; the call returns only when every exporter queue
that the events go to has committed them.  Only then may the receiver
acknowledge its client or advance a watermark.  ``emit`` raises
:class:`~collector.errors.PermanentError` when processors or validation
reject records (answer 400), and :class:`~collector.errors.BackpressureError`
when a queue refuses data (answer 503 / ``RESOURCE_EXHAUSTED``).  A receiver
whose protocol lets it accept part of a request (OTLP ``partial_success``)
calls ``emit(events, partial=True)`` instead and gets an :class:`Acceptance`
back (docs/plugin-authors.md, "Event rules and partial acceptance").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from collector.clock import Clock, SystemClock
from collector.durations import ByteSize, Duration
from collector.errors import RecordError
from collector.events import CLOUDEVENTS, EventRules
from collector.specs import ComponentID

if TYPE_CHECKING:
    from collector.metrics import Meter
    from collector.telemetry import Telemetry

Event = dict[str, Any]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_MISSING = object()


class TimeWindow(Protocol):
    """The window a pull receiver's records cover (:class:`collector.pull.Window` is one)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def seconds(self) -> float: ...
    @property
    def start_time(self) -> str: ...
    @property
    def end_time(self) -> str: ...


# What ``meta.<name>`` reads from a window, as documented for pull receivers.
_WINDOW_NAMES = {
    "window_start": "start_time",
    "window_end": "end_time",
    "interval_seconds": "seconds",
    "window_start_unix": "start",
    "window_end_unix": "end",
}
_FIELDS = frozenset({"receiver", "pipeline", "processor", "headers", "window"})


@dataclass(frozen=True)
class Meta:
    """What the pipeline knows about a batch besides its events.

    Typed, so that receivers, processors and plugins agree on what is there.
    Mapping expressions read it as ``meta.<name>`` (docs/processors/mapping.md):
    ``receiver``, ``pipeline``, ``processor`` (set when a processor forwards
    on its own schedule, e.g. a window closing), ``headers`` (the HTTP headers
    a receiver passes on), a pull receiver's window as ``window_start``,
    ``window_end``, ``interval_seconds``, ``window_start_unix`` and
    ``window_end_unix``, and any key of ``extra`` (a plugin's own data, such as
    the OTLP receiver's ``signal``).  A name that is none of these reads as None.

    ``satisfies``: event rules the receiver already checked these events
    against, so a pipeline without processors does not check them again
    (docs/plugin-authors.md, "Event rules and partial acceptance").
    """

    receiver: str | None = None
    pipeline: str | None = None
    processor: str | None = None
    window: TimeWindow | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    satisfies: frozenset[EventRules] = frozenset()

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Meta:
        """Metadata from plain JSON (``collector map --meta``): known names become fields, the rest ``extra``."""
        known = {k: values[k] for k in ("receiver", "pipeline", "processor", "headers") if k in values}
        extra = {k: v for k, v in values.items() if k not in known}
        return cls(**known, extra=extra)

    def lookup(self, name: str, default: Any = None) -> Any:
        """What the expression ``meta.<name>`` reads; ``default`` when there is no such name."""
        if name in _FIELDS:
            return getattr(self, name)
        window = self.window
        if window is not None and name in _WINDOW_NAMES:
            return getattr(window, _WINDOW_NAMES[name])
        return self.extra.get(name, default)

    def get(self, name: str, default: Any = None) -> Any:
        """``meta.get("x")``, as code written against the old mapping reads it."""
        return self.lookup(name, default)

    def __getitem__(self, name: str) -> Any:
        value = self.lookup(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value


@dataclass(frozen=True)
class Acceptance:
    """How an ``emit`` that returned ended: how many records were committed and which were refused.

    ``accepted`` counts the records of the emitted batch that were committed
    (a record a processor dropped on purpose counts: it was handled).
    ``rejected`` says why each refused record was refused, with its index in
    the emitted batch (several errors may name one record); it is empty unless
    the receiver asked for ``partial=True``.
    """

    accepted: int
    rejected: tuple[RecordError, ...] = ()

    @property
    def rejected_indexes(self) -> frozenset[int]:
        return frozenset(e.index for e in self.rejected)


class DeadLetterSink(Protocol):
    """Where a component sets aside what it can never deliver (``ctx.dead_letters``).

    ``add`` blocks (SQLite): call it in a thread.  Entries are listed with
    ``collector dlq list --receiver ID`` (docs/dead-letters.md).  A receiver
    uses it for input it read but cannot turn into events (a malformed line of
    a file), so the rest of its input is delivered and nothing is lost silently.
    """

    def add(self, events: Iterable[dict[str, Any]], reason: str) -> int: ...


class Consumer(Protocol):
    """Where a receiver sends its batches (the pipeline fan-out)."""

    async def consume(self, events: list[Event], meta: Meta | None = None, *, partial: bool = False) -> Acceptance: ...


@dataclass
class ComponentContext:
    """What the service hands to a component factory.

    Everything a component needs from the core comes through here, so a
    plugin never reaches for the runtime: its id, a private storage
    directory, the mapping functions that plugins registered, the metrics API,
    the clock that decides time, and the coordinator that decides leadership.
    """

    id: str  # "type" or "type/name", as written in the configuration
    kind: str
    storage_dir: Path  # private to this component; created on demand
    telemetry: Telemetry
    # Mapping functions by name (the curated set plus every plugin's), for
    # compile_expression; None means the curated set only.
    functions: Mapping[str, Callable[..., Any]] | None = None
    clock: Clock = field(default_factory=SystemClock)
    coordinator: Any = None  # the service's Coordinator; None means local (always leader)
    # The component's own dead-letter store (opened on first use); None where the host keeps none.
    dead_letters: DeadLetterSink | None = None
    # True in a worker process (service.workers > 1): the workers share each listening port, so a push
    # receiver listens with SO_REUSEPORT (``start_http_server(..., reuse_port=ctx.shared_listeners)``).
    shared_listeners: bool = False

    @property
    def component_id(self) -> ComponentID:
        return ComponentID.parse(self.id)

    @property
    def type(self) -> str:
        return self.component_id.type

    @property
    def metrics(self) -> Meter:
        """Get-or-create counters, gauges and histograms under ``collector_`` (see :mod:`collector.metrics`)."""
        return self.telemetry.meter

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        return logging.LoggerAdapter(logging.getLogger(f"collector.{self.kind}"), {"component": self.id})


ConfigT = TypeVar("ConfigT", bound=BaseModel)

State = Literal["new", "starting", "running", "stopping", "stopped", "failed"]


class Component(Generic[ConfigT]):
    """Lifecycle and health shared by receivers, processors and exporters."""

    kind: str = "component"

    def __init__(self, ctx: ComponentContext, config: ConfigT) -> None:
        self.ctx = ctx
        self.config = config
        self.state: State = "new"
        self.last_error: str | None = None
        self.log = ctx.logger

    @property
    def id(self) -> str:
        return self.ctx.id

    async def start(self) -> None:
        if self.state in ("starting", "running"):
            return
        self.state = "starting"
        try:
            await self._start()
        except BaseException as exc:
            self.state = "failed"
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self.state = "running"

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop, draining in-flight work for at most ``timeout`` seconds."""
        if self.state in ("new", "stopping", "stopped"):
            self.state = "stopped"
            return
        self.state = "stopping"
        try:
            await asyncio.wait_for(self._shutdown(), timeout)
        except TimeoutError:
            self.log.warning("shutdown did not finish within %.1fs; giving up on the drain", timeout)
        finally:
            self.state = "stopped"

    async def _start(self) -> None:
        """Acquire resources (bind sockets, open clients).  Override."""

    async def _shutdown(self) -> None:
        """Release resources, finishing in-flight work.  Override."""

    def health(self) -> dict[str, Any]:
        """Detail for ``/health``; ``ready`` False makes ``/ready`` fail."""
        out: dict[str, Any] = {"state": self.state, "ready": self.state == "running"}
        if self.last_error:
            out["last_error"] = self.last_error
        return out


class Receiver(Component[ConfigT]):
    """Brings data in and hands it to its pipelines with :meth:`emit`."""

    kind = "receiver"
    next: Consumer

    def bind(self, consumer: Consumer) -> None:
        """Called by the service before :meth:`start`."""
        self.next = consumer

    async def emit(self, events: list[Event], meta: Meta | None = None, *, partial: bool = False) -> Acceptance:
        """Hand ``events`` to the pipelines; returns once they are committed.

        All or nothing by default: a refused record raises
        :class:`~collector.errors.PermanentError` naming it, and nothing is
        committed.  With ``partial=True`` the records that every pipeline
        accepts are committed (once) and the refused ones come back in
        :attr:`Acceptance.rejected`; errors other than refusals of records
        (backpressure, a failed commit) still raise.
        """
        if meta is None:
            meta = Meta(receiver=self.id)
        elif meta.receiver is None:
            meta = replace(meta, receiver=self.id)
        return await self.next.consume(events, meta, partial=partial)


# Told how the call that carried a batch ended: True once every target queue
# committed it (and every later processor's hook succeeded), False otherwise.
OutcomeHook = Callable[[bool], Awaitable[None]]


@dataclass
class Batch:
    """Events on their way through a pipeline, with where each came from.

    ``origins[i]`` is the index, in the batch the receiver emitted, of the
    record that ``events[i]`` came from (None when unknown, e.g. after an
    aggregation), so that an error found by a later processor or by the final
    validation names the record the client sent.

    ``on_outcome``: a processor that must record state only for data that was
    committed (dedupe keys, aggregation input) appends a hook to the batch it
    returns.  The pipeline awaits every hook once the call's fate is known,
    before the receiver is answered: ``hook(True)`` after the commit, latest
    processor first (a hook that raises fails the call, and the hooks still to
    run are told False); ``hook(False)`` when the call failed anywhere.
    """

    events: list[Event]
    origins: list[int | None]
    on_outcome: list[OutcomeHook] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, events: list[Event]) -> Batch:
        return cls(events, list(range(len(events))))

    def origin(self, index: int) -> int:
        """The receiver-side index for an index into ``events`` (itself when unknown)."""
        if 0 <= index < len(self.origins):
            found = self.origins[index]
            return index if found is None else found
        return index


class Processor(Component[ConfigT]):
    """Transforms a batch before it is queued (so the queue holds what is sent).

    Simple processors override :meth:`process`.  Processors that drop or
    reorder records override :meth:`process_batch` to keep ``origins`` right.
    """

    kind = "processor"
    _forward: Callable[[list[Event], Meta], Awaitable[None]] | None = None

    def bind_forward(self, forward: Callable[[list[Event], Meta], Awaitable[None]]) -> None:
        """Called by the pipeline: where :meth:`forward` sends events."""
        self._forward = forward

    async def forward(self, events: list[Event], meta: Meta | None = None) -> None:
        """Send events down the rest of the pipeline outside a receiver's call
        (e.g. when a window closes); returns once they are committed."""
        if self._forward is None:
            raise RuntimeError(f"processor {self.id} is not part of a running pipeline")
        if meta is None:
            meta = Meta(processor=self.id)
        elif meta.processor is None:
            meta = replace(meta, processor=self.id)
        await self._forward(events, meta)

    async def process(self, events: list[Event], meta: Meta) -> list[Event]:
        """Return the events to pass on.

        Raise :class:`~collector.errors.PermanentError` with ``records`` (indexes
        into ``events``) to reject the batch; the client is told which records.
        """
        raise NotImplementedError

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        out = await self.process(batch.events, meta)
        if len(out) == len(batch.events):
            return Batch(out, batch.origins)
        return Batch(out, [None] * len(out))


class Exporter(Component[ConfigT]):
    """Delivers batches.  Runs on its sender's own thread and event loop.

    ``export`` raises :class:`~collector.errors.RetryableError` (try again),
    :class:`~collector.errors.PermanentError` (this data is refused; the sender
    splits the batch to isolate it), or :class:`~collector.errors.AuthError`
    (pause and retry slowly).  Returning means delivered.
    """

    kind = "exporter"
    # The event rules this exporter's destination needs: the pipeline checks
    # its output against them before the queue takes it, so bad data is
    # refused at the edge with the client's record index.  Default: the
    # CloudEvents basics; the OpenMeter exporter requires OpenMeter's rules
    # (docs/plugin-authors.md, "Event rules and partial acceptance").
    requires: tuple[EventRules, ...] = (CLOUDEVENTS,)

    async def export(self, events: list[Event]) -> None:
        raise NotImplementedError


class Coordinator(Component[ConfigT]):
    """Decides whether this replica leads the pull receivers, and hands their watermarks over.

    The contract (docs/plugin-authors.md, "Coordinators"):

    * ``is_leader()`` is cheap and synchronous; pull receivers ask it before
      every window and again before committing one.  It must turn False
      *before* another replica can become leader (fencing): a Lease-based
      coordinator stops claiming leadership when its renew deadline passes,
      which is shorter than the lease duration another replica waits out.
    * ``load_watermark`` / ``save_watermark`` share each pull receiver's
      watermark between replicas, so a new leader continues where the old one
      stopped.  The default shares nothing (None: use the local state store).
      The receiver also keeps its own copy and takes the later of the two, so
      a failed save can only make a window be collected again (same ids,
      de-duplicated downstream), never skipped.
    """

    kind = "coordinator"

    def is_leader(self) -> bool:
        return True

    async def load_watermark(self, receiver_id: str) -> float | None:
        """The watermark the replicas share for ``receiver_id``; None when there is none."""
        return None

    async def save_watermark(self, receiver_id: str, end: float) -> None:
        """Share ``receiver_id``'s new watermark; raise when it could not be stored."""
        return None


# -- shared exporter settings (the exporterhelper of this project) -------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QueueSettings(_Strict):
    """The exporter's durable queue (one per exporter)."""

    kind: Literal["durable", "memory"] = Field(
        "durable",
        description="durable: SQLite on disk under storage.directory (acknowledged only after "
        "the commit); memory: lost on exit, for tests and demos.",
    )
    durability: Literal["full", "relaxed"] = Field(
        "full",
        description="full: fsync every commit (synchronous=FULL). relaxed: synchronous=NORMAL; "
        "faster, but a power loss can lose the last commits. An explicit opt-in.",
    )
    max_bytes: ByteSize = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Refuse new data (backpressure) above this many queued bytes: a size (512MiB, 1GiB) or bytes.",
    )
    max_age: Duration = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="How long an event may wait undelivered before it is dead-lettered: a duration (7d, 12h) "
        "or seconds.",
    )
    commit_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Milliseconds a commit waits to gather concurrent producers."
    )
    commit_max_events: int = Field(1000, gt=0, description="Most events per commit (group commit).")
    min_free_bytes: ByteSize = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Refuse new data (backpressure) while less than this is free on the queue's disk, so that "
        "draining still has room to write: a size (64MiB) or bytes; 0 refuses only on a real disk-full error.",
    )


class BatchSettings(_Strict):
    """How the sender groups queued events into requests."""

    max_events: int = Field(100, gt=0, description="Most events per request.")
    max_bytes: ByteSize = Field(1024 * 1024, gt=0, description="Most serialised bytes per request (1MiB, 512KiB).")
    period: Duration = Field(
        1.0, ge=0, description="How long to wait for a batch to fill before sending what there is (1s, 200ms)."
    )


class RetrySettings(_Strict):
    """Full-jitter exponential backoff for retryable failures."""

    initial_interval: Duration = Field(1.0, gt=0, description="Backoff base (1s, 500ms).")
    max_interval: Duration = Field(60.0, gt=0, description="Backoff cap (1m, 60s).")
    auth_interval: Duration = Field(
        30.0, gt=0, description="Time between retries while the far side refuses our credentials (30s)."
    )


class ExporterConfig(_Strict):
    """Settings every exporter inherits: queue, batching, retry, concurrency, timeout."""

    queue: QueueSettings = Field(default_factory=QueueSettings, description="The exporter's queue.")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Request batching.")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retry backoff.")
    max_in_flight: int = Field(4, gt=0, le=256, description="Concurrent requests.")
    timeout: Duration = Field(10.0, gt=0, description="How long before a request is abandoned and retried (10s).")
