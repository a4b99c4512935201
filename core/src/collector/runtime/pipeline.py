"""Pipelines and the fan-out a receiver hands its batches to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.events import validate_events
from collector.components import Batch, Event, Meta, OutcomeHook, Processor
from collector.runtime.sender import ExporterRunner
from collector.errors import BackpressureError, PermanentError, RecordError
from collector.telemetry import Metrics

log = logging.getLogger("collector.runtime.pipeline")

# Receivers that validated CloudEvents themselves say so in the metadata, so
# a pipeline without processors does not validate the same events twice.
VALIDATED = "validated"


@dataclass
class Pipeline:
    """Processors applied in order, then validation, then every exporter's queue."""

    name: str
    processors: Sequence[Processor[Any]]
    exporters: Sequence[ExporterRunner]

    def __post_init__(self) -> None:
        # A processor that emits on its own schedule (aggregate closing a
        # window) continues the pipeline from the processor after it.
        for i, processor in enumerate(self.processors):
            processor.bind_forward(self._forwarder(i + 1))

    def _forwarder(self, start: int) -> Callable[[list[Event], Meta], Awaitable[None]]:
        async def forward(events: list[Event], meta: Meta) -> None:
            hooks: list[OutcomeHook] = []
            try:
                out = await self.prepare(events, meta, start=start, hooks=hooks)
                if out:
                    await commit([(runner, out) for runner in self.exporters])
            except BaseException:
                await settle(hooks, committed=False)
                raise
            await settle(hooks, committed=True)

        return forward

    async def prepare(
        self, events: list[Event], meta: Meta, *, start: int = 0, hooks: list[OutcomeHook] | None = None
    ) -> list[Event]:
        """Run the processors (from ``start``) and validate the result against OpenMeter's rules.

        Errors name the record the receiver emitted (``Batch.origins``), so a
        client posting raw JSON is told which of *its* records failed.

        The processors' outcome hooks (``Batch.on_outcome``) are appended to
        ``hooks``; the caller must :func:`settle` them once the commit succeeded
        or failed.  Without ``hooks`` nothing is committed (``collector map``):
        they are settled as not committed before returning.
        """
        if hooks is None:
            own: list[OutcomeHook] = []
            try:
                return await self.prepare(events, meta, start=start, hooks=own)
            finally:
                await settle(own, committed=False)
        if not self.processors and (not events or meta.get(VALIDATED)):
            return events  # nothing to run and nothing to check: no copies
        meta = {**meta, "pipeline": self.name}
        batch = Batch.of(events)
        for processor in self.processors[start:]:
            if not batch.events:
                break
            before = batch
            try:
                batch = await processor.process_batch(batch, meta)
            except PermanentError as exc:
                exc.records = [_remap(before, r) for r in exc.records]
                raise
            if batch.on_outcome:
                hooks.extend(batch.on_outcome)
                batch.on_outcome.clear()
        if batch.events and (self.processors or not meta.get(VALIDATED)):
            errors = validate_events(batch.events)
            if errors:
                remapped = [_remap(batch, e) for e in errors]
                first = remapped[0]
                raise PermanentError(
                    f"{len(errors)} event(s) do not satisfy OpenMeter's rules after pipeline {self.name!r}; "
                    f"record {first.index}: {first.message}",
                    records=remapped,
                )
        return batch.events


def _remap(batch: Batch, error: RecordError) -> RecordError:
    return RecordError(batch.origin(error.index), error.message, error.field)


async def settle(hooks: Sequence[OutcomeHook], *, committed: bool) -> None:
    """Tell the processors how the call ended (see ``Batch.on_outcome``), latest first.

    After a commit, a hook that raises fails the call: the hooks still to run
    are told False and the error goes to the receiver (its client retries).
    """
    error: BaseException | None = None
    for hook in reversed(hooks):
        try:
            await hook(committed and error is None)
        except Exception as exc:
            if committed and error is None:
                error = exc
            else:
                log.exception("an outcome hook failed after the call had already failed")
    if error is not None:
        raise error


async def commit(targets: Sequence[tuple[ExporterRunner, list[Event]]]) -> None:
    """Commit to every target queue: room is checked everywhere before anything is written."""
    for runner, _ in targets:
        runner.check_capacity()
    if len(targets) == 1:  # the common case: no gather, so no Task per request
        await targets[0][0].enqueue(targets[0][1])
    elif targets:
        await asyncio.gather(*(runner.enqueue(out) for runner, out in targets))


class ReceiverFanout:
    """The Consumer a receiver sees: every pipeline it feeds, all or nothing.

    All processors of all pipelines run first, so a rejected record refuses
    the whole batch before anything is committed; then every target queue is
    checked for room; then the commits run concurrently.  If one queue commits
    and another fails at that last step, the client is told to retry and the
    first queue holds the batch twice: with deterministic ids the destination
    deduplicates (at-least-once, DESIGN.md section 6).  Then the processors'
    outcome hooks run (dedupe records its keys, aggregate absorbs its input),
    and only then does the receiver acknowledge.
    """

    def __init__(self, receiver_id: str, pipelines: Sequence[Pipeline], metrics: Metrics) -> None:
        self.receiver_id = receiver_id
        self.pipelines = list(pipelines)
        self.metrics = metrics
        # labels() costs ~1.5 us per call: resolve the children once.
        self._received = metrics.received.labels(receiver=receiver_id)
        self._accepted = metrics.accepted.labels(receiver=receiver_id)

    async def consume(self, events: list[Event], meta: Meta | None = None) -> None:
        n = len(events)
        m = self.metrics
        self._received.inc(n)
        meta = dict(meta or {})
        meta.setdefault("receiver", self.receiver_id)
        hooks: list[OutcomeHook] = []
        try:
            try:
                targets: list[tuple[ExporterRunner, list[Event]]] = []
                for pipeline in self.pipelines:
                    out = await pipeline.prepare(list(events) if pipeline.processors else events, meta, hooks=hooks)
                    if out:
                        targets.extend((runner, out) for runner in pipeline.exporters)
                await commit(targets)
            except BaseException:
                await settle(hooks, committed=False)
                raise
            await settle(hooks, committed=True)
        except PermanentError:
            m.refused.labels(receiver=self.receiver_id, reason="invalid").inc(n)
            raise
        except BackpressureError:
            m.refused.labels(receiver=self.receiver_id, reason="backpressure").inc(n)
            raise
        except BaseException:
            m.refused.labels(receiver=self.receiver_id, reason="error").inc(n)
            raise
        self._accepted.inc(n)
