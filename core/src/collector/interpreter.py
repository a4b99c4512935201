"""How ``collector run`` tunes the Python interpreter: the GIL switch interval and the cyclic GC.

Both were measured with tests/bench/bench_ingest.py and bench_otlp.py (2 cores, load generator
beside the collector; docs/operations.md, "Ingest performance"):

* **The GIL switch interval** -- how long a thread waiting for the GIL lets the one holding it run
  on (Python's default: 5 ms).  The queue's writer and the senders give the GIL up for every SQLite
  call and fsync and must then get it back from the busy event loop: 100-event HTTP requests went
  from 127k to 149k events/s between 1 ms and 0.5 ms.  gRPC's threads want the opposite: OTLP/gRPC
  logs fell from 61k to 51k records/s at 0.5 ms.  So the default is 0.5 ms, a receiver whose server
  threads need longer asks for it (:func:`gil_switch_at_least`; the otlp receiver's gRPC server asks
  for 1 ms), and ``COLLECTOR_GIL_SWITCH_MS`` decides for everyone when set.
* **The garbage collector's thresholds** -- every request allocates dozens (single events) to
  hundreds (batches) of dicts, and the default threshold of 700 ran a young-generation collection
  every few requests, each also looking at the events still in flight; parsing a 100-event body
  took three times as long in the collector as alone.  At 50,000 (and full collections rarer)
  100-event intake rose ~23 %, single events ~8 %, OTLP ~14 %.  The hot path makes no reference
  cycles (events are plain dicts), so this only delays collecting the rare cyclic garbage.
"""

from __future__ import annotations

import gc
import sys

DEFAULT_GIL_SWITCH_MS = 0.5
GC_THRESHOLDS = (50_000, 50, 100)

_chosen_ms: float | None = None


def tune(gil_switch_ms: float | None = None) -> None:
    """Set the switch interval (``gil_switch_ms``, the user's choice, or the default) and the GC thresholds."""
    global _chosen_ms
    _chosen_ms = gil_switch_ms
    sys.setswitchinterval((gil_switch_ms or DEFAULT_GIL_SWITCH_MS) / 1000)
    gc.set_threshold(*GC_THRESHOLDS)


def gil_switch_at_least(ms: float) -> None:
    """Raise the GIL switch interval to ``ms`` milliseconds if it is shorter.

    For a component whose own threads need the GIL handed over less often (a gRPC server); it
    does nothing when the user chose an interval (``COLLECTOR_GIL_SWITCH_MS``).  It is never
    lowered again in the process's life.
    """
    if _chosen_ms is None and sys.getswitchinterval() < ms / 1000:
        sys.setswitchinterval(ms / 1000)
