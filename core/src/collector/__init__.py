"""Collector: a usage-metering collector that delivers CloudEvents to OpenMeter.

Nothing is imported here on purpose: ``collector --help`` must stay fast, and
importing the package must have no side effects.
"""

__version__ = "0.2.0"
