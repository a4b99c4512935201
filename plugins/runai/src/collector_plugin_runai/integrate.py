"""Turning a metric's samples into a window's usage: integral over time and time-weighted average.

A sample holds its value from its timestamp until the next sample's (the last
one until the window end); before the first sample there is no data, and that
time is not covered.  So a workload that started in the middle of a window is
billed from its first sample, and an allocation that changes on the sample
grid is billed exactly (docs/components/runai-receiver.md, "Integration").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Point(Protocol):
    @property
    def at(self) -> float: ...
    @property
    def value(self) -> float: ...


@dataclass(frozen=True)
class Integral:
    """``total`` (value x seconds) over ``seconds`` covered by samples; ``average`` = total / seconds."""

    total: float
    seconds: float

    @property
    def average(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def integrate(samples: Sequence[Point], start: float, end: float) -> Integral | None:
    """The integral of ``samples`` over ``[start, end)``; None when no sample falls inside."""
    inside = sorted((p for p in samples if start <= p.at < end), key=lambda p: p.at)
    if not inside:
        return None
    total = covered = 0.0
    for i, point in enumerate(inside):
        until = inside[i + 1].at if i + 1 < len(inside) else end
        span = until - point.at
        total += point.value * span
        covered += span
    return Integral(total, covered)
