"""The `${name}` receiver (imported only when a configuration uses it).

A push receiver: something else produces the data, the receiver takes it in
and hands it to the pipelines with `emit`.  `emit` returns only once every
exporter queue has committed the events, so that is the moment to acknowledge
the producer -- here, to delete the file.  A crash before that leaves the file
for the next start: at-least-once, and the events' own ids make a repeat
harmless.

Producers write `name.jsonl.tmp` and rename it to `name.jsonl` when complete,
so the receiver never reads half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from collector.api import BackpressureError, ComponentContext, Event, PermanentError, Receiver

from collector_plugin_${package} import ${class_name}Config


class ${class_name}Receiver(Receiver[${class_name}Config]):
    def __init__(self, ctx: ComponentContext, config: ${class_name}Config) -> None:
        super().__init__(ctx, config)
        self._task: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        self.config.directory.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name=f"spool-{self.id}")

    async def _shutdown(self) -> None:
        # Cancelling is safe: a file is deleted only after its events were committed.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            for path in sorted(self.config.directory.glob("*.jsonl")):
                await self._take(path)
            # The context's clock, not asyncio.sleep: tests can drive it with a fake clock.
            await self.ctx.clock.sleep(self.config.poll_interval)

    async def _take(self, path: Path) -> None:
        try:
            events = await asyncio.to_thread(_read, path)
            await self.emit(events)
        except (ValueError, PermanentError) as exc:
            # Bad data stays bad: set the file aside, with the reason in the log, and go on.
            self.log.error("%s refused: %s; moved to %s.rejected", path.name, exc, path.name)
            path.replace(path.with_name(path.name + ".rejected"))
            return
        except BackpressureError as exc:
            self.log.warning("%s: the queue is full (%s); trying again later", path.name, exc)
            return
        except Exception as exc:  # anything else: keep the file, try again at the next poll
            self.last_error = f"{path.name}: {exc}"
            self.log.exception("%s could not be taken; trying again later", path.name)
            return
        path.unlink()  # committed: now the producer's copy can go
        self.last_error = None


def _read(path: Path) -> list[Event]:
    """The file's events; ValueError names the line that is not a JSON object."""
    events: list[Event] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(event, dict):
                raise ValueError(f"line {number}: not a JSON object")
            events.append(event)
    return events
