"""Integration of a window's samples: each holds until the next, the last until the window end."""

from __future__ import annotations

from collector_plugin_runai.client import Sample
from collector_plugin_runai.integrate import integrate


def test_step_change_on_the_sample_grid_is_exact():
    samples = [Sample(t, 2.0 if t < 40 else 4.0) for t in range(0, 60, 5)]
    found = integrate(samples, 0, 60)
    assert found is not None and found.total == 2 * 40 + 4 * 20 and found.seconds == 60
    assert found.average == (80 + 80) / 60


def test_a_resource_that_started_mid_window_covers_only_its_part():
    found = integrate([Sample(30, 8.0), Sample(45, 8.0)], 0, 60)
    assert found is not None and (found.total, found.seconds, found.average) == (240, 30, 8)


def test_samples_outside_the_window_are_ignored_and_none_inside_means_no_data():
    assert integrate([Sample(-5, 1.0), Sample(60, 1.0)], 0, 60) is None
    found = integrate([Sample(-5, 9.0), Sample(10, 1.0), Sample(60, 9.0)], 0, 60)
    assert found is not None and found.total == 50


def test_unsorted_samples_are_sorted():
    found = integrate([Sample(30, 2.0), Sample(0, 1.0)], 0, 60)
    assert found is not None and found.total == 30 * 1 + 30 * 2
