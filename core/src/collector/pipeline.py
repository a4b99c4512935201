"""Pipelines and the fan-out a receiver hands its batches to."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.components import Event, Meta, Processor
from collector.delivery import ExporterRunner
from collector.errors import BackpressureError, PermanentError
from collector.telemetry import Metrics


@dataclass
class Pipeline:
    """Processors applied in order, then every exporter's queue."""

    name: str
    processors: Sequence[Processor[Any]]
    exporters: Sequence[ExporterRunner]

    async def prepare(self, events: list[Event], meta: Meta) -> list[Event]:
        meta = {**meta, "pipeline": self.name}
        for processor in self.processors:
            if not events:
                break
            events = await processor.process(events, meta)
        return events


class ReceiverFanout:
    """The Consumer a receiver sees: every pipeline it feeds, all or nothing.

    All processors of all pipelines run first, so a rejected record refuses
    the whole batch before anything is committed; then every target queue is
    checked for room; then the commits run concurrently.  If one queue commits
    and another fails at that last step, the client is told to retry and the
    first queue holds the batch twice: with deterministic ids the destination
    deduplicates (at-least-once, DESIGN.md section 6).
    """

    def __init__(self, receiver_id: str, pipelines: Sequence[Pipeline], metrics: Metrics) -> None:
        self.receiver_id = receiver_id
        self.pipelines = list(pipelines)
        self.metrics = metrics

    async def consume(self, events: list[Event], meta: Meta | None = None) -> None:
        n = len(events)
        m = self.metrics
        m.received.labels(receiver=self.receiver_id).inc(n)
        meta = dict(meta or {})
        meta.setdefault("receiver", self.receiver_id)
        try:
            targets: list[tuple[ExporterRunner, list[Event]]] = []
            for pipeline in self.pipelines:
                out = await pipeline.prepare(list(events), meta)
                if out:
                    targets.extend((runner, out) for runner in pipeline.exporters)
            for runner, _ in targets:
                runner.check_capacity()
            if targets:
                await asyncio.gather(*(runner.enqueue(out) for runner, out in targets))
        except PermanentError:
            m.refused.labels(receiver=self.receiver_id, reason="invalid").inc(n)
            raise
        except BackpressureError:
            m.refused.labels(receiver=self.receiver_id, reason="backpressure").inc(n)
            raise
        except BaseException:
            m.refused.labels(receiver=self.receiver_id, reason="error").inc(n)
            raise
        m.accepted.labels(receiver=self.receiver_id).inc(n)
