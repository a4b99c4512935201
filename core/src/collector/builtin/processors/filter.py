"""The ``filter`` processor: keep the records for which a predicate is true."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.mapping import FunctionMap, compile_expression


class FilterConfig(ProcessorConfig):
    """Keep records for which `condition` is truthy; drop (and count) the rest."""

    condition: str = Field(description="A mapping expression over `this` and `meta`, e.g. `this.type != 'ping'`.")

    def check_with_functions(self, functions: FunctionMap) -> None:
        compile_expression(self.condition, functions, path="condition")


class FilterProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: FilterConfig) -> None:
        super().__init__(ctx, config)
        self.predicate = compile_expression(config.condition, ctx.functions, path=f"processors.{ctx.id}.condition")

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        fn = self.predicate.function
        out: list[dict[str, Any]] = []
        origins: list[int | None] = []
        failures = Failures()
        for i, record in enumerate(batch.events):
            try:
                keep = fn(record, meta)
            except Exception as exc:
                failures.add(
                    i,
                    record,
                    f"filter {self.id} failed: {type(exc).__name__}: {exc} (condition: {self.predicate.snippet()})",
                )
                continue
            if keep:
                out.append(record)
                origins.append(batch.origins[i])
        self.count_dropped(len(batch.events) - len(out) - len(failures.errors), "filtered")
        await self.settle(failures)
        return Batch(out, origins)
