"""Testing kit for plugin authors (a pytest plugin, entry point ``pytest11``).

The fixtures (``collector_run_pipeline``, ``collector_storage``,
``collector_fake_clock``, ``collector_registry``) need no import; the helpers
do::

    from collector.testing import eventually, testing_registry, MemoryExporter

See docs/plugin-authors.md, "Testing".
"""

from collector.clock import FakeClock
from collector.testing.components import MemoryExporter, ScriptedReceiver, TestingPlugin
from collector.testing.harness import RunningPipeline, run_pipeline, service_in_thread, testing_registry
from collector.testing.waiting import eventually, eventually_sync, read_until_closed

__all__ = [
    "FakeClock",
    "MemoryExporter",
    "RunningPipeline",
    "ScriptedReceiver",
    "TestingPlugin",
    "eventually",
    "eventually_sync",
    "read_until_closed",
    "run_pipeline",
    "service_in_thread",
    "testing_registry",
]
