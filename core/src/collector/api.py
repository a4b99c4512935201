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
at hook time.  :func:`start_http_server` (a receiver's HTTP listener with the
core's header and idle timeouts and connection cap) imports aiohttp and
:mod:`collector.httpserver` on its first call.
"""

from __future__ import annotations

import typing

from collector.auth import AuthConfig, BearerAuth
from collector.backoff import Backoff
from collector.clock import Clock, FakeClock, SystemClock, finish_task, sleep_until_woken, utcnow
from collector.components import (
    Acceptance,
    Batch,
    BatchSettings,
    Component,
    ComponentContext,
    Consumer,
    Coordinator,
    DeadLetterSink,
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
from collector.interpreter import gil_switch_at_least
from collector.mapping import CompiledMapping, FunctionMap, MappingCompileError, compile_expression
from collector.metrics import Meter
from collector.pull import PullReceiver, ScheduleConfig, Window
from collector.serverlimits import ErrorBody, HttpServerHandle, Log, ServerLimits, ServerLimitsConfig
from collector.specs import KINDS, ComponentID, ComponentKind, ComponentSpec, FunctionSpec, PresetSpec
from collector.state import Entry, StateFullError, StateStore
from collector.tls import TlsConfig

if typing.TYPE_CHECKING:  # (plain imports: test_layering reads `from X import` as a module re-exported here)
    import aiohttp.web


async def start_http_server(
    app: aiohttp.web.Application,
    host: str,
    port: int,
    *,
    name: str,
    limits: ServerLimits,
    clock: Clock,
    log: Log,
    ssl: typing.Any = None,
    error_body: ErrorBody | None = None,
    reuse_port: bool = False,
) -> HttpServerHandle:
    """Serve an aiohttp ``app`` on ``host:port`` (port 0: a free one) with the limits an exposed port needs.

    ``limits`` (from :meth:`ServerLimitsConfig.limits`): a connection must send its request line and
    headers within ``header_timeout`` (else 408 and closed), a kept-alive one is closed after
    ``idle_timeout`` without a request, and one over ``max_connections`` is answered 503
    (``Retry-After: 1``) and closed at once.  aiohttp's own protocol errors are answered 400/415 and
    logged on one line (``log``, at most one per 10 s of ``clock``), as are failed ``accept()`` calls
    when descriptors run out.  ``name`` (the component id) goes into those lines, ``ssl`` is an
    :class:`ssl.SSLContext` for HTTPS, ``error_body`` words the errors the listener answers itself
    (default: ``application/problem+json``).  Returns once listening; the handle gives the ``port``,
    ``connections``, ``refused_connections``, ``stop_accepting()`` and ``stop()``.  aiohttp is imported
    here, on the first call, not when ``collector.api`` is.  ``reuse_port``: listen with SO_REUSEPORT so
    that worker processes share the port; pass ``ctx.shared_listeners``.
    """
    from collector.httpserver import start_http_server as start

    return await start(
        app,
        host,
        port,
        name=name,
        limits=limits,
        clock=clock,
        log=log,
        ssl=ssl,
        error_body=error_body,
        reuse_port=reuse_port,
    )


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
    "DeadLetterSink",
    "Duration",
    "Endpoint",
    "Entry",
    "ErrorBody",
    "Event",
    "EventRules",
    "Exporter",
    "ExporterConfig",
    "FakeClock",
    "FunctionMap",
    "FunctionSpec",
    "HttpClientConfig",
    "HttpServerHandle",
    "HttpUrl",
    "MappingCompileError",
    "Meta",
    "Meter",
    "OutcomeHook",
    "PermanentError",
    "PresetSpec",
    "Processor",
    "PullReceiver",
    "QueueSettings",
    "Receiver",
    "RecordError",
    "RetrySettings",
    "RetryableError",
    "ScheduleConfig",
    "ServerLimits",
    "ServerLimitsConfig",
    "StateFullError",
    "StateStore",
    "SystemClock",
    "TimeWindow",
    "TlsConfig",
    "Window",
    "check_http_url",
    "compile_expression",
    "fill_defaults",
    "finish_task",
    "format_duration",
    "format_size",
    "format_time",
    "gil_switch_at_least",
    "hookimpl",
    "parse_duration",
    "parse_endpoint",
    "parse_size",
    "sleep_until_woken",
    "stable_id",
    "start_http_server",
    "utcnow",
    "validate_event",
    "validate_events",
]
