"""The ``ensure_id`` processor: give records a deterministic ``id`` and a ``time`` when they lack one.

OpenMeter de-duplicates events by ``id`` and ``source``.  A record that is
delivered twice (a client retries, a file is re-read, the collector replays
its queue after a crash) must therefore carry the same id both times, so the
id is derived from the record's content with :func:`collector.events.stable_id`,
never drawn at random.

"Missing" means absent or null, as in :func:`collector.events.fill_defaults`;
present values, even invalid ones, are never changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Meta
from collector.events import format_time, stable_id
from collector.functions import get as get_path
from collector.functions import parse_time


def _check_path(path: str) -> str:
    if not path or any(not p for p in path.split(".")):
        raise ValueError(f"{path!r} is not a field path: write keys separated by dots, e.g. data.request_id")
    return path


class EnsureIdConfig(ProcessorConfig):
    """Fill `id` (deterministically), `time` and `specversion` where a record lacks them; never overwrite.

    The id is `stable_id(source, {path: value, ...})` over the configured `fields`,
    or, without `fields`, the same id the HTTP receiver derives: `stable_id("cloudevent",
    <the event without id, and without the time this processor fills>)`.
    """

    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="Dotted paths (e.g. data.request_id) whose values, with the event's source, identify an "
        "event. Records with the same values get the same id, so OpenMeter counts them once: list enough "
        "fields to tell real events apart. A record missing one of them fails (on_error). "
        "Default: the whole event except id (and except a time this processor fills).",
    )
    time_field: str | None = Field(
        None,
        description="Where to read `time` from when it is missing (a dotted path), parsed with parse_time "
        "(RFC 3339, epoch seconds/ms/us, or time_format). A record without that field fails (on_error). "
        "Default: the arrival time.",
    )
    time_format: str | None = Field(
        None, description="A strptime pattern for time_field, e.g. '%d/%b/%Y:%H:%M:%S %z' (needs time_field)."
    )

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for path in value:
                _check_path(path)
            if len(set(value)) != len(value):
                raise ValueError("a field is listed twice")
        return value

    @field_validator("time_field")
    @classmethod
    def _time_field(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @model_validator(mode="after")
    def _format_needs_field(self) -> EnsureIdConfig:
        if self.time_format is not None and self.time_field is None:
            raise ValueError("time_format needs time_field (the arrival time needs no format)")
        return self


class EnsureIdProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: EnsureIdConfig) -> None:
        super().__init__(ctx, config)
        self.fields = list(config.fields or [])

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        out: list[Any] = []
        origins: list[int | None] = []
        failures = Failures()
        arrival: str | None = None  # one arrival time per batch, computed only when needed
        for i, record in enumerate(batch.events):
            if not isinstance(record, dict):
                failures.add(i, record, f"ensure_id {self.id}: the record is not an object")
                continue
            get = record.get
            if get("id") is not None and get("time") is not None and get("specversion") is not None:
                out.append(record)  # the common case: nothing to fill, nothing to copy
                origins.append(batch.origins[i])
                continue
            result = dict(record)
            if result.get("specversion") is None:
                result["specversion"] = "1.0"
            if result.get("id") is None:
                made = self._make_id(result)
                if isinstance(made, tuple):
                    failures.add(i, record, made[0], made[1])
                    continue
                result["id"] = made
            if result.get("time") is None:
                if self.config.time_field is None:
                    if arrival is None:
                        arrival = format_time(datetime.fromtimestamp(self.ctx.clock.time(), UTC))
                    result["time"] = arrival
                else:
                    found = self._read_time(record)
                    if isinstance(found, tuple):
                        failures.add(i, record, found[0], found[1])
                        continue
                    result["time"] = found
            out.append(result)
            origins.append(batch.origins[i])
        await self.settle(failures)
        return Batch(out, origins)

    def _make_id(self, event: dict[str, Any]) -> str | tuple[str, str | None]:
        """The id, or (message, field) when it cannot be made."""
        if not self.fields:
            # Exactly what fill_defaults hashes: the event without id, and without a time still to be filled.
            content = {k: v for k, v in event.items() if k != "id" and not (k == "time" and v is None)}
            parts: tuple[Any, ...] = ("cloudevent", content)
        else:
            values: dict[str, Any] = {}
            for path in self.fields:
                value = get_path(event, path)
                if value is None:
                    return (
                        f"ensure_id {self.id}: cannot derive an id: {path} is missing (it is one of the "
                        f"configured fields)",
                        path,
                    )
                values[path] = value
            parts = (event.get("source"), values)
        try:
            return stable_id(*parts)
        except TypeError as exc:  # a value JSON cannot hold
            return f"ensure_id {self.id}: cannot derive an id: {exc}", None

    def _read_time(self, record: dict[str, Any]) -> str | tuple[str, str | None]:
        path = self.config.time_field
        assert path is not None
        value = get_path(record, path)
        if value is None:
            return f"ensure_id {self.id}: cannot fill time: {path} is missing", path
        try:
            parsed = parse_time(value, self.config.time_format)
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            return f"ensure_id {self.id}: cannot read a time from {path} ({value!r}): {exc}", path
        assert parsed is not None
        return parsed
