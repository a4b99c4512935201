"""The ``collector`` command line."""

from collector.cli.main import main

__all__ = ["main"]
