"""The `${name}` processor (imported only when a configuration uses it)."""

from __future__ import annotations

from collector.api import Event, Meta, PermanentError, Processor, RecordError

from collector_plugin_${package} import ${class_name}Config


class ${class_name}Processor(Processor[${class_name}Config]):
    async def process(self, events: list[Event], meta: Meta) -> list[Event]:
        cfg = self.config
        target = cfg.target or cfg.field
        out: list[Event] = []
        problems: list[RecordError] = []
        for index, event in enumerate(events):
            data = event.get("data")
            if not isinstance(data, dict) or data.get(cfg.field) is None:
                out.append(event)  # nothing to scale: pass the event on unchanged
                continue
            value = data[cfg.field]
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(RecordError(index, f"{cfg.field} must be a number, got {value!r}", f"data.{cfg.field}"))
                continue
            scaled = value * cfg.factor
            if cfg.decimals is not None:
                scaled = round(scaled, cfg.decimals)
            # A new dict: never change the events you were given.
            out.append({**event, "data": {**data, target: scaled}})
        if problems:
            # The whole batch is refused and the client is told which records (HTTP 400).
            raise PermanentError(f"{len(problems)} event(s) have a non-numeric {cfg.field}", records=problems)
        return out
