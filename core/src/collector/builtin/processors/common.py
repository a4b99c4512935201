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
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from collector.components import Processor
from collector.deadletter import DeadLetterStore
from collector.errors import PermanentError, RecordError

OnError = Literal["reject", "dead_letter", "drop"]
DEADLETTER_FILE = "deadletter.sqlite"


class ProcessorConfig(BaseModel):
    """Settings every record-by-record processor shares."""

    model_config = ConfigDict(extra="forbid")

    on_error: OnError = Field(
        "reject",
        description="What to do with a record that fails: reject the batch (the client gets 400 naming it), "
        "dead_letter it, or drop it (counted).",
    )


def deadletter_store_path(storage_dir: Path) -> Path:
    return storage_dir / DEADLETTER_FILE


@dataclass
class Failures:
    """Per-record failures collected while processing one batch."""

    errors: list[RecordError] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)

    def add(self, index: int, record: Any, message: str, field_name: str | None = None) -> None:
        self.errors.append(RecordError(index, message, field_name))
        self.records.append(record)


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
        if policy == "reject":
            first = failures.errors[0]
            raise PermanentError(
                f"processor {self.id}: {len(failures.errors)} record(s) failed; record {first.index}: {first.message}",
                records=failures.errors,
            )
        if policy == "dead_letter":
            store = self._store()
            for record, err in zip(failures.records, failures.errors, strict=True):
                await asyncio.to_thread(
                    store.add,
                    [record if isinstance(record, dict) else {"record": record}],
                    "processor_error",
                    body=err.message,
                )
            self.count_dropped(len(failures.errors), "dead_lettered")
        else:
            self.count_dropped(len(failures.errors), "error")
        self.log.warning(
            "processor %s: %d record(s) failed and were %s; first: %s",
            self.id,
            len(failures.errors),
            "dead-lettered" if policy == "dead_letter" else "dropped",
            failures.errors[0].message,
        )

    def _store(self) -> DeadLetterStore:
        if self._deadletters is None:
            self._deadletters = DeadLetterStore(deadletter_store_path(self.ctx.storage_dir))
        return self._deadletters

    async def _shutdown(self) -> None:
        if self._deadletters is not None:
            self._deadletters.close()
            self._deadletters = None
