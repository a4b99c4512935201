"""The `${name}` exporter (imported only when a configuration uses it).

The core's sender takes batches from the exporter's durable queue and calls
`export`; returning means delivered (the batch leaves the queue), raising says
what happens next: RetryableError (try again with backoff), PermanentError
(this data is refused: it goes to the dead letters), AuthError (pause and
retry slowly).  `export` runs on the sender's own thread and event loop; a
blocking call (file I/O, a synchronous client) still belongs in a thread, so
that `max_in_flight` concurrent exports do not wait for each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading

from collector.api import ComponentContext, Event, Exporter, RetryableError

from collector_plugin_${package} import ${class_name}Config


class ${class_name}Exporter(Exporter[${class_name}Config]):
    def __init__(self, ctx: ComponentContext, config: ${class_name}Config) -> None:
        super().__init__(ctx, config)
        self._lock = threading.Lock()  # concurrent exports must not interleave their lines

    async def export(self, events: list[Event]) -> None:
        text = "".join(json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n" for e in events)
        try:
            await asyncio.to_thread(self._append, text)
        except OSError as exc:
            # A missing directory, a full disk: the events stay queued and are retried.
            raise RetryableError(f"cannot append to {self.config.path}: {exc}") from exc

    def _append(self, text: str) -> None:
        with self._lock, self.config.path.open("a", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # "delivered" must survive a power loss
