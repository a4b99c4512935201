"""``host:port`` endpoints of listening components (receivers, the admin server).

Part of the public plugin API (:mod:`collector.api`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["Endpoint", "parse_endpoint"]


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6) into its parts, or ValueError.

    An empty host means every interface (``:8080`` -> ``("0.0.0.0", 8080)``).
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (for example 127.0.0.1:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _check(value: str) -> str:
    parse_endpoint(value)
    return value


#: A config field holding ``host:port``; validated when the config is loaded.
Endpoint = Annotated[str, AfterValidator(_check)]
