"""The public plugin API of collector-core: everything a plugin imports, and nothing else.

A plugin (first-party or third-party) imports from this module only::

    from collector.api import ComponentSpec, PullReceiver, ScheduleConfig, Window, hookimpl

Names here keep their meaning within a major version of the API
(:data:`API_VERSION`); plugins declare the range they were written against in
their dependencies (``collector-core>=0.2,<0.3`` while the API is 0.x, where a
minor release may change it; from 1.0 on only a major release may).  Every
other module of ``collector`` is internal and may change in any release;
``make lint`` (import-linter) keeps the first-party plugins to this module and
``collector.testing``.  The list, with what each name is for, is in
docs/plugin-api.md.

Importing this module is cheap (no aiohttp, no SQLite work): plugins import it
at hook time.
"""

from __future__ import annotations

from collector.auth import AuthConfig, BearerAuth
from collector.backoff import Backoff
from collector.clock import Clock, FakeClock, SystemClock, utcnow
from collector.components import (
    Acceptance,
    Batch,
    BatchSettings,
    Component,
    ComponentContext,
    Consumer,
    Coordinator,
    Event,
    Exporter,
    ExporterConfig,
    Meta,
    OutcomeHook,
    Processor,
    QueueSettings,
    Receiver,
    RetrySettings,
    TimeWindow,
)
from collector.durations import ByteSize, Duration, format_duration, format_size, parse_duration, parse_size
from collector.endpoints import Endpoint, parse_endpoint
from collector.errors import (
    AuthError,
    BackpressureError,
    CollectorError,
    ConfigError,
    PermanentError,
    RecordError,
    RetryableError,
)
from collector.events import (
    CLOUDEVENTS,
    OPENMETER,
    STABLE_ID_NAMESPACE,
    EventRules,
    fill_defaults,
    format_time,
    stable_id,
    validate_event,
    validate_events,
)
from collector.hookspecs import hookimpl
from collector.httpclient import HttpClientConfig, HttpUrl, check_http_url
from collector.mapping import CompiledMapping, FunctionMap, MappingCompileError, compile_expression
from collector.metrics import Meter
from collector.pull import PullReceiver, ScheduleConfig, Window
from collector.specs import KINDS, ComponentID, ComponentKind, ComponentSpec, FunctionSpec
from collector.state import Entry, StateFullError, StateStore
from collector.tls import TlsConfig

#: The version of this API (not of the collector-core distribution).
API_VERSION = "0.2"

__all__ = [
    "API_VERSION",
    "CLOUDEVENTS",
    "KINDS",
    "OPENMETER",
    "STABLE_ID_NAMESPACE",
    "Acceptance",
    "AuthConfig",
    "AuthError",
    "Backoff",
    "BackpressureError",
    "Batch",
    "BatchSettings",
    "BearerAuth",
    "ByteSize",
    "Clock",
    "CollectorError",
    "CompiledMapping",
    "Component",
    "ComponentContext",
    "ComponentID",
    "ComponentKind",
    "ComponentSpec",
    "ConfigError",
    "Consumer",
    "Coordinator",
    "Duration",
    "Endpoint",
    "Entry",
    "Event",
    "EventRules",
    "Exporter",
    "ExporterConfig",
    "FakeClock",
    "FunctionMap",
    "FunctionSpec",
    "HttpClientConfig",
    "HttpUrl",
    "MappingCompileError",
    "Meta",
    "Meter",
    "OutcomeHook",
    "PermanentError",
    "Processor",
    "PullReceiver",
    "QueueSettings",
    "Receiver",
    "RecordError",
    "RetrySettings",
    "RetryableError",
    "ScheduleConfig",
    "StateFullError",
    "StateStore",
    "SystemClock",
    "TimeWindow",
    "TlsConfig",
    "Window",
    "check_http_url",
    "compile_expression",
    "fill_defaults",
    "format_duration",
    "format_size",
    "format_time",
    "hookimpl",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
    "stable_id",
    "utcnow",
    "validate_event",
    "validate_events",
]
