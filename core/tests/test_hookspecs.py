"""Every hookspec's docstring example runs, registers, and works in a pipeline."""

from __future__ import annotations

import re
import types

import pytest

from collector import hookspecs
from collector.testing import testing_registry

HOOKS = [
    "collector_receivers",
    "collector_processors",
    "collector_exporters",
    "collector_coordinators",
    "collector_functions",
    "collector_presets",
]


def example_module(hook: str) -> types.ModuleType:
    doc = getattr(hookspecs, hook).__doc__
    match = re.search(r"Example::\n\n(.*)", doc, re.S)
    assert match, f"{hook} has no example"
    code = "\n".join(line[8:] for line in match.group(1).splitlines())
    module = types.ModuleType(f"example_{hook}")
    exec(compile(code, f"<{hook} example>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_a_runnable_example(hook):
    module = example_module(hook)
    registry = testing_registry([(f"example-{hook}", module)])
    info = next(p for p in registry.plugins if p.name == f"example-{hook}")
    assert info.status == "loaded"
    assert info.components or info.functions or info.presets


def test_all_hookspecs_are_covered():
    declared = sorted(n for n in vars(hookspecs) if n.startswith("collector_"))
    assert declared == sorted(HOOKS)


async def test_examples_work_in_a_pipeline(collector_run_pipeline):
    registry = testing_registry(
        [
            ("rx", example_module("collector_receivers")),
            ("px", example_module("collector_processors")),
            ("ex", example_module("collector_exporters")),
        ]
    )
    yaml_text = """
receivers: {ticker: {count: 2}}
processors: {upper: {}}
exporters: {memory: {batch: {period: 0.01}}, "null": {queue: {kind: memory}}}
"""
    async with collector_run_pipeline(yaml_text, registry=registry) as p:
        events = await p.exporter("memory").wait_for(2)
    assert [e["subject"] for e in events] == ["DEMO", "DEMO"]


def test_functions_example_is_callable():
    registry = testing_registry([("fx", example_module("collector_functions"))])
    assert registry.functions()["cents"].func(1.25) == 125


def test_presets_example_is_loadable_by_name():
    """A plugin's preset is what `collector run --preset NAME` loads, and it is a valid configuration."""
    from collector import presets
    from collector.config import load_config

    registry = testing_registry([("px", example_module("collector_presets"))])
    text = presets.load("http-debug", plugin_presets=registry.presets())
    loaded = load_config(text, registry, source="preset http-debug")
    assert list(loaded.raw.receivers) == ["http"]
    with pytest.raises(KeyError, match="http-debug"):
        presets.load("nope", plugin_presets=registry.presets())
