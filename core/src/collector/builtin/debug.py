"""The debug exporter: events as JSON lines on stdout or in a file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from pydantic import Field

from collector.components import Event, Exporter, ExporterConfig
from collector.events import CLOUDEVENTS


class DebugExporterConfig(ExporterConfig):
    """Print or record events; for trying the collector out and for tests."""

    path: Path | None = Field(None, description="Append events as JSON lines to this file; stdout when absent.")
    verbosity: Literal["basic", "detailed"] = Field(
        "detailed", description="detailed: every event as one JSON line; basic: one summary line per batch."
    )


class DebugExporter(Exporter[DebugExporterConfig]):
    # It prints whatever CloudEvent it gets, so trying a mapping out shows
    # events that OpenMeter would refuse; a pipeline that also feeds OpenMeter
    # still checks OpenMeter's rules (docs/plugin-authors.md).
    requires = (CLOUDEVENTS,)

    _out: IO[bytes] | None = None

    async def _start(self) -> None:
        if self.config.path is not None:
            self.config.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = await asyncio.to_thread(open, self.config.path, "ab")

    async def export(self, events: list[Event]) -> None:
        if self.config.verbosity == "basic":
            ids = [e.get("id") for e in events[:3]]
            data = orjson.dumps({"exporter": self.id, "events": len(events), "first_ids": ids}) + b"\n"
        else:
            data = b"".join(orjson.dumps(e) + b"\n" for e in events)
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        out: Any = self._out if self._out is not None else sys.stdout.buffer
        out.write(data)
        out.flush()

    async def _shutdown(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
