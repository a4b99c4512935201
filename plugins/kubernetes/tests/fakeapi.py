"""A fake Kubernetes API server (aiohttp) for the plugin's tests.

No API server can be installed on the build machines, so the tests drive this
fake with the official ``kubernetes`` client through a kubeconfig.  It keeps
to the documented API contract (https://kubernetes.io/docs/reference/using-api/api-concepts/)
instead of accepting anything, so that code passing against it has a chance
against a real cluster:

* one global resourceVersion counter across kinds, as etcd has;
* LIST with label and field selectors, ``limit``/``continue`` paging over a
  consistent snapshot, ``resourceVersionMatch=Exact``;
* WATCH from a resourceVersion (replaying a bounded event history), from
  nothing (synthetic ADDED events), BOOKMARK events, ``timeoutSeconds``, the
  410 Gone ERROR event once the resourceVersion is compacted, and the
  ADDED/DELETED events an object gets when it starts or stops matching a
  selector;
* optimistic concurrency (409 Conflict on a stale resourceVersion), 404 and
  409 AlreadyExists, every error a ``Status`` object;
* faults: 401 on a bad token, 401/403 deny rules naming verb and resource as
  RBAC does, an outage answering 503 that also breaks open watches.

What it does not do: admission beyond the defaulting of container requests
from limits, graceful deletion (the test sets ``deletionTimestamp`` itself
with :meth:`FakeKubeAPI.update`), strategic-merge list semantics (a PATCH is
applied as a JSON merge patch), JSON Patch, server-side apply, subresources.

The test's event loop runs the server; the client runs in threads.  The sync
methods that change the store (:meth:`create`, :meth:`update`,
:meth:`delete`) may be called from the loop or from another thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Resource:
    """One served resource type (the plural name is the store's ``kind``)."""

    plural: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    model: str  # the client's model class, used to check objects round-trip
    fields: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name RBAC and error messages use: ``pods``, ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_POD_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "status.phase",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.nominatedNodeName",
    }
)

RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("pods", "Pod", "", "v1", True, "V1Pod", _POD_FIELDS),
        Resource("nodes", "Node", "", "v1", False, "V1Node"),
        Resource("persistentvolumes", "PersistentVolume", "", "v1", False, "V1PersistentVolume"),
        Resource("persistentvolumeclaims", "PersistentVolumeClaim", "", "v1", True, "V1PersistentVolumeClaim"),
        Resource("configmaps", "ConfigMap", "", "v1", True, "V1ConfigMap"),
        Resource("leases", "Lease", "coordination.k8s.io", "v1", True, "V1Lease"),
    )
}
METRICS_GROUP, METRICS_VERSION = "metrics.k8s.io", "v1beta1"
_METRICS = Resource("pods", "PodMetrics", METRICS_GROUP, METRICS_VERSION, True, "")


