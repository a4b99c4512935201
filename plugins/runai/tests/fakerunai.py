"""A fake NVIDIA Run:ai control plane (aiohttp) for the plugin's tests.

No Run:ai control plane can be installed on the build machines, so the plugin's
tests run against this fake.  It keeps to the API's contract as the official
``runapy`` SDK (1.224) describes it, instead of accepting anything, so that code
passing against it has a chance against a real control plane (the contract is
pinned by ``test_fakerunai.py``, which validates every payload with the SDK's
models and drives the fake with the SDK itself):

* ``POST /api/v1/token``: ``{"grantType": "app_token", "AppId", "AppSecret"}``
  (keys matched case-insensitively, as the control plane's JSON decoding does:
  the SDK sends ``AppId`` while its ``TokenRequest`` model says ``appID``;
  ``client_credentials`` with ``clientId``/``clientSecret`` is accepted too) ->
  ``{"accessToken": <JWT>}`` whose payload carries ``exp`` = now + ``token_ttl``.
  A wrong id or secret is 401; a malformed body 400.  Every other call needs
  ``Authorization: Bearer <token>``: missing, unknown, expired (per the injected
  clock) or revoked (:meth:`FakeRunai.expire_tokens`) tokens are 401.
* ``GET /api/v1/workloads``, ``GET /api/v1/workloads/pods`` (``verbosity=full``
  adds ``projectName`` and ``workloadName``) and ``GET
  /api/v1/workloads/{id}/pods``: ``offset``/``limit`` paging (default 50, at most
  500) over the list *after* the server-side filter, ``next`` = the offset of the
  next page, absent on the last page.  ``filterBy`` (repeatable, or
  comma-joined as the SDK sends it, ANDed) on any top-level scalar field with
  ``==``, ``!=``, ``=@``, ``!@``, ``=^``, ``=$``, and ``<=``/``>=`` on dates and
  numbers; an unknown field or a malformed clause is 400.  ``sortBy`` and
  ``sortOrder``, ``search`` (name contains), ``deleted`` and, for pods,
  ``completed``.
* ``GET /api/v1/workloads/{id}/metrics`` and ``.../pods/{podId}/metrics``:
  ``metricType`` repeated or comma-joined, at most 9, each a name valid for that
  resource type (``GPU_ALLOCATION`` is workload-only); ``start``/``end`` ISO 8601,
  ``end`` after ``start``; ``numberOfSamples`` (default 20, at most
  ``max_samples``).  Sample ``i`` (``0 <= i < N``) is taken at
  ``start + i * (end - start) / N`` from the step function set with
  :meth:`FakeRunai.set_series`; values are strings, as the API sends them.  There
  is no sample where the step function has no data yet, nor after the fake's
  "now" (the control plane cannot know the future, so a client that bills an
  open window is caught), and a metric without samples has no measurement at all
  -- never a 0.
* Errors are JSON ``{"code", "message"}`` bodies; unknown ids are 404.

Faults: :meth:`FakeRunai.fail_next` answers the next requests with a status
(429, 5xx) and an optional ``Retry-After`` (fractional seconds are written as
a decimal, a liberty taken so that tests stay fast); ``fail_next(0, ...)`` ends
an outage.  :attr:`FakeRunai.requests`
records every request, faults included.

Deleted workloads: :meth:`FakeRunai.remove_workload` deletes a workload as the
control plane does: it leaves the default lists (``deleted=true`` lists it, with
``deletedAt``) and its metrics stay queryable, the history being kept.

The test's event loop runs the server; the data methods take a lock and may be
called from the loop or from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import json
import math
import re
import secrets
import threading
import time as _time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

Obj = dict[str, Any]

# The names of runai.models.WorkloadMetricType and PodMetricType (runapy 1.224); test_fakerunai checks they agree.
WORKLOAD_METRICS: frozenset[str] = frozenset(
    {
        "GPU_UTILIZATION",
        "GPU_MEMORY_USAGE_BYTES",
        "GPU_MEMORY_REQUEST_BYTES",
        "CPU_USAGE_CORES",
        "CPU_REQUEST_CORES",
        "CPU_LIMIT_CORES",
        "CPU_MEMORY_USAGE_BYTES",
        "CPU_MEMORY_REQUEST_BYTES",
        "CPU_MEMORY_LIMIT_BYTES",
        "POD_COUNT",
        "RUNNING_POD_COUNT",
        "GPU_ALLOCATION",
        "NIM_NUM_REQUESTS_RUNNING",
        "NIM_NUM_REQUESTS_WAITING",
        "NIM_NUM_REQUEST_MAX",
        "NIM_REQUEST_SUCCESS_TOTAL",
        "NIM_REQUEST_FAILURE_TOTAL",
        "NIM_GPU_CACHE_USAGE_PERC",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS",
        "NIM_E2E_REQUEST_LATENCY_SECONDS",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS_PERCENTILES",
        "NIM_E2E_REQUEST_LATENCY_SECONDS_PERCENTILES",
        "NVLINK_BANDWIDTH_TOTAL",
    }
)
POD_METRICS: frozenset[str] = frozenset(
    {
        "GPU_UTILIZATION_PER_GPU",
        "GPU_UTILIZATION",
        "GPU_MEMORY_USAGE_BYTES_PER_GPU",
        "GPU_MEMORY_USAGE_BYTES",
        "CPU_USAGE_CORES",
        "CPU_MEMORY_USAGE_BYTES",
        "GPU_GRAPHICS_ENGINE_ACTIVITY_PER_GPU",
        "GPU_SM_ACTIVITY_PER_GPU",
        "GPU_SM_OCCUPANCY_PER_GPU",
        "GPU_TENSOR_ACTIVITY_PER_GPU",
        "GPU_FP64_ENGINE_ACTIVITY_PER_GPU",
        "GPU_FP32_ENGINE_ACTIVITY_PER_GPU",
        "GPU_FP16_ENGINE_ACTIVITY_PER_GPU",
        "GPU_MEMORY_BANDWIDTH_UTILIZATION_PER_GPU",
        "GPU_NVLINK_TRANSMITTED_BANDWIDTH_PER_GPU",
        "GPU_NVLINK_RECEIVED_BANDWIDTH_PER_GPU",
        "GPU_PCIE_TRANSMITTED_BANDWIDTH_PER_GPU",
        "GPU_PCIE_RECEIVED_BANDWIDTH_PER_GPU",
        "GPU_SWAP_MEMORY_BYTES_PER_GPU",
        "NIM_NUM_REQUESTS_RUNNING",
        "NIM_NUM_REQUESTS_WAITING",
        "NIM_NUM_REQUEST_MAX",
        "NIM_REQUEST_SUCCESS_TOTAL",
        "NIM_REQUEST_FAILURE_TOTAL",
        "NIM_GPU_CACHE_USAGE_PERC",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS",
        "NIM_E2E_REQUEST_LATENCY_SECONDS",
        "NIM_TIME_TO_FIRST_TOKEN_SECONDS_PERCENTILES",
        "NIM_E2E_REQUEST_LATENCY_SECONDS_PERCENTILES",
        "NVLINK_BANDWIDTH_TOTAL",
        "NVLINK_BANDWIDTH_TOTAL_PER_GPU",
    }
)
METRICS: dict[str, frozenset[str]] = {"workloads": WORKLOAD_METRICS, "pods": POD_METRICS}
# runai.models.Phase.
PHASES: frozenset[str] = frozenset(
    {
        "Creating",
        "Initializing",
        "Resuming",
        "Pending",
        "Deleting",
        "Running",
        "Updating",
        "Stopped",
        "Stopping",
        "Degraded",
        "Failed",
        "Completed",
        "Terminating",
        "Unknown",
    }
)
POD_PHASES: frozenset[str] = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})
MAX_METRIC_TYPES = 9
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
DEFAULT_SAMPLES = 20
TENANT_ID = 1001

# The scalar top-level fields each list can filter and sort on (those the fake's payloads carry).
WORKLOAD_FIELDS: frozenset[str] = frozenset(
    {
        "tenantId",
        "runningPods",
        "phaseUpdatedAt",
        "k8sPhaseUpdatedAt",
        "updatedAt",
        "source",
        "deletedAt",
        "type",
        "name",
        "id",
        "priority",
        "priorityClassName",
        "submittedBy",
        "clusterId",
        "projectName",
        "projectId",
        "departmentName",
        "departmentId",
        "namespace",
        "createdAt",
        "phase",
        "k8sPhase",
        "category",
        "completedAt",
    }
)
POD_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "priorityClassName",
        "id",
        "workloadId",
        "clusterId",
        "projectId",
        "nodeName",
        "createdAt",
        "completedAt",
        "k8sPhase",
        "tenantId",
        "k8sPhaseUpdatedAt",
        "updatedAt",
        "deletedAt",
        "projectName",
        "workloadName",
    }
)

_FILTER = re.compile(r"^(?P<field>[A-Za-z][A-Za-z0-9_]*)(?P<op>==|!=|<=|>=|=@|!@|=\^|=\$)(?P<value>.*)$", re.DOTALL)
_CATEGORIES = {"Training": "Train", "Workspace": "Build", "Inference": "Deploy", "Distributed": "Train"}


class ApiError(Exception):
    """An error answered as the API does: a JSON ``{"code", "message"}`` body."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response({"code": self.code, "message": self.message}, status=self.code, headers=headers)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def iso(t: float) -> str:
    """An ISO 8601 UTC timestamp with a ``Z``, milliseconds unless finer precision is needed."""
    moment = datetime.fromtimestamp(t, tz=UTC)
    spec = "milliseconds" if moment.microsecond % 1000 == 0 else "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_time(text: str | None, name: str) -> float:
    """Parse an ISO 8601 query parameter (a missing offset reads as UTC) into epoch seconds."""
    if not text:
        raise _bad_request(f"{name} is required (ISO 8601 timestamp)")
    if not re.match(r"^\d{4}-\d{2}-\d{2}", text):
        raise _bad_request(f"{name} must be an ISO 8601 timestamp, got {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_request(f"{name} must be an ISO 8601 timestamp, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_value(value: float) -> str:
    """A sample value as the API writes it: a string, integral values without a fraction."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _query_multidict(request: web.Request) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in request.query.items():
        query.setdefault(key, []).append(value)
    return query


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad_request(f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise _bad_request(f"{name} must be between {low} and {high}, got {value}")
    return value


def _list_values(request: web.Request, name: str) -> list[str]:
    """A list parameter, repeated (``a=x&a=y``), comma-joined (``a=x,y``, the SDK's form) or a JSON array."""
    values: list[str] = []
    for raw in request.query.getall(name, []):
        if raw.startswith("["):
            try:
                items = json.loads(raw)
            except ValueError:
                raise _bad_request(f"{name}: malformed JSON array {raw!r}") from None
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise _bad_request(f"{name}: expected an array of strings")
            values.extend(items)
        else:
            values.extend(part for part in raw.split(",") if part != "")
    return values


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _orderable(value: str) -> bool:
    """Whether a filter value is a date or a number (what ``<=``/``>=`` compare)."""
    try:
        float(value)
        return True
    except ValueError:
        pass
    try:
        parse_time(value, "filter value")
        return True
    except ApiError:
        return False


def _ordered(left: Any, right: str) -> tuple[Any, Any] | None:
    """Both sides as comparable dates or numbers, or None when they are neither."""
    if isinstance(left, str) and re.match(r"^\d{4}-\d{2}-\d{2}", left):
        try:
            return parse_time(left, "field"), parse_time(right, "filter value")
        except ApiError:
            return None
    try:
        return float(left), float(right)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Filter:
    """One ``filterBy`` clause: ``field op value``."""

    field: str
    op: str
    value: str

    def __call__(self, obj: Obj) -> bool:
        raw = obj.get(self.field)
        text = _scalar(raw)
        if self.op == "==":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        if self.op == "=@":
            return self.value in text
        if self.op == "!@":
            return self.value not in text
        if self.op == "=^":
            return text.startswith(self.value)
        if self.op == "=$":
            return text.endswith(self.value)
        pair = _ordered(raw, self.value) if raw is not None else None
        if pair is None:
            return False
        return pair[0] <= pair[1] if self.op == "<=" else pair[0] >= pair[1]


def parse_filters(clauses: Iterable[str], fields: frozenset[str]) -> list[Filter]:
    """Parse ``filterBy`` clauses; an unknown field or a malformed clause is a 400, as the API answers."""
    filters = []
    for clause in clauses:
        match = _FILTER.match(clause)
        if match is None:
            raise _bad_request(f"filterBy: malformed clause {clause!r} (expected field, operator, value)")
        field, op, value = match["field"], match["op"], match["value"]
        if field not in fields:
            raise _bad_request(f"filterBy: unknown field {field!r}")
        if op in ("<=", ">=") and not _orderable(value):
            raise _bad_request(f"filterBy: {op} needs a date or a number, got {value!r}")
        filters.append(Filter(field, op, value))
    return filters


def make_jwt(claims: Obj) -> str:
    """A real-looking JWT: base64url header, payload and signature, without padding (RFC 7519)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fake-runai"}, separators=(",", ":")).encode()
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return ".".join((part(header), part(payload), part(secrets.token_bytes(64))))


@dataclass
class _Token:
    exp: float
    revoked: bool = False


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: float | None
    path: str | None


class FakeRunai:
    """The fake control plane: a store of workloads, pods and metric series behind the API's contract."""

    def __init__(
        self,
        *,
        app_id: str = "collector",
        app_secret: str = "s3cret",
        token_ttl: float = 3600.0,
        time: Callable[[], float] = _time.time,
        max_samples: int = 1000,
    ) -> None:
        self.app_id, self._app_secret = app_id, app_secret
        self.token_ttl = token_ttl
        self.max_samples = max_samples
        self._time = time
        self._lock = threading.RLock()
        self._workloads: dict[str, Obj] = {}
        self._pods: dict[str, Obj] = {}
        self._pods_of: dict[str, list[str]] = {}
        self._ids: dict[tuple[str, str], str] = {}  # (kind, name) -> id, for projects and departments
        self._series: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self.token_requests = 0
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/api/v1/token", self._token)
        app.router.add_get("/api/v1/workloads", self._list_workloads)
        app.router.add_get("/api/v1/workloads/pods", self._list_pods)
        app.router.add_get("/api/v1/workloads/{workloadId}", self._get_workload)
        app.router.add_get("/api/v1/workloads/{workloadId}/metrics", self._workload_metrics)
        app.router.add_get("/api/v1/workloads/{workloadId}/pods", self._list_workload_pods)
        app.router.add_get("/api/v1/workloads/{workloadId}/pods/{podId}/metrics", self._pod_metrics)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeRunai:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- data ---------------------------------------------------------------------------------

    def _id_of(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key not in self._ids:
            self._ids[key] = str(1 + sum(1 for k in self._ids if k[0] == kind))
        return self._ids[key]

    def add_workload(
        self,
        workload_id: str,
        *,
        name: str,
        project: str = "team-a",
        department: str = "research",
        cluster_id: str = "cluster-1",
        submitted_by: str = "alice@example.com",
        phase: str = "Running",
        type: str = "Training",
        created: float | None = None,
    ) -> Obj:
        """Add a workload; returns its payload as the API lists it."""
        if phase not in PHASES:
            raise ValueError(f"unknown workload phase {phase!r} (one of {sorted(PHASES)})")
        with self._lock:
            if workload_id in self._workloads:
                raise ValueError(f"workload {workload_id!r} exists")
            at = iso(self._time() if created is None else created)
            self._workloads[workload_id] = {
                "tenantId": TENANT_ID,
                "runningPods": 0,
                "phaseUpdatedAt": at,
                "k8sPhaseUpdatedAt": at,
                "updatedAt": at,
                "source": "Control-plane",
                "deletedAt": None,
                "type": type,
                "name": name,
                "id": workload_id,
                "priority": 50,
                "priorityClassName": "train",
                "submittedBy": submitted_by,
                "clusterId": cluster_id,
                "projectName": project,
                "projectId": self._id_of("project", project),
                "departmentName": department,
                "departmentId": self._id_of("department", department),
                "namespace": f"runai-{project}",
                "createdAt": at,
                "phase": phase,
                "conditions": [],
                "k8sPhase": phase,
                "category": _CATEGORIES.get(type, "Train"),
                "images": ["nvcr.io/nvidia/pytorch:24.01-py3"],
                "completedAt": None,
            }
            self._pods_of[workload_id] = []
            return self._render_workload(workload_id)

    def set_phase(self, workload_id: str, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown workload phase {phase!r}")
        with self._lock:
            workload = self._workloads[workload_id]
            at = iso(self._time())
            workload.update(phase=phase, k8sPhase=phase, phaseUpdatedAt=at, k8sPhaseUpdatedAt=at, updatedAt=at)
            if phase in ("Completed", "Failed", "Stopped"):
                workload["completedAt"] = at

    def remove_workload(self, workload_id: str) -> None:
        """Delete a workload and its pods: they leave the default lists; ``deleted=true`` lists them."""
        with self._lock:
            at = iso(self._time())
            self._workloads[workload_id]["deletedAt"] = at
            for pod_id in self._pods_of[workload_id]:
                self._pods[pod_id]["deletedAt"] = at

    def add_pod(
        self,
        pod_id: str,
        workload_id: str,
        *,
        name: str,
        node: str = "node-1",
        phase: str = "Running",
        created: float | None = None,
    ) -> Obj:
        """Add a pod of an existing workload; returns its payload as ``verbosity=full`` lists it."""
        if phase not in POD_PHASES:
            raise ValueError(f"unknown pod phase {phase!r} (one of {sorted(POD_PHASES)})")
        with self._lock:
            if workload_id not in self._workloads:
                raise ValueError(f"unknown workload {workload_id!r}")
            if pod_id in self._pods:
                raise ValueError(f"pod {pod_id!r} exists")
            workload = self._workloads[workload_id]
            at = iso(self._time() if created is None else created)
            self._pods[pod_id] = {
                "name": name,
                "priorityClassName": workload["priorityClassName"],
                "id": pod_id,
                "workloadId": workload_id,
                "clusterId": workload["clusterId"],
                "projectId": workload["projectId"],
                "nodeName": node,
                "createdAt": at,
                "completedAt": at if phase in ("Succeeded", "Failed") else None,
                "containers": [{"name": "main", "image": workload["images"][0], "startedAt": at}],
                "k8sPhase": phase,
                "tenantId": TENANT_ID,
                "k8sPhaseUpdatedAt": at,
                "updatedAt": at,
                "deletedAt": None,
                "projectName": workload["projectName"],
                "workloadName": workload["name"],
            }
            self._pods_of[workload_id].append(pod_id)
            return self._render_pod(pod_id, full=True)

    def set_series(self, kind: str, resource_id: str, metric: str, steps: list[tuple[float, float]]) -> None:
        """Set a metric's step function: each ``(from_time, value)`` holds until the next step's time."""
        if kind not in METRICS:
            raise ValueError(f"kind must be 'workloads' or 'pods', got {kind!r}")
        if metric not in METRICS[kind]:
            raise ValueError(f"{metric!r} is not a metric of {kind}")
        ordered = sorted(steps)
        with self._lock:
            self._series[(kind, resource_id, metric)] = ([t for t, _ in ordered], [float(v) for _, v in ordered])

    # --- faults and observation -----------------------------------------------------------------

    def fail_next(self, count: int, status: int, *, retry_after: float | None = None, path: str | None = None) -> None:
        """Answer the next ``count`` requests (whose path starts with ``path``, if given) with ``status``.

        Calls add up, the earliest matching one answering first.  ``count=0`` ends an outage instead: it drops
        the pending faults (those for exactly ``path``, or all of them when ``path`` is None).
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        with self._lock:
            if count == 0:
                self._faults = [f for f in self._faults if path is not None and f.path != path]
            else:
                self._faults.append(_Fault(count, status, retry_after, path))

    def expire_tokens(self) -> None:
        """Revoke every token issued so far: using one is a 401."""
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

    # --- rendering ----------------------------------------------------------------------------

    def _workload_view(self, workload_id: str) -> Obj:
        """A shallow view with the computed fields, cheap enough to filter thousands per page."""
        running = sum(
            1
            for pod_id in self._pods_of[workload_id]
            if self._pods[pod_id]["k8sPhase"] == "Running" and self._pods[pod_id]["deletedAt"] is None
        )
        return {**self._workloads[workload_id], "runningPods": running}

    def _render_workload(self, workload_id: str) -> Obj:
        return copy.deepcopy(self._workload_view(workload_id))

    def _render_pod(self, pod_id: str, *, full: bool) -> Obj:
        payload = copy.deepcopy(self._pods[pod_id])
        if not full:
            del payload["projectName"], payload["workloadName"]
        return payload

    # --- HTTP ---------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        with self._lock:
            self.requests.append((request.method, request.path, _query_multidict(request)))
            fault = next(
                (f for f in self._faults if f.remaining > 0 and (f.path is None or request.path.startswith(f.path))),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
        if fault is not None:
            headers = {}
            if fault.retry_after is not None:
                seconds = fault.retry_after
                headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
            return ApiError(fault.status, HTTPStatus(fault.status).phrase).response(headers)
        try:
            return await handler(request)
        except ApiError as error:
            return error.response()
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return ApiError(error.status, error.reason).response()

    def _authorize(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token")
        with self._lock:
            known = self._tokens.get(token.strip())
            if known is None:
                raise ApiError(401, "invalid token")
            if known.revoked:
                raise ApiError(401, "token revoked")
            if self._time() >= known.exp:
                raise ApiError(401, "token expired")

    async def _token(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _bad_request("request body must be JSON") from None
        if not isinstance(body, dict):
            raise _bad_request("request body must be a JSON object")
        fields = {str(k).lower(): v for k, v in body.items()}
        grant = fields.get("granttype")
        if grant == "app_token":
            ident, secret = fields.get("appid"), fields.get("appsecret")
        elif grant == "client_credentials":
            ident, secret = fields.get("clientid"), fields.get("clientsecret")
        else:
            raise _bad_request(f"unsupported grantType {grant!r}")
        if not isinstance(ident, str) or not isinstance(secret, str) or not ident or not secret:
            raise _bad_request("the application id and secret are required strings")
        if not (secrets.compare_digest(ident, self.app_id) and secrets.compare_digest(secret, self._app_secret)):
            raise ApiError(401, "invalid application credentials")
        now = self._time()
        exp = now + self.token_ttl
        claims: Obj = {
            "iss": "https://fake-runai.example/auth/realms/runai",
            "sub": ident,
            "aud": "runai",
            "iat": int(now),
            "exp": int(exp) if exp == int(exp) else exp,
            "jti": str(uuid.uuid4()),
        }
        token = make_jwt(claims)
        with self._lock:
            self._tokens[token] = _Token(exp)
            self.token_requests += 1
        return web.json_response({"accessToken": token})

    def _page(self, request: web.Request, items: list[Obj], fields: frozenset[str]) -> tuple[list[Obj], int | None]:
        """Filter, sort and cut one page: the offset counts what the server-side filter kept."""
        offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
        limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        filters = parse_filters(_list_values(request, "filterBy"), fields)
        deleted = request.query.get("deleted", "false").lower()
        if deleted not in ("true", "false"):
            raise _bad_request(f"deleted must be true or false, got {deleted!r}")
        order = request.query.get("sortOrder", "asc")
        if order not in ("asc", "desc"):
            raise _bad_request(f"sortOrder must be asc or desc, got {order!r}")
        sort_by = request.query.get("sortBy")
        if sort_by is not None and sort_by not in fields:
            raise _bad_request(f"sortBy: unknown field {sort_by!r}")
        search = request.query.get("search", "")
        kept = [
            item
            for item in items
            if (item["deletedAt"] is not None) == (deleted == "true")
            and search.lower() in str(item["name"]).lower()
            and all(f(item) for f in filters)
        ]
        if sort_by is not None:
            kept.sort(key=lambda item: (item.get(sort_by) is None, _scalar(item.get(sort_by))), reverse=order == "desc")
        elif order == "desc":
            kept.reverse()
        page = kept[offset : offset + limit]
        following = offset + limit if offset + limit < len(kept) else None
        return page, following

    async def _list_workloads(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            items = [self._workload_view(w) for w in self._workloads]
            page, following = self._page(request, items, WORKLOAD_FIELDS)
            rendered = copy.deepcopy(page)
        body: Obj = {"workloads": rendered}
        if following is not None:
            body["next"] = following
        return web.json_response(body)

    def _pods_answer(self, request: web.Request, pod_ids: Iterable[str]) -> web.Response:
        verbosity = request.query.get("verbosity", "brief")
        if verbosity not in ("brief", "full"):
            raise _bad_request(f"verbosity must be brief or full, got {verbosity!r}")
        completed = request.query.get("completed", "all") or "all"
        if completed not in ("true", "false", "all"):
            raise _bad_request(f"completed must be true, false or all, got {completed!r}")
        with self._lock:
            items = [
                self._pods[p]
                for p in pod_ids
                if completed == "all" or (self._pods[p]["completedAt"] is not None) == (completed == "true")
            ]
            page, following = self._page(request, items, POD_FIELDS)
            rendered = [self._render_pod(p["id"], full=verbosity == "full") for p in page]
        body: Obj = {"pods": rendered}
        if following is not None:
            body["next"] = following
        return web.json_response(body)

    async def _list_pods(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            pod_ids = list(self._pods)
        return self._pods_answer(request, pod_ids)

    def _workload(self, request: web.Request) -> str:
        workload_id = request.match_info["workloadId"]
        if workload_id not in self._workloads:
            raise ApiError(404, f"workload {workload_id} not found")
        return workload_id

    async def _get_workload(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            return web.json_response(self._render_workload(self._workload(request)))

    async def _list_workload_pods(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            pod_ids = list(self._pods_of[self._workload(request)])
        return self._pods_answer(request, pod_ids)

    async def _workload_metrics(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            workload_id = self._workload(request)
        return web.json_response(self._metrics(request, "workloads", workload_id))

    async def _pod_metrics(self, request: web.Request) -> web.Response:
        self._authorize(request)
        with self._lock:
            workload_id = self._workload(request)
            pod_id = request.match_info["podId"]
            if pod_id not in self._pods or self._pods[pod_id]["workloadId"] != workload_id:
                raise ApiError(404, f"pod {pod_id} of workload {workload_id} not found")
        return web.json_response(self._metrics(request, "pods", pod_id))

    def _metrics(self, request: web.Request, kind: str, resource_id: str) -> Obj:
        """Sample each requested step function at ``start + i * (end - start) / N``."""
        names = _list_values(request, "metricType")
        if not names:
            raise _bad_request("metricType is required")
        if len(names) > MAX_METRIC_TYPES:
            raise _bad_request(f"metricType: at most {MAX_METRIC_TYPES} metric types per request, got {len(names)}")
        unknown = [n for n in names if n not in METRICS[kind]]
        if unknown:
            what = "workload" if kind == "workloads" else "pod"
            raise _bad_request(f"metricType: {', '.join(unknown)} is not a {what} metric type")
        start = parse_time(request.query.get("start"), "start")
        end = parse_time(request.query.get("end"), "end")
        if end <= start:
            raise _bad_request("end must be after start")
        samples = _int_param(request, "numberOfSamples", DEFAULT_SAMPLES, 1, self.max_samples)
        now = self._time()
        times = [start + (i * (end - start)) / samples for i in range(samples)]
        measurements = []
        with self._lock:
            for name in dict.fromkeys(names):
                series = self._series.get((kind, resource_id, name))
                if series is None:
                    continue
                starts, values = series
                points = []
                for t in times:
                    if t > now:
                        break
                    index = bisect.bisect_right(starts, t) - 1
                    if index >= 0:
                        points.append({"value": format_value(values[index]), "timestamp": iso(t)})
                if points:
                    measurements.append({"type": name, "labels": None, "values": points})
        return {"measurements": measurements}


@contextlib.contextmanager
def in_thread(**kwargs: Any) -> Iterator[FakeRunai]:
    """A :class:`FakeRunai` (same keywords) on its own event loop in a daemon thread.

    For tests whose collector is a subprocess (or that block): the fake keeps answering while the test waits.
    Its data and fault methods take the fake's lock, so the test's thread may call them.
    """
    fake = FakeRunai(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-runai", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
        yield fake
    finally:
        try:
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
