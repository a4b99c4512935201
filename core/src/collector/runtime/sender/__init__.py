"""The sender: drains an exporter's queue, batches, retries, splits and dead-letters.

Split the way the OpenTelemetry Collector's exporterhelper is, one piece per
concern (docs/delivery.md, "The sender"):

* :mod:`.batching`  requests cut from queue items by count, bytes and period;
* :mod:`.retry`     the retry policy: classify the exporter's answer, back off,
                    split a rejected request, dead-letter, expire by ``max_age``;
* :mod:`.host`      the thread and event loop the sender runs on, and the one
                    thread its blocking queue calls run on;
* :mod:`.runner`    :class:`ExporterRunner`, which puts them together with the
                    queue and the dead-letter store for one exporter.
"""

from __future__ import annotations

from collector.runtime.sender.retry import SenderStats
from collector.runtime.sender.runner import ExporterRunner

__all__ = ["ExporterRunner", "SenderStats"]
