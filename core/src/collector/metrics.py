"""The metrics API for components: get-or-create counters, gauges and histograms.

Part of the public plugin API (:mod:`collector.api`).  A component asks its
context (``ctx.metrics``) for an instrument by name; the first call creates it
on the collector's registry (served on the admin server's ``/metrics``), later
calls, from any component or any service built in the same process, return the
same instrument.  Every name lives under the ``collector_`` prefix, which is
added when missing, so a plugin cannot shadow the core's own names by accident::

    dropped = ctx.metrics.counter(
        "prometheus_dropped_series",            # -> collector_prometheus_dropped_series_total
        "Series not turned into events.",
        ["receiver", "query", "reason"],
    )
    dropped.labels(receiver=ctx.id, query="cpu", reason="missing_subject").inc()

Asking again for a name with another kind of instrument or other labels is a
:class:`ValueError` that says what was registered first.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PREFIX", "Meter"]

PREFIX = "collector_"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

_T = TypeVar("_T", Counter, Gauge, Histogram)


class Meter:
    """Instruments on one Prometheus registry, created once by name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._instruments: dict[str, tuple[type[Any], tuple[str, ...], Any]] = {}

    @staticmethod
    def full_name(name: str) -> str:
        """``name`` under the ``collector_`` prefix (a ``_total`` suffix is the exporter's job)."""
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r}: use lower-case letters, digits and '_', not starting with a digit")
        name = name.removesuffix("_total")
        return name if name.startswith(PREFIX) else PREFIX + name

    def counter(self, name: str, description: str, labels: Sequence[str] = ()) -> Counter:
        """A monotonically increasing count (exposed as ``<name>_total``)."""
        return self._get(Counter, name, description, labels)

    def gauge(self, name: str, description: str, labels: Sequence[str] = ()) -> Gauge:
        """A value that goes up and down (``set``, ``inc``, ``dec``, ``set_function``)."""
        return self._get(Gauge, name, description, labels)

    def histogram(
        self, name: str, description: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None
    ) -> Histogram:
        """A distribution (durations, sizes); ``buckets`` defaults to prometheus_client's."""
        extra = {"buckets": tuple(buckets)} if buckets is not None else {}
        return self._get(Histogram, name, description, labels, **extra)

    def _get(self, kind: type[_T], name: str, description: str, labels: Sequence[str], **extra: Any) -> _T:
        full = self.full_name(name)
        wanted = tuple(labels)
        with self._lock:
            found = self._instruments.get(full)
            if found is not None:
                found_kind, found_labels, instrument = found
                if found_kind is not kind or found_labels != wanted:
                    raise ValueError(
                        f"metric {full} is already registered as a {found_kind.__name__.lower()} with labels "
                        f"{list(found_labels)}; asked for a {kind.__name__.lower()} with labels {list(wanted)}"
                    )
                return instrument  # type: ignore[no-any-return]
            try:
                instrument = kind(full, description, wanted, registry=self.registry, **extra)
            except ValueError as exc:  # a name the core registered directly
                raise ValueError(f"metric {full} cannot be registered: {exc}") from None
            self._instruments[full] = (kind, wanted, instrument)
            return instrument
