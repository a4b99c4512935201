"""Testing kit for plugin authors (a pytest plugin, entry point ``pytest11``).

Import what you need::

    from collector.testing import run_pipeline, MemoryExporter, ScriptedReceiver, FakeClock
"""

from collector.clock import FakeClock
from collector.testing.components import MemoryExporter, ScriptedReceiver, TestingPlugin
from collector.testing.harness import RunningPipeline, run_pipeline, testing_registry

__all__ = [
    "FakeClock",
    "MemoryExporter",
    "RunningPipeline",
    "ScriptedReceiver",
    "TestingPlugin",
    "run_pipeline",
    "testing_registry",
]
