"""The one backoff: full jitter, exponential ceiling, cap, Retry-After floor."""

from __future__ import annotations

import random

import pytest

from collector.backoff import Backoff


def draws(backoff: Backoff, attempt: int, n: int = 500, retry_after: float | None = None) -> list[float]:
    return [backoff.delay(attempt, retry_after) for _ in range(n)]


def test_the_ceiling_doubles_per_attempt_up_to_the_cap():
    b = Backoff(base=1.0, cap=60.0)
    assert [b.ceiling(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert b.ceiling(10_000) == 60.0  # no overflow however long the outage


def test_delays_stay_within_zero_and_the_ceiling_and_use_all_of_it():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    for attempt, ceiling in [(0, 1.0), (3, 8.0), (50, 60.0)]:
        got = draws(b, attempt)
        assert all(0.0 <= d <= ceiling for d in got)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(got) < ceiling * 0.1 and max(got) > ceiling * 0.9


def test_retry_after_is_a_floor_but_capped():
    b = Backoff(base=0.01, cap=0.05, max_retry_after=3600.0, rng=random.Random(1))
    assert all(d == 2.5 for d in draws(b, 0, retry_after=2.5))
    assert all(d == 3600.0 for d in draws(b, 0, n=20, retry_after=86_400.0))
    big = Backoff(base=100.0, cap=100.0, rng=random.Random(1))
    # A hint below the drawn delay does not shorten it.
    assert max(draws(big, 0, retry_after=1.0)) > 50.0


def test_an_injected_rng_makes_delays_reproducible():
    one = Backoff(rng=random.Random(42))
    two = Backoff(rng=random.Random(42))
    assert [one.delay(n) for n in range(10)] == [two.delay(n) for n in range(10)]


@pytest.mark.parametrize("base,cap", [(0.0, 1.0), (1.0, 0.0), (-1.0, 5.0)])
def test_non_positive_settings_are_refused(base: float, cap: float):
    with pytest.raises(ValueError, match="positive"):
        Backoff(base=base, cap=cap)
