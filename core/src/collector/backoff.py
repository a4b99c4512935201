"""Full-jitter exponential backoff: the one way the collector waits before trying again.

The sender's export retries, its acknowledgement and dead-letter retries, a
pull receiver's failed window and ``collector backfill`` all wait with this, so
one rule holds everywhere (docs/delivery.md, "The sender"): the
delay for attempt ``n`` (counting from 0) is uniform in
``[0, min(cap, base * 2**n)]`` ("full jitter"), which spreads the retries of
many collectors hitting the same outage instead of having them return in step.
A ``Retry-After`` hint from the far side is a floor: never sooner than asked,
up to ``max_retry_after`` so a hostile or broken header cannot park a sender
for days.

Part of the public plugin API: a plugin that retries something should use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]

# 2**62 already exceeds any cap in seconds; bounding the exponent keeps the
# arithmetic in floats that cannot overflow however many attempts were made.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class Backoff:
    """Delays for attempt 0, 1, 2... of something that failed.

    ``rng`` is injectable so tests can fix the draws; by default the module's
    shared generator is used.
    """

    base: float = 1.0
    cap: float = 60.0
    max_retry_after: float = 3600.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError(f"backoff base and cap must be positive (got base={self.base}, cap={self.cap})")

    def ceiling(self, attempt: int) -> float:
        """The largest delay attempt ``attempt`` can draw: ``min(cap, base * 2**attempt)``."""
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``.

        ``retry_after`` (seconds, from a ``Retry-After`` header or an error's
        hint) raises the delay to at least that much, capped at
        ``max_retry_after``.
        """
        drawn = (self.rng or random).uniform(0.0, self.ceiling(attempt))
        if retry_after is not None and retry_after > 0:
            drawn = max(drawn, min(retry_after, self.max_retry_after))
        return drawn
