"""Configuration of the ``prometheus`` receiver.

Imported at hook time (the model is part of the spec), so it stays light:
pydantic and the core's schedule settings only, no aiohttp.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.api import (
    Duration,
    FunctionMap,
    HttpClientConfig,
    HttpUrl,
    ScheduleConfig,
    compile_expression,
    format_duration,
)

#: Placeholders replaced in a query before it is sent, and the query types that allow each.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "window": ("instant", "range"),
    "window_seconds": ("instant", "range"),
    "step": ("range",),
    "step_seconds": ("range",),
}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# PromQL string literals, where braces are text (a label value "{b}"), not placeholders.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def prometheus_duration(value: float) -> str:
    """Seconds as a Prometheus duration: ``300s``, or ``1500ms`` when not whole seconds."""
    if float(value).is_integer():
        return f"{int(value)}s"
    return f"{round(value * 1000)}ms"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class QueryConfig(BaseModel):
    """One PromQL query evaluated for every window."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Name of the query; the CloudEvent type of its events (default mapping) and part of their ids. "
        "Unique within the receiver.",
        min_length=1,
        pattern=r"^\S+$",
    )
    query: str = Field(
        description="PromQL. `{window}` is replaced by the window length as a Prometheus duration "
        "(`increase(http_requests_total[{window}])` becomes `[300s]` for 5-minute windows) and `{window_seconds}` "
        "by it as a number (`300`); in range queries `{step}` and `{step_seconds}` likewise by the step.",
        min_length=1,
    )
    type: Literal["instant", "range"] = Field(
        "instant",
        description="instant: evaluated once, at the window end (one record per series). range: evaluated every "
        "`step` from window start + step to window end (one record per series and sample).",
    )
    step: Duration | None = Field(
        None,
        gt=0,
        description="Resolution of a range query (e.g. 1m); required for type range, not allowed for instant. "
        "It must divide the window length.",
    )
    subject_label: str | None = Field(
        None, description="Series label holding the subject for this query; overrides the receiver's subject_label."
    )

    @model_validator(mode="after")
    def _check(self) -> QueryConfig:
        if self.type == "range" and self.step is None:
            raise ValueError(f"query {self.name!r}: a range query needs a step (e.g. step: 1m)")
        if self.type == "instant" and self.step is not None:
            raise ValueError(f"query {self.name!r}: step is only for range queries (type: range)")
        for placeholder in _PLACEHOLDER.findall(_QUOTED.sub("", self.query)):
            allowed = PLACEHOLDERS.get(placeholder)
            if allowed is None:
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise ValueError(f"query {self.name!r}: unknown placeholder {{{placeholder}}} (known: {known})")
            if self.type not in allowed:
                raise ValueError(
                    f"query {self.name!r}: {{{placeholder}}} is only allowed in range queries (type: range)"
                )
        return self

    def step_seconds(self) -> float | None:
        return self.step

    def render(self, window_seconds: float) -> str:
        """The PromQL with its placeholders replaced for a window of ``window_seconds``."""
        text = self.query.replace("{window}", prometheus_duration(window_seconds))
        text = text.replace("{window_seconds}", _number(window_seconds))
        step = self.step_seconds()
        if step is not None:
            text = text.replace("{step}", prometheus_duration(step)).replace("{step_seconds}", _number(step))
        return text


class PrometheusReceiverConfig(HttpClientConfig, ScheduleConfig):
    """Evaluate PromQL queries for every time window and turn the results into CloudEvents.

    Timeout, headers, credentials and TLS verification are the HTTP client
    settings every component shares (collector.api.HttpClientConfig).
    """

    url: HttpUrl = Field(
        description="Base URL of the Prometheus HTTP API (Prometheus, Thanos Query, Mimir/Cortex with their "
        "prefix, e.g. http://mimir:8080/prometheus). /api/v1/query and /api/v1/query_range are appended.",
    )
    queries: list[QueryConfig] = Field(description="The queries evaluated for every window.", min_length=1)
    offset: Duration = Field(
        60.0,
        ge=0,
        description="Wait this long after a window ends before querying it, so that the last scrapes (and "
        "remote-write lag) are in. Raise it for slow pipelines.",
    )
    subject_label: str = Field(
        "subject",
        min_length=1,
        description="Series label whose value becomes the event subject (the customer) in the default mapping. "
        "A series without it is skipped, counted and logged.",
    )
    source: str = Field(
        "prometheus", min_length=1, description="CloudEvent source of the events; part of every event id."
    )
    mapping: str | None = Field(
        None,
        description="Mapping expression from a record (`this`: query, type, labels, value, timestamp, "
        "window_start, window_end, step_seconds) and `meta` (window) to a CloudEvent, or None to drop the record. "
        "Unset: the default mapping. specversion, id, source, type and time left out are filled with the "
        "defaults.",
    )
    max_series: int = Field(
        10000,
        gt=0,
        description="Most series one query may return for one window; more fails the window (naming the query) "
        "instead of flooding the queue. Aggregate with sum by (...) or raise it.",
    )
    timeout: Duration = Field(
        30.0, gt=0, description="Time limit of one query (sent to Prometheus and enforced locally)."
    )
    tenant: str | None = Field(None, description="Tenant id sent as X-Scope-OrgID (Mimir, Cortex, Loki-style proxies).")

    @model_validator(mode="after")
    def _consistent(self) -> PrometheusReceiverConfig:
        names = [q.name for q in self.queries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"query names must be unique; repeated: {', '.join(dupes)}")
        if self.cron is None:  # cron windows vary; those are checked per window
            window = self.interval or 60.0
            for q in self.queries:
                step = q.step_seconds()
                if step is not None and not divides(step, window):
                    raise ValueError(
                        f"query {q.name!r}: step {format_duration(step)} does not divide the window "
                        f"(interval {format_duration(window)})"
                    )
        return self

    def check_with_functions(self, functions: FunctionMap) -> None:
        if self.mapping is not None:
            compile_expression(self.mapping, functions, path="mapping")

    def timeout_seconds(self) -> float:
        return self.timeout


def divides(step: float, window: float) -> bool:
    ratio = window / step
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1
