"""What processors share: the per-record error policy and their dead letters.

``on_error`` decides what happens to a record whose processing fails:

* ``reject`` (default): the whole batch is refused with every failing record
  named (a push receiver answers 400; nothing is committed);
* ``dead_letter``: the record goes to this processor's dead-letter store with
  the error, the rest carry on (``collector dlq list --processor ID``);
* ``drop``: the record is dropped and counted
  (``collector_processor_dropped_events_total{reason="error"}``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector.components import Processor
from collector.errors import PermanentError, RecordError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import deadletters_in

OnError = Literal["reject", "dead_letter", "drop"]


class ProcessorConfig(BaseModel):
    """Settings every record-by-record processor shares."""

    model_config = ConfigDict(extra="forbid")

    on_error: OnError = Field(
        "reject",
        description="What to do with a record that fails: reject the batch (the client gets 400 naming it), "
        "dead_letter it, or drop it (counted).",
    )


@dataclass
class Failures:
    """Per-record failures collected while processing one batch."""

    errors: list[RecordError] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)

    def add(self, index: int, record: Any, message: str, field_name: str | None = None) -> None:
        """One problem of record ``index``; a record may have several (one per field)."""
        self.errors.append(RecordError(index, message, field_name))
        self.records.append(record)

    def by_record(self) -> list[tuple[Any, list[RecordError]]]:
        """Each failed record once, with its errors, in the order they were first added."""
        grouped: dict[int, tuple[Any, list[RecordError]]] = {}
        for record, err in zip(self.records, self.errors, strict=True):
            grouped.setdefault(err.index, (record, []))[1].append(err)
        return list(grouped.values())

    @property
    def failed_indexes(self) -> set[int]:
        return {err.index for err in self.errors}


class RecordProcessor(Processor[Any]):
    """Base for processors that handle records one by one with ``on_error``."""

    _deadletters: DeadLetterStore | None = None

    def count_dropped(self, n: int, reason: str) -> None:
        if n:
            self.ctx.telemetry.metrics.dropped.labels(processor=self.id, reason=reason).inc(n)

    async def settle(self, failures: Failures) -> None:
        """Apply ``on_error`` to what failed; raises PermanentError for ``reject``."""
        if not failures.errors:
            return
        policy: OnError = self.config.on_error
        failed = failures.by_record()  # a record with several problems counts (and is dead-lettered) once
        if policy == "reject":
            first = failures.errors[0]
            raise PermanentError(
                f"processor {self.id}: {len(failed)} record(s) failed; record {first.index}: {first.message}",
                records=failures.errors,
            )
        if policy == "dead_letter":
            entries = [
                (record if isinstance(record, dict) else {"record": record}, "; ".join(e.message for e in errs))
                for record, errs in failed
            ]
            await asyncio.to_thread(_dead_letter, self._store(), entries)
            self.count_dropped(len(failed), "dead_lettered")
        else:
            self.count_dropped(len(failed), "error")
        self.log.warning(
            "processor %s: %d record(s) failed and were %s; first: %s",
            self.id,
            len(failed),
            "dead-lettered" if policy == "dead_letter" else "dropped",
            failures.errors[0].message,
        )

    def _store(self) -> DeadLetterStore:
        if self._deadletters is None:
            self._deadletters = DeadLetterStore(deadletters_in(self.ctx.storage_dir))
        return self._deadletters

    async def _shutdown(self) -> None:
        if self._deadletters is not None:
            self._deadletters.close()
            self._deadletters = None


def _dead_letter(store: DeadLetterStore, entries: list[tuple[dict[str, Any], str]]) -> None:
    for event, body in entries:
        store.add([event], "processor_error", body=body)