class ApiError(Exception):
    """An error answered as a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    def response(self) -> web.Response:
        return web.json_response(self.status(), status=self.code)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


# --- selectors ---------------------------------------------------------------------------------

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")
_REQUIREMENT = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=|\s+in\s+|\s+notin\s+)\s*(?P<rest>.*?)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One label requirement: ``op`` is one of =, !=, in, notin, exists, !."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def __call__(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values  # != and notin also match a missing label


@dataclass(frozen=True)
class FieldRequirement:
    """One field requirement (a missing field reads as the empty string, as the API server has it)."""

    path: str
    equal: bool
    value: str

    def __call__(self, obj: Obj) -> bool:
        return (_field_value(obj, self.path) == self.value) == self.equal


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` is two requirements)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_key(key: str, selector: str) -> str:
    if not _LABEL_KEY.match(key):
        raise _bad_request(f'unable to parse requirement: invalid label key "{key}" in selector "{selector}"')
    return key


def _check_value(value: str, selector: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise _bad_request(f'unable to parse requirement: invalid label value: "{value}" in selector "{selector}"')
    return value


def parse_label_selector(selector: str) -> list[Requirement]:
    """Parse a label selector (=, ==, !=, in, notin, exists, !exists; comma is AND)."""
    requirements: list[Requirement] = []
    if not selector.strip():
        return requirements
    for raw in _split_top_level(selector):
        part = raw.strip()
        if not part:
            raise _bad_request(f'unable to parse requirement: found "", expected: identifier in "{selector}"')
        if part.startswith("!"):
            key = _check_key(part[1:].strip(), selector)
            requirements.append(Requirement(key, "!"))
            continue
        if _LABEL_KEY.match(part):
            requirements.append(Requirement(part, "exists"))
            continue
        m = _REQUIREMENT.match(part)
        if not m:
            raise _bad_request(f'unable to parse requirement: "{part}" in selector "{selector}"')
        key, op, rest = _check_key(m["key"], selector), m["op"].strip(), m["rest"]
        if op in ("in", "notin"):
            if not (rest.startswith("(") and rest.endswith(")")):
                raise _bad_request(f'unable to parse requirement: found "{rest}", expected: "(" in "{selector}"')
            values = frozenset(_check_value(v.strip(), selector) for v in rest[1:-1].split(","))
            requirements.append(Requirement(key, op, values))
            continue
        value = _check_value(rest, selector)
        requirements.append(Requirement(key, "!=" if op == "!=" else "=", frozenset({value})))
    return requirements


def _field_value(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return str(node).lower()
    return str(node)


def parse_field_selector(selector: str, resource: Resource) -> list[FieldRequirement]:
    """Parse a field selector (``field=value``, ``==``, ``!=``; only the fields the resource supports)."""
    requirements: list[FieldRequirement] = []
    if not selector.strip():
        return requirements
    for raw in selector.split(","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m:
            raise _bad_request(f"invalid selector: '{selector}'; can't understand '{raw}'")
        name, op, value = m.groups()
        if name not in resource.fields:
            raise _bad_request(f"field label not supported: {name}")
        requirements.append(FieldRequirement(name, op != "!=", value))
    return requirements


@dataclass
class _Filter:
    namespace: str | None
    labels: list[Requirement]
    fields: list[FieldRequirement]

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(r(labels) for r in self.labels) and all(r(obj) for r in self.fields)


# --- store -----------------------------------------------------------------------------------


@dataclass
class _Event:
    rv: int
    plural: str
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: Obj  # the object after the change (for DELETED: the last object, carrying the deletion's rv)
    prev: Obj | None  # the object before the change


@dataclass
class _Watcher:
    resource: Resource
    filter: _Filter
    after_rv: int
    pending: deque[tuple[str, Obj]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False  # end the stream cleanly
    broken: bool = False  # drop the connection (an outage)


def _translate(event: _Event, flt: _Filter) -> tuple[str, Obj] | None:
    """The event a selector-filtered watch sees: objects entering or leaving the selection are ADDED/DELETED."""
    before = event.type != "ADDED" and flt.matches(event.prev)
    after = event.type != "DELETED" and flt.matches(event.obj)
    if event.type == "DELETED":
        return ("DELETED", event.obj) if before else None
    if before and after:
        return "MODIFIED", event.obj
    if after:
        return "ADDED", event.obj
    if before:
        return "DELETED", event.obj
    return None


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = _merge_patch(result.get(k), v)
    return result


def _default_requests(pod: Obj) -> None:
    """API-server defaulting: a container with a limit and no request for a resource requests the limit."""
    spec = pod.get("spec") or {}
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        res = c.get("resources") or {}
        limits = res.get("limits") or {}
        if limits:
            requests = dict(res.get("requests") or {})
            for name, q in limits.items():
                requests.setdefault(name, q)
            c["resources"] = {**res, "requests": requests}


_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _bool(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value == "":
        return False
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise _bad_request(f'invalid value for {name}: "{value}"') from None


def _int(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _bad_request(f'invalid value for {name}: "{value}"') from None


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        raise _bad_request(f'resourceVersion: Invalid value: "{value}": must be an integer') from None
    if rv < 0:
        raise _bad_request(f'resourceVersion: Invalid value: "{value}": must be non-negative')
    return rv


@dataclass
class _Route:
    resource: Resource
    namespace: str | None
    name: str | None
    metrics: bool = False


class FakeKubeAPI:
    """The fake API server; see the module docstring for what it enforces."""

    def __init__(self, *, token: str = "fake-token", history: int = 10_000, validate: bool = True) -> None:
        """``history``: events kept for watch replay; ``validate``: check every stored object round-trips
        through the client's models (turn off only for large benchmarks)."""
        self.token = token
        self.user = "system:serviceaccount:collector:collector"  # the identity RBAC messages name
        self.bookmark_interval = 1.0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""
        self._validate = validate
        self._lock = threading.RLock()
        self._rv = 0
        self._oldest = 0  # the oldest resourceVersion a watch or an exact list may start from
        self._store: dict[str, dict[Key, Obj]] = {plural: {} for plural in RESOURCES}
        self._history: deque[_Event] = deque(maxlen=history)
        self._watchers: list[_Watcher] = []
        self._metrics: dict[Key, Obj] = {}
        self._deny: list[tuple[int, str, str]] = []
        self._outage = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._runner: web.AppRunner | None = None
        self._api_client: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr,attr-defined]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        with self._lock:
            for w in self._watchers:
                w.closed = True
                self._wake(w)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def write_kubeconfig(self, path: Path, *, token: str | None = None, namespace: str = "default") -> Path:
        """Write a kubeconfig whose current context ``fake`` points at this server with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token if token is None else token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
            "preferences": {},
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    # --- the store, driven by the test -----------------------------------------------------------

    def create(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (uid, resourceVersion and creationTimestamp set if unset); watches see ADDED."""
        resource = self._resource(kind)
        new = self._normalise(resource, obj)
        meta = new["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _rfc3339(time.time()))
        with self._lock:
            key = self._key(resource, new)
            if key in self._store[kind]:
                raise ValueError(f'{resource.qualified} "{key[1]}" already exists')
            return copy.deepcopy(self._commit(resource, "ADDED", key, new, None))

    def update(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object unconditionally (new resourceVersion); watches see MODIFIED."""
        resource = self._resource(kind)
        new = self._normalise(resource, obj)
        with self._lock:
            key = self._key(resource, new)
            prev = self._store[kind].get(key)
            if prev is None:
                raise KeyError(f'{resource.qualified} "{key[1]}" not found')
            for name in ("uid", "creationTimestamp"):
                if name in prev["metadata"]:
                    new["metadata"].setdefault(name, prev["metadata"][name])
            return copy.deepcopy(self._commit(resource, "MODIFIED", key, new, prev))

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """Remove an object; watches see DELETED carrying the last object (and a pod's metrics go too)."""
        resource = self._resource(kind)
        key = (namespace or "", name) if resource.namespaced else ("", name)
        with self._lock:
            prev = self._store[kind].get(key)
            if prev is None:
                raise KeyError(f'{resource.qualified} "{name}" not found')
            self._commit(resource, "DELETED", key, None, prev)
            if kind == "pods":
                self._metrics.pop(key, None)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        resource = self._resource(kind)
        key = (namespace or "", name) if resource.namespaced else ("", name)
        with self._lock:
            obj = self._store[kind].get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def set_pod_metrics(
        self, namespace: str, name: str, containers: dict[str, dict[str, str]], *, timestamp: float | None = None
    ) -> None:
        """Serve metrics.k8s.io PodMetrics for a pod (window 30s, timestamp now unless given)."""
        ts = _rfc3339(time.time() if timestamp is None else timestamp)
        metrics = {
            "kind": "PodMetrics",
            "apiVersion": f"{METRICS_GROUP}/{METRICS_VERSION}",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": _rfc3339(time.time())},
            "timestamp": ts,
            "window": "30s",
            "containers": [{"name": c, "usage": dict(usage)} for c, usage in containers.items()],
        }
        with self._lock:
            self._metrics[(namespace, name)] = metrics

    # --- faults and observation ------------------------------------------------------------------

    def compact(self) -> None:
        """Make every resourceVersion issued so far too old (410 Gone for watches, exact lists, continues)."""
        with self._lock:
            self._rv += 1
            self._oldest = self._rv
            self._history.clear()

    def deny(self, status: int, *, verb: str = "*", resource: str = "*") -> None:
        """Answer ``status`` (401 or 403) to requests of that verb on that resource.

        ``resource`` is a plural, optionally qualified by its group (``pods.metrics.k8s.io``); an
        unqualified plural matches it in every group.  Verbs are RBAC's: get, list, watch, create,
        update, patch, delete.
        """
        if status not in (401, 403):
            raise ValueError("deny() takes 401 or 403")
        with self._lock:
            self._deny.append((status, verb, resource))

    def allow(self) -> None:
        with self._lock:
            self._deny.clear()

    def outage(self, on: bool) -> None:
        """While on, every request answers 503; turning it on drops the connections of open watches."""
        with self._lock:
            self._outage = on
            if on:
                for w in self._watchers:
                    w.broken = True
                    self._wake(w)

    def watchers(self, kind: str) -> int:
        with self._lock:
            return sum(1 for w in self._watchers if w.resource.plural == kind)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion issued."""
        with self._lock:
            return str(self._rv)

    # --- internals: store ------------------------------------------------------------------------

    @staticmethod
    def _resource(kind: str) -> Resource:
        try:
            return RESOURCES[kind]
        except KeyError:
            raise ValueError(f"unknown kind {kind!r}; one of {sorted(RESOURCES)}") from None

    def _normalise(self, resource: Resource, obj: Obj) -> Obj:
        new = copy.deepcopy(obj)
        new["kind"], new["apiVersion"] = resource.kind, resource.api_version
        meta = new.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise ValueError("metadata.name: Required value: name or generateName is required")
        if resource.namespaced and not meta.get("namespace"):
            raise ValueError(f"{resource.qualified} need metadata.namespace")
        if not resource.namespaced:
            meta.pop("namespace", None)
        if resource.plural == "pods":
            _default_requests(new)
        if self._validate:
            self._check_model(resource, new)
        return new

    def _check_model(self, resource: Resource, obj: Obj) -> None:
        """Fail fast on an object the client's models would reject (what the plugin would trip on)."""
        from kubernetes.client import ApiClient

        if self._api_client is None:
            self._api_client = ApiClient()
        try:
            self._api_client.deserialize(json.dumps(obj), resource.model, "application/json")
        except Exception as exc:
            name = obj["metadata"].get("name")
            raise ValueError(f"{resource.kind} {name!r} does not fit {resource.model}: {exc}") from None

    @staticmethod
    def _key(resource: Resource, obj: Obj) -> Key:
        meta = obj["metadata"]
        return (meta.get("namespace", "") if resource.namespaced else "", meta["name"])

    def _commit(self, resource: Resource, type_: str, key: Key, new: Obj | None, prev: Obj | None) -> Obj:
        """Issue the next resourceVersion for a change, record it and tell the watches (lock held)."""
        self._rv += 1
        if new is None:
            assert prev is not None
            obj = {**prev, "metadata": {**prev["metadata"], "resourceVersion": str(self._rv)}}
            del self._store[resource.plural][key]
        else:
            new["metadata"]["resourceVersion"] = str(self._rv)
            obj = new
            self._store[resource.plural][key] = new
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._oldest = max(self._oldest, self._history[0].rv)
        event = _Event(self._rv, resource.plural, type_, key, obj, prev)
        self._history.append(event)
        for w in self._watchers:
            if w.resource is resource and event.rv > w.after_rv:
                seen = _translate(event, w.filter)
                if seen is not None:
                    w.pending.append(seen)
                    self._wake(w)
        return obj

    def _wake(self, w: _Watcher) -> None:
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            w.wake.set()
        else:
            self._loop.call_soon_threadsafe(w.wake.set)

    def _too_old(self, rv: int) -> ApiError:
        return _gone(f"too old resource version: {rv} ({self._oldest})")

    def _state_at(self, resource: Resource, rv: int) -> dict[Key, Obj]:
        """The objects of a kind as they were at ``rv`` (undoing the remembered events after it)."""
        if rv < self._oldest:
            raise self._too_old(rv)
        if rv > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self._rv}")
        state = dict(self._store[resource.plural])
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.plural != resource.plural:
                continue
            if event.type == "ADDED":
                state.pop(event.key, None)
            else:
                assert event.prev is not None
                state[event.key] = event.prev
        return state

    # --- internals: HTTP -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = {k: v for k, v in request.query.items()}
        with self._lock:
            self.requests.append((request.method, request.path, query))
        try:
            if self._outage:
                raise ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if request.path in ("/version", "/version/"):
                return web.json_response(_VERSION)
            if request.path in ("/api", "/api/"):
                return web.json_response(self._api_versions())
            route = self._route(request.path)
            verb = self._verb(request.method, route, query)
            self._authorise(verb, route)
            if route.metrics:
                return self._serve_metrics(verb, route, query)
            if verb == "watch":
                return await self._watch(request, route, query)
            if verb == "list":
                return web.json_response(self._list(route, query))
            if verb == "get":
                return web.json_response(self._get(route))
            body = await self._body(request) if verb in ("create", "update", "patch") else None
            if verb == "create":
                return web.json_response(self._http_create(route, body), status=201)
            if verb == "update":
                return web.json_response(self._http_update(route, body))
            if verb == "patch":
                return web.json_response(self._http_patch(route, body, request.content_type))
            if verb == "delete":
                return web.json_response(self._http_delete(route))
            raise _method_not_allowed()
        except ApiError as err:
            return err.response()

    def _api_versions(self) -> Obj:
        host = self.url.removeprefix("http://")
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
        }

    @staticmethod
    def _route(path: str) -> _Route:
        parts = [p for p in path.split("/") if p]
        not_found = ApiError(404, "NotFound", "the server could not find the requested resource")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 2:
            raise not_found
        plural, name = rest[0], (rest[1] if len(rest) == 2 else None)
        if (group, version, plural) == (METRICS_GROUP, METRICS_VERSION, "pods"):
            if name is not None and namespace is None:
                raise not_found
            return _Route(_METRICS, namespace, name, metrics=True)
        resource = RESOURCES.get(plural)
        if resource is None or (resource.group, resource.version) != (group, version):
            raise not_found
        if not resource.namespaced and namespace is not None:
            raise not_found
        if resource.namespaced and namespace is None and name is not None:
            raise not_found
        return _Route(resource, namespace, name)

    @staticmethod
    def _verb(method: str, route: _Route, query: dict[str, str]) -> str:
        collection = route.name is None
        if method == "GET":
            if _bool(query, "watch"):
                return "watch"
            return "list" if collection else "get"
        verbs = {
            ("POST", True): "create",
            ("PUT", False): "update",
            ("PATCH", False): "patch",
            ("DELETE", False): "delete",
        }
        verb = verbs.get((method, collection))
        # Creating needs a namespace for a namespaced kind: POST /api/v1/pods is not allowed.
        if verb is None or (verb == "create" and route.resource.namespaced and route.namespace is None):
            raise _method_not_allowed()
        return verb

    def _authorise(self, verb: str, route: _Route) -> None:
        r = route.resource
        with self._lock:
            rules = list(self._deny)
        for status, rule_verb, rule_resource in rules:
            if rule_verb not in ("*", verb) or rule_resource not in ("*", r.plural, r.qualified):
                continue
            if status == 401:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            subject = f'{r.qualified} "{route.name}"' if route.name else r.qualified
            scope = f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
            message = (
                f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{r.plural}" '
                f'in API group "{r.group}" {scope}'
            )
            details: Obj = {"kind": r.plural}
            if route.name:
                details["name"] = route.name
            if r.group:
                details["group"] = r.group
            raise ApiError(403, "Forbidden", message, details)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad_request(f"the body of the request was in an unknown format: {exc}") from None

    def _not_found(self, route: _Route) -> ApiError:
        r = route.resource
        details: Obj = {"name": route.name, "kind": r.plural}
        if r.group:
            details["group"] = r.group
        return ApiError(404, "NotFound", f'{r.qualified} "{route.name}" not found', details)

    def _route_key(self, route: _Route) -> Key:
        assert route.name is not None
        return (route.namespace or "", route.name)

    def _get(self, route: _Route) -> Obj:
        with self._lock:
            obj = self._store[route.resource.plural].get(self._route_key(route))
            if obj is None:
                raise self._not_found(route)
            return obj

    def _list(self, route: _Route, query: dict[str, str]) -> Obj:
        r = route.resource
        flt = _Filter(
            route.namespace,
            parse_label_selector(query.get("labelSelector", "")),
            parse_field_selector(query.get("fieldSelector", ""), r),
        )
        limit = _int(query, "limit") or 0
        token = query.get("continue", "")
        rv_param, match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
        if match and not rv_param:
            raise _bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        if match and token:
            raise _bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for continue")
        if match not in ("", "Exact", "NotOlderThan"):
            raise _bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        with self._lock:
            if token:
                rv, start = self._decode_continue(token)
                if rv < self._oldest:
                    raise _gone(
                        "The provided continue parameter is too old to display a consistent list result. You can "
                        "start a new list without the continue parameter."
                    )
                state = self._state_at(r, rv)
            elif match == "Exact":
                rv, start = _parse_rv(rv_param), None
                if rv == 0:
                    raise _bad_request(
                        'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden '
                        'for resourceVersion "0"'
                    )
                state = self._state_at(r, rv)
            else:
                if rv_param:
                    _parse_rv(rv_param)
                rv, start, state = self._rv, None, dict(self._store[r.plural])
        keys = sorted(k for k in state if (start is None or k > start))
        items = [state[k] for k in keys if flt.matches(state[k])]
        meta: Obj = {"resourceVersion": str(rv)}
        if limit > 0 and len(items) > limit:
            items, rest = items[:limit], len(items) - limit
            last = items[-1]["metadata"]
            meta["continue"] = self._encode_continue(rv, (last.get("namespace", ""), last["name"]))
            meta["remainingItemCount"] = rest
        return {
            "kind": f"{r.kind}List",
            "apiVersion": r.api_version,
            "metadata": meta,
            "items": [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items],
        }

    @staticmethod
    def _encode_continue(rv: int, key: Key) -> str:
        raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)})
        return base64.urlsafe_b64encode(raw.encode()).decode()

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, Key]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            rv, (ns, name) = int(data["rv"]), data["start"]
            return rv, (str(ns), str(name))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _bad_request("continue key is not valid: incorrect encoded start resourceVersion") from None

    def _http_create(self, route: _Route, body: Any) -> Obj:
        r = route.resource
        obj = self._check_body(route, body)
        meta = obj.setdefault("metadata", {})
        if route.namespace is not None:
            meta.setdefault("namespace", route.namespace)
        if "resourceVersion" in meta:
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        try:
            return self.create(r.plural, obj)
        except ValueError as exc:
            if "already exists" in str(exc):
                details = {"name": meta.get("name"), "kind": r.plural, **({"group": r.group} if r.group else {})}
                raise ApiError(409, "AlreadyExists", str(exc), details) from None
            raise ApiError(422, "Invalid", f'{r.kind} "{meta.get("name", "")}" is invalid: {exc}') from None

    def _check_body(self, route: _Route, body: Any) -> Obj:
        r = route.resource
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        if body.get("kind", r.kind) != r.kind or body.get("apiVersion", r.api_version) != r.api_version:
            raise _bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
                f"({r.api_version})"
            )
        meta = body.get("metadata") or {}
        if route.namespace is not None and meta.get("namespace") not in (None, "", route.namespace):
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if route.name is not None and meta.get("name") not in (None, route.name):
            raise _bad_request("the name of the object does not match the name on the URL")
        return body

    def _replace(self, route: _Route, obj: Obj) -> Obj:
        """Replace with optimistic concurrency: a resourceVersion in the body must be the current one."""
        r = route.resource
        meta = obj.setdefault("metadata", {})
        meta["name"] = route.name
        if route.namespace is not None:
            meta["namespace"] = route.namespace
        with self._lock:
            current = self._store[r.plural].get(self._route_key(route))
            if current is None:
                raise self._not_found(route)
            given = meta.get("resourceVersion")
            if given not in (None, "") and given != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {r.qualified} "{route.name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": route.name, "kind": r.plural, **({"group": r.group} if r.group else {})},
                )
            if meta.get("uid") not in (None, "", current["metadata"].get("uid")):
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {meta['uid']}")
            meta.pop("resourceVersion", None)
            try:
                return self.update(r.plural, obj)
            except ValueError as exc:
                raise ApiError(422, "Invalid", f'{r.kind} "{route.name}" is invalid: {exc}') from None

    def _http_update(self, route: _Route, body: Any) -> Obj:
        return self._replace(route, self._check_body(route, body))

    def _http_patch(self, route: _Route, body: Any, content_type: str) -> Obj:
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
            )
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was in an unknown format")
        with self._lock:
            current = copy.deepcopy(self._get(route))  # the stored object and its history stay untouched
            patched = _merge_patch(current, body)
            if (body.get("metadata") or {}).get("resourceVersion") is None:
                patched["metadata"].pop("resourceVersion", None)
            return self._replace(route, patched)

    def _http_delete(self, route: _Route) -> Obj:
        with self._lock:
            obj = self._get(route)
            self.delete(route.resource.plural, route.namespace, obj["metadata"]["name"])
            return obj

    def _serve_metrics(self, verb: str, route: _Route, query: dict[str, str]) -> web.Response:
        if verb not in ("get", "list"):
            raise _method_not_allowed()
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), _METRICS)
        with self._lock:
            pods = self._store["pods"]
            items = []
            for key in sorted(self._metrics):
                if route.namespace is not None and key[0] != route.namespace:
                    continue
                if route.name is not None and key[1] != route.name:
                    continue
                m = copy.deepcopy(self._metrics[key])
                pod = pods.get(key)
                if pod is not None and pod["metadata"].get("labels"):
                    m["metadata"]["labels"] = dict(pod["metadata"]["labels"])
                if _Filter(None, labels, fields).matches(m):
                    items.append(m)
        if route.name is not None:
            if not items:
                raise ApiError(404, "NotFound", f'podmetrics.metrics.k8s.io "{route.namespace}/{route.name}" not found')
            return web.json_response(items[0])
        return web.json_response(
            {
                "kind": "PodMetricsList",
                "apiVersion": f"{METRICS_GROUP}/{METRICS_VERSION}",
                "metadata": {},
                "items": [{k: v for k, v in m.items() if k not in ("kind", "apiVersion")} for m in items],
            }
        )

    # --- watch ---------------------------------------------------------------------------------

    async def _watch(self, request: web.Request, route: _Route, query: dict[str, str]) -> web.StreamResponse:
        r = route.resource
        flt = _Filter(
            route.namespace,
            parse_label_selector(query.get("labelSelector", "")),
            parse_field_selector(query.get("fieldSelector", ""), r),
        )
        if route.name is not None:  # the deprecated watch of one object: a metadata.name field selector
            flt.fields.append(FieldRequirement("metadata.name", True, route.name))
        timeout = _int(query, "timeoutSeconds")
        bookmarks = _bool(query, "allowWatchBookmarks")
        rv_param = query.get("resourceVersion", "")
        rv = _parse_rv(rv_param) if rv_param else 0
        gone: ApiError | None = None
        with self._lock:
            w = _Watcher(r, flt, after_rv=rv)
            if rv == 0:  # "" or "0": the current state as synthetic ADDED events, then changes
                state = self._store[r.plural]
                w.pending.extend(("ADDED", state[k]) for k in sorted(state) if flt.matches(state[k]))
                self._watchers.append(w)
            elif rv < self._oldest:
                gone = self._too_old(rv)
            else:
                for event in self._history:
                    if event.rv > rv and event.plural == r.plural:
                        seen = _translate(event, flt)
                        if seen is not None:
                            w.pending.append(seen)
                self._watchers.append(w)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if gone is not None:
            await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        try:
            await self._stream(request, response, w, timeout, bookmarks)
        finally:
            with self._lock:
                self._watchers.remove(w)
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, w: _Watcher, timeout: int | None, bookmarks: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        next_bookmark = loop.time() + self.bookmark_interval
        while True:
            w.wake.clear()
            with self._lock:
                items = list(w.pending)
                w.pending.clear()
                broken, closed = w.broken, w.closed
            if broken:  # an outage: the connection drops mid-stream, as when the API server dies
                if request.transport is not None:
                    request.transport.abort()
                return
            if items:
                lines = [json.dumps({"type": t, "object": obj}) for t, obj in items]
                await response.write(("\n".join(lines) + "\n").encode())
            now = loop.time()
            if closed or (deadline is not None and now >= deadline):
                await response.write_eof()
                return
            if bookmarks and now >= next_bookmark:
                with self._lock:
                    rv = None if w.pending else self._rv  # never ahead of an event still to be sent
                if rv is not None:
                    mark = {
                        "kind": w.resource.kind,
                        "apiVersion": w.resource.api_version,
                        "metadata": {"resourceVersion": str(rv)},
                    }
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                next_bookmark = now + self.bookmark_interval
                continue
            waits = [0.5]
            if deadline is not None:
                waits.append(deadline - now)
            if bookmarks:
                waits.append(next_bookmark - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.wake.wait(), max(0.0, min(waits)))


def _method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fake",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
