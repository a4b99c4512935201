"""The `${name}` pull receiver (imported only when a configuration uses it).

The framework (collector.api.PullReceiver) runs the schedule: it calls
`collect(window)` once per window `[start, end)`, in order, hands what it
returns to the pipelines, and saves the watermark only once they are
committed.  A failed window (collect raises) is retried, the same window, with
backoff; missed windows are backfilled on start up to `max_backfill`, and
`collector backfill ${name} --from ... --to ...` re-emits any range.  All this
receiver does is say what the usage of one window is.
"""

from __future__ import annotations

from collector.api import ComponentContext, Event, PullReceiver, Window

from collector_plugin_${package} import ${class_name}Config


class ${class_name}Receiver(PullReceiver[${class_name}Config]):
    def __init__(self, ctx: ComponentContext, config: ${class_name}Config) -> None:
        super().__init__(ctx, config)
        self.source = config.source  # what event_id() hashes first

    async def usage(self, window: Window) -> dict[str, float]:
        """Usage per subject in ``window``.  Replace this with your system's query.

        Ask only for ``[window.start, window.end)``, never for "the last N
        minutes": a retry or a backfill must get the same answer for the same
        window.  Raise on failure (a RetryableError, or any exception) and the
        framework retries this window; never return partial data.  Blocking
        clients belong in ``asyncio.to_thread``.  This example reports every
        subject as active for the whole window (seconds of a subscription).
        """
        return {subject: window.seconds for subject in self.config.subjects}

    async def collect(self, window: Window) -> list[Event]:
        usage = await self.usage(window)
        return [
            {
                "specversion": "1.0",
                # Deterministic: the source, the natural key (here the subject) and the window
                # start.  A retry, a restart or a backfill sends the same id, and OpenMeter
                # de-duplicates it, so nothing is billed twice.
                "id": self.event_id(window, subject),
                "source": self.source,
                "type": self.config.event_type,
                "subject": subject,
                "time": window.start_time,  # the window the usage belongs to, never "now"
                "data": {"seconds": value},
            }
            for subject, value in sorted(usage.items())
        ]
