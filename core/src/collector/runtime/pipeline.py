"""Pipelines and the fan-out a receiver hands its batches to.

A pipeline checks its output against the event rules its exporters declare
(``Exporter.requires``), not against one destination's rules for every
pipeline: a pipeline that feeds OpenMeter refuses what OpenMeter would
refuse, one that only writes files refuses only what is not a CloudEvent
(docs/plugin-authors.md, "Event rules and partial acceptance").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from collector.components import Acceptance, Batch, Event, Meta, OutcomeHook, Processor
from collector.errors import BackpressureError, PermanentError, RecordError
from collector.events import EventRules, satisfied, strictest
from collector.runtime.sender import ExporterRunner
from collector.telemetry import Metrics, hot_inc

log = logging.getLogger("collector.runtime.pipeline")

# A partial emit runs the pipelines again without the records they refused
# (a later processor, or the final check, may refuse records that an earlier
# step let through).  Every run refuses at least one more record, and the
# built-in processors name all the records they refuse at once, so two or
# three runs are the norm; past this many the rest is refused as a whole.
MAX_PARTIAL_RUNS = 8


@dataclass
class Pipeline:
    """Processors applied in order, then the exporters' event rules, then every exporter's queue.

    ``rules``: what the output is checked against; by default the strictest
    union of what the exporters require.  ``collector map`` passes its own.
    """

    name: str
    processors: Sequence[Processor[Any]]
    exporters: Sequence[ExporterRunner]
    rules: tuple[EventRules, ...] | None = None
    _meta: Meta = field(init=False, repr=False)
    _covered: dict[frozenset[EventRules], bool] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.rules is None:
            self.rules = strictest(r for runner in self.exporters for r in runner.exporter.requires)
        self._meta = Meta(pipeline=self.name)
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
        self, events: list[Event], meta: Meta | None, *, start: int = 0, hooks: list[OutcomeHook] | None = None
    ) -> list[Event]:
        """Run the processors (from ``start``) and check the result against :attr:`rules`.

        Errors name the record the receiver emitted (``Batch.origins``), so a
        client posting raw JSON is told which of *its* records failed.  Events
        that the receiver says already satisfy the rules (``Meta.satisfies``)
        are not checked again when no processor changed them.

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
        run = self.processors[start:]
        checked = self.covers(meta)
        if not run and (not events or checked):
            return events  # nothing to run and nothing to check: no copies
        if meta is None:
            meta = self._meta
        elif meta.pipeline != self.name:
            meta = replace(meta, pipeline=self.name)
        batch = Batch.of(events)
        for processor in run:
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
        if batch.events and (run or not checked):
            self.check(batch)
        return batch.events

    def covers(self, meta: Meta | None) -> bool:
        """Whether events that come with ``meta`` need no check against :attr:`rules`."""
        if not self.rules:
            return True
        return meta is not None and bool(meta.satisfies) and self._covered_by(meta.satisfies)

    def _covered_by(self, satisfies: frozenset[EventRules]) -> bool:
        """Whether events that satisfy ``satisfies`` need no check here (cached: it runs per request)."""
        found = self._covered.get(satisfies)
        if found is None:
            found = self._covered[satisfies] = satisfied(self.rules or (), satisfies)
        return found

    def check(self, batch: Batch) -> None:
        """Raise :class:`PermanentError` naming the emitted records that break :attr:`rules`."""
        for rules in self.rules or ():
            errors = rules.check(batch.events)
            if errors:
                remapped = [_remap(batch, e) for e in errors]
                first = remapped[0]
                raise PermanentError(
                    f"{len(errors)} event(s) do not satisfy the {rules.name} event rules after pipeline {self.name!r}; "
                    f"record {first.index}: {first.message}",
                    records=remapped,
                )


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
    """The Consumer a receiver sees: every pipeline it feeds.

    All processors of all pipelines run first, so a rejected record refuses
    the whole batch before anything is committed; then every target queue is
    checked for room; then the commits run concurrently.  If one queue commits
    and another fails at that last step, the client is told to retry and the
    first queue holds the batch twice: with deterministic ids the destination
    deduplicates (at-least-once, docs/delivery.md).  Then the processors'
    outcome hooks run (dedupe records its keys, aggregate absorbs its input),
    and only then does the receiver acknowledge.

    With ``partial=True`` a refused record leaves the batch instead of
    refusing it: the pipelines run again on the rest, which is committed
    once, and the refusals are returned.  A record is committed only if every
    pipeline accepts it, so no pipeline holds what the client was told was
    refused.  Either way ``received`` counts each record once, and each record
    ends up counted once in ``accepted`` or in ``refused``.
    """

    def __init__(self, receiver_id: str, pipelines: Sequence[Pipeline], metrics: Metrics) -> None:
        self.receiver_id = receiver_id
        self.pipelines = list(pipelines)
        self.metrics = metrics
        self._meta = Meta(receiver=receiver_id)
        # labels() costs ~1.5 us per call: resolve the children once.
        self._received = metrics.received.labels(receiver=receiver_id)
        self._accepted = metrics.accepted.labels(receiver=receiver_id)
        self._invalid = metrics.refused.labels(receiver=receiver_id, reason="invalid")
        self._received_inc = hot_inc(self._received)  # per request: see hot_inc
        self._accepted_inc = hot_inc(self._accepted)
        # One pipeline without processors feeding one exporter (the usual ingest setup): a batch whose
        # rules are already satisfied goes straight to that queue, without the general path's
        # coroutines per step (about 2 us per request).
        only = self.pipelines[0] if len(self.pipelines) == 1 else None
        self._direct = only if only is not None and not only.processors and len(only.exporters) == 1 else None

    async def consume(self, events: list[Event], meta: Meta | None = None, *, partial: bool = False) -> Acceptance:
        n = len(events)
        self._received_inc(n)
        if meta is None:
            meta = self._meta
        elif meta.receiver is None:
            meta = replace(meta, receiver=self.receiver_id)
        if partial:
            return await self._consume_partial(events, meta)
        direct = self._direct
        try:
            if direct is not None and (not events or direct.covers(meta)):
                if events:
                    runner = direct.exporters[0]
                    runner.check_capacity()
                    await runner.enqueue(events)
            else:
                await self._run(events, meta)
        except BaseException as exc:
            self._refused(exc, n)
            raise
        self._accepted_inc(n)
        return Acceptance(n)

    async def _run(self, events: list[Event], meta: Meta) -> None:
        """Every pipeline's processors and rules, then the commit, then the outcome hooks."""
        hooks: list[OutcomeHook] = []
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

    async def _consume_partial(self, events: list[Event], meta: Meta) -> Acceptance:
        remaining = list(range(len(events)))  # indexes into ``events`` still offered
        rejected: list[RecordError] = []
        try:
            for run in range(MAX_PARTIAL_RUNS):
                offered = events if len(remaining) == len(events) else [events[i] for i in remaining]
                try:
                    await self._run(offered, meta)
                    break
                except PermanentError as exc:
                    found = _refused_records(exc, remaining)
                    rejected.extend(found)
                    bad = {e.index for e in found}
                    remaining = [i for i in remaining if i not in bad]
                    if not remaining:
                        break
                    if run == MAX_PARTIAL_RUNS - 1:
                        why = f"not accepted: the pipelines still refused records after {MAX_PARTIAL_RUNS} runs"
                        rejected.extend(RecordError(i, why) for i in remaining)
                        remaining = []
        except BaseException as exc:  # not a refusal of records: the client retries what is left
            self._invalid.inc(len(events) - len(remaining))
            self._refused(exc, len(remaining))
            raise
        self._invalid.inc(len(events) - len(remaining))
        self._accepted.inc(len(remaining))
        rejected.sort(key=lambda e: e.index)  # stable: a record's errors keep their order
        return Acceptance(len(remaining), tuple(rejected))

    def _refused(self, exc: BaseException, n: int) -> None:
        if isinstance(exc, PermanentError):
            self._invalid.inc(n)
            return
        reason = "backpressure" if isinstance(exc, BackpressureError) else "error"
        self.metrics.refused.labels(receiver=self.receiver_id, reason=reason).inc(n)


def _refused_records(exc: PermanentError, remaining: list[int]) -> list[RecordError]:
    """The refusal as errors naming indexes of the emitted batch (every record still offered
    when it names none of them: the pipeline refused the batch as a whole)."""
    found = [RecordError(remaining[e.index], e.message, e.field) for e in exc.records if 0 <= e.index < len(remaining)]
    if found:
        return found
    return [RecordError(i, exc.message or "refused by the pipeline") for i in remaining]
