"""The event loop and GIL switch interval of `collector run` (collector.runtime.eventloop)."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from collector import interpreter
from collector.api import gil_switch_at_least
from collector.config import Settings
from collector.errors import ConfigError
from collector.runtime import eventloop


@pytest.fixture(autouse=True)
def _restore_interpreter():
    before, thresholds = sys.getswitchinterval(), gc.get_threshold()
    yield
    sys.setswitchinterval(before)
    gc.set_threshold(*thresholds)
    interpreter._chosen_ms = None


async def _interval_and_loop() -> tuple[float, str]:
    return sys.getswitchinterval(), type(asyncio.get_running_loop()).__module__


def test_run_tunes_the_interpreter():
    interval, _ = eventloop.run(_interval_and_loop(), "asyncio")
    assert interval == pytest.approx(interpreter.DEFAULT_GIL_SWITCH_MS / 1000)
    assert gc.get_threshold() == interpreter.GC_THRESHOLDS
    interval, _ = eventloop.run(_interval_and_loop(), "asyncio", 2.5)
    assert interval == pytest.approx(0.0025)


def test_a_component_may_raise_the_interval_unless_the_user_chose_one():
    interpreter.tune()
    gil_switch_at_least(1.0)
    assert sys.getswitchinterval() == pytest.approx(0.001)
    gil_switch_at_least(0.2)  # never lowered
    assert sys.getswitchinterval() == pytest.approx(0.001)
    interpreter.tune(0.3)  # COLLECTOR_GIL_SWITCH_MS=0.3
    gil_switch_at_least(1.0)
    assert sys.getswitchinterval() == pytest.approx(0.0003)


def test_the_environment_sets_the_interval_within_bounds(monkeypatch):
    monkeypatch.setenv("COLLECTOR_GIL_SWITCH_MS", "0.5")
    assert Settings().gil_switch_ms == 0.5
    monkeypatch.setenv("COLLECTOR_GIL_SWITCH_MS", "0")
    with pytest.raises(ValueError, match="gil_switch_ms"):
        Settings()


def test_the_loop_choice_is_honoured():
    uvloop = pytest.importorskip("uvloop")
    assert eventloop.run(_interval_and_loop(), "uvloop")[1].startswith("uvloop")
    assert eventloop.run(_interval_and_loop(), "asyncio")[1].startswith("asyncio")
    main, sender = uvloop.new_event_loop(), None
    try:
        sender = eventloop.new_loop_like(main)
        assert isinstance(sender, uvloop.Loop)
    finally:
        main.close()
        if sender is not None:
            sender.close()


def test_uvloop_missing_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.loop_factory("uvloop")
    assert eventloop.loop_factory("auto") == ("asyncio", None)
