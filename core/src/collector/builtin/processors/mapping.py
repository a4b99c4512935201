"""The ``mapping`` processor: turn any record into a CloudEvent with an expression."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.events import value_errors
from collector.mapping import CompiledMapping, FunctionMap, compile_expression


class MappingConfig(ProcessorConfig):
    """A Python expression over ``this`` (the record) and ``meta``, returning the new record or None."""

    expression: str = Field(
        description="The mapping. Returns an object (the new record) or None (drop the record). "
        "`this.a.b` reads fields safely (None when missing); see docs/processors/mapping.md.",
    )

    def check_with_functions(self, functions: FunctionMap) -> None:
        compile_expression(self.expression, functions, path="expression")


class MappingProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: MappingConfig) -> None:
        super().__init__(ctx, config)
        self.mapping: CompiledMapping = compile_expression(
            config.expression, ctx.functions, path=f"processors.{ctx.id}.expression"
        )

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        fn = self.mapping.function
        out: list[dict[str, Any]] = []
        origins: list[int | None] = []
        failures = Failures()
        dropped = 0
        for i, record in enumerate(batch.events):
            try:
                result = fn(record, meta)
            except Exception as exc:
                failures.add(i, record, self._describe(exc))
                continue
            if result is None:
                dropped += 1
            elif isinstance(result, dict):
                # Values the encoder cannot write exactly (NaN, a 100-bit integer, 300 levels of
                # nesting) are this record's error, so on_error applies; not a failed commit.
                problems = value_errors(result, i)
                if problems:
                    for p in problems:
                        failures.add(
                            i,
                            record,
                            f"mapping {self.id} produced a value that cannot be delivered: "
                            f"{p.message} (expression: {self.mapping.snippet()})",
                            p.field,
                        )
                    continue
                out.append(result)
                origins.append(batch.origins[i])
            else:
                failures.add(
                    i,
                    record,
                    f"mapping {self.id} returned {type(result).__name__}, not an object or None "
                    f"(expression: {self.mapping.snippet()})",
                )
        self.count_dropped(dropped, "mapped_to_none")
        await self.settle(failures)
        return Batch(out, origins)

    def _describe(self, exc: Exception) -> str:
        return f"mapping {self.id} failed: {type(exc).__name__}: {exc} (expression: {self.mapping.snippet()})"
