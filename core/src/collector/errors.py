"""The error taxonomy shared by every component.

Plugins raise these; the core decides what happens next (retry, split and
dead-letter, pause, refuse to start).  Keeping the classes in one small module
means a plugin can import them without pulling in the rest of the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class CollectorError(Exception):
    """Base class of every error the collector raises on purpose."""


class ConfigError(CollectorError):
    """The configuration is wrong; the collector must not start with it.

    ``path`` is the dotted location in the YAML (``exporters.openmeter.url``)
    so that the CLI can print ``path: message`` without a traceback.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RetryableError(CollectorError):
    """A transient failure: try the same thing again later.

    ``retry_after`` (seconds) is a hint from the far side, e.g. an HTTP
    ``Retry-After`` header; the sender never waits less than it.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BackpressureError(RetryableError):
    """The collector cannot accept more data right now (queue full, disk full).

    Receivers turn it into HTTP 503 with ``Retry-After`` or gRPC
    ``RESOURCE_EXHAUSTED``.  Nothing already accepted is affected.
    """


class AuthError(CollectorError):
    """The far side refused our credentials (HTTP 401/403).

    The sender pauses the exporter, keeps the data and retries slowly; the
    admin ``/ready`` endpoint reports not ready while it lasts.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class RecordError:
    """What is wrong with one record of a batch."""

    index: int
    message: str
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class PermanentError(CollectorError):
    """The data itself is bad; retrying the same bytes will never succeed.

    ``records`` names the offending records when they are known (a receiver
    answers 400 with them); ``status`` and ``body`` carry the far side's answer
    so that dead letters keep the problem document.
    """

    def __init__(
        self,
        message: str,
        *,
        records: list[RecordError] | None = None,
        status: int | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.records: list[RecordError] = list(records or [])
        self.status = status
        self.body = body


@dataclass
class ValidationReport:
    """Per-record outcome of validating or processing a batch."""

    errors: list[RecordError] = field(default_factory=list)

    def add(self, index: int, message: str, field_name: str | None = None) -> None:
        self.errors.append(RecordError(index, message, field_name))

    def __bool__(self) -> bool:  # truthy when there is something to report
        return bool(self.errors)
