"""Base classes of every component, their lifecycle, and shared config models.

The service drives the lifecycle; plugins override the underscored hooks::

    start()     -> _start()      idempotent; a failure leaves the component stopped
    shutdown(t) -> _shutdown()   idempotent; bounded by ``t`` seconds (drain)

The hand-off contract (DESIGN.md section 3): a receiver calls
``await self.emit(events)``; the call returns only when every exporter queue
that the events go to has committed them.  Only then may the receiver
acknowledge its client or advance a watermark.  ``emit`` raises
:class:`~collector.errors.PermanentError` when processors or validation
reject records (answer 400), and :class:`~collector.errors.BackpressureError`
when a queue refuses data (answer 503 / ``RESOURCE_EXHAUSTED``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from collector.clock import Clock, SystemClock

if TYPE_CHECKING:
    from collector.plugins import Registry
    from collector.telemetry import Telemetry

Event = dict[str, Any]
Meta = Mapping[str, Any]


class Consumer(Protocol):
    """Where a receiver sends its batches (the pipeline fan-out)."""

    async def consume(self, events: list[Event], meta: Meta | None = None) -> None: ...


@dataclass
class ComponentContext:
    """What the service hands to a component factory."""

    id: str  # "type" or "type/name", as written in the configuration
    kind: str
    storage_dir: Path  # private to this component; created on demand
    telemetry: Telemetry
    registry: Registry | None = None
    clock: Clock = field(default_factory=SystemClock)
    coordinator: Any = None  # the service's Coordinator; None means local (always leader)

    @property
    def type(self) -> str:
        return self.id.split("/", 1)[0]

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

    async def emit(self, events: list[Event], meta: Meta | None = None) -> None:
        """Hand ``events`` to the pipelines; returns once they are committed."""
        meta = {"receiver": self.id, **(meta or {})}
        await self.next.consume(events, meta)


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
        await self._forward(events, {"processor": self.id, **(meta or {})})

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

    async def export(self, events: list[Event]) -> None:
        raise NotImplementedError


class Coordinator(Component[ConfigT]):
    """Decides whether this replica leads the pull receivers."""

    kind = "coordinator"

    def is_leader(self) -> bool:
        return True


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
    max_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Refuse new data (backpressure) above this many queued bytes."
    )
    max_age: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="Seconds an event may wait undelivered before it is dead-lettered.",
    )
    commit_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long a commit waits to gather concurrent producers."
    )
    commit_max_events: int = Field(1000, gt=0, description="Most events per commit (group commit).")
    min_free_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Refuse new data (backpressure) while less than this is free on the queue's disk, so that "
        "draining still has room to write; 0 refuses only on a real disk-full error.",
    )


class BatchSettings(_Strict):
    """How the sender groups queued events into requests."""

    max_events: int = Field(100, gt=0, description="Most events per request.")
    max_bytes: int = Field(1024 * 1024, gt=0, description="Most serialised bytes per request.")
    period: float = Field(1.0, ge=0, description="Seconds to wait for a batch to fill before sending what there is.")


class RetrySettings(_Strict):
    """Full-jitter exponential backoff for retryable failures."""

    initial_interval: float = Field(1.0, gt=0, description="Backoff base, seconds.")
    max_interval: float = Field(60.0, gt=0, description="Backoff cap, seconds.")
    auth_interval: float = Field(
        30.0, gt=0, description="Seconds between retries while the far side refuses our credentials."
    )


class ExporterConfig(_Strict):
    """Settings every exporter inherits: queue, batching, retry, concurrency, timeout."""

    queue: QueueSettings = Field(default_factory=QueueSettings, description="The exporter's queue.")
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Request batching.")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Retry backoff.")
    max_in_flight: int = Field(4, gt=0, le=256, description="Concurrent requests.")
    timeout: float = Field(10.0, gt=0, description="Seconds before a request is abandoned and retried.")
