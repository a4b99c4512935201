"""The ``kubernetes_lease`` coordinator: one leader among replicas, elected through a Lease.

The replicas of a collector share one ``coordination.k8s.io/v1`` Lease and
follow client-go's leader election (docs/components/kubernetes-lease-coordinator.md):

* every ``retry_period`` each replica reads the Lease; the holder renews it
  (a PUT carrying the resourceVersion it read, so two writers never both
  win); a standby takes it over only once the holder's record has stayed
  unchanged for ``leaseDurationSeconds`` *measured on the standby's own
  clock since it first saw that record* -- clocks of different machines are
  never compared;
* fencing: :meth:`LeaseCoordinator.is_leader` is True only until
  ``renew_deadline`` after the start of the last successful renewal.  That is
  shorter than the lease duration a standby waits out after the last renewal
  it saw, so a replica that cannot renew (partitioned, stalled) stops
  producing before any other replica may start;
* the pull receivers' watermarks travel with the Lease (annotations written in
  the same conditional PUT as a renewal, so only the holder can move them) or
  in a ConfigMap, so a new leader continues where the old one stopped;
* on shutdown the leader stops claiming leadership, then releases the Lease
  (holder cleared, as client-go's ReleaseOnCancel), so a standby takes over
  within a retry period instead of a lease duration.

The official client blocks, so every API call runs in a thread; the requests
are plain JSON so that the times are written exactly as the API server's
MicroTime format wants them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from collector.api import ComponentContext, ConfigError, Coordinator, Duration, format_duration
from collector_plugin_kubernetes.client import IN_CLUSTER_ENV, ClientConfig, describe, new_api_client, status_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from kubernetes.client import ApiClient

__all__ = ["WATERMARK_PREFIX", "LeaseConfig", "LeaseCoordinator", "NotLeaderError", "watermark_key"]

#: Annotation (Lease) or key prefix (ConfigMap) of each pull receiver's shared watermark.
WATERMARK_PREFIX = "collector.openmeter.io/watermark."
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_CONFLICT_RETRIES = 3
Obj = dict[str, Any]


class NotLeaderError(RuntimeError):
    """A write that only the Lease holder may make was asked of a replica that does not lead."""


class LeaseConfig(ClientConfig):
    """Leadership through a ``coordination.k8s.io`` Lease, with the watermarks handed over through it."""

    namespace: str | None = Field(
        None,
        pattern=_DNS_LABEL,
        max_length=63,
        description="Namespace of the Lease. Unset: $POD_NAMESPACE (the downward API), else the pod's own "
        "namespace (service-account file), else the kubeconfig context's namespace, else `default`.",
    )
    name: str = Field(
        "collector",
        pattern=_DNS_SUBDOMAIN,
        max_length=242,
        description="Name of the Lease; one per group of replicas that share the work.",
    )
    identity: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="This replica's name in the Lease's holderIdentity; unique per replica. Unset: $POD_NAME, "
        "else the host name plus a random suffix.",
    )
    lease_duration: Duration = Field(
        15.0,
        gt=0,
        description="How long a standby waits, after it last saw the holder renew, before taking the Lease over "
        "(written to the Lease as whole seconds, rounded up).",
    )
    renew_deadline: Duration = Field(
        10.0,
        gt=0,
        description="The leader stops leading when it has not renewed for this long; shorter than lease_duration, "
        "so it stops before anyone else may start.",
    )
    retry_period: Duration = Field(
        2.0,
        gt=0,
        description="How often each replica tries to acquire or renew the Lease; shorter than renew_deadline.",
    )
    watermarks: Literal["lease", "configmap"] = Field(
        "lease",
        description="Where the pull receivers' watermarks are shared: `lease` (annotations on the Lease, written "
        "atomically with a renewal) or `configmap` (the ConfigMap `<name>-watermarks` in the same namespace).",
    )

    @model_validator(mode="after")
    def _check_timing(self) -> LeaseConfig:
        if self.renew_deadline >= self.lease_duration:
            raise ValueError(
                f"renew_deadline ({format_duration(self.renew_deadline)}) must be shorter than lease_duration "
                f"({format_duration(self.lease_duration)}): the leader must stop before a standby may take over"
            )
        if self.retry_period >= self.renew_deadline:
            raise ValueError(
                f"retry_period ({format_duration(self.retry_period)}) must be shorter than renew_deadline "
                f"({format_duration(self.renew_deadline)}), or a single slow renewal loses the lead"
            )
        return self


# -- pure helpers ---------------------------------------------------------------------------------


def watermark_key(receiver_id: str) -> str:
    """The annotation (Lease) or data key (ConfigMap) of ``receiver_id``'s watermark."""
    return WATERMARK_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", ".", receiver_id)


def micro_time(t: float) -> str:
    """A Kubernetes MicroTime (``2026-12-06T13:00:00.123456Z``) for unix seconds ``t``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_watermark(end: float) -> str:
    """RFC 3339 when that reads back exactly, else the float itself (no window is ever moved)."""
    text = micro_time(end)
    return text if parse_watermark(text) == end else repr(end)


def parse_watermark(text: str) -> float:
    """Unix seconds from RFC 3339 or a plain number; ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"watermark {text!r} has no time zone")
    return value.timestamp()


def default_identity() -> str:
    """$POD_NAME (the downward API), else the host name plus a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(3)}"


def resolve_namespace(config: LeaseConfig) -> str:
    """The Lease's namespace: configured, $POD_NAMESPACE, the pod's own, the kubeconfig context's, `default`.

    Blocking (may read the kubeconfig): call it in a thread.
    """
    if config.namespace:
        return config.namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    in_cluster = config.kubeconfig is None and config.context is None and os.environ.get(IN_CLUSTER_ENV)
    if in_cluster:
        try:
            found = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
        except OSError:
            found = ""
        return found or "default"
    from kubernetes import config as kconfig

    try:
        path = str(config.kubeconfig) if config.kubeconfig is not None else None
        contexts, active = kconfig.list_kube_config_contexts(config_file=path)
    except Exception:  # the client's own loading names the problem; a namespace default is all we need here
        return "default"
    chosen = next((c for c in contexts or [] if c.get("name") == config.context), None) if config.context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def _lease_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


# -- the API calls --------------------------------------------------------------------------------


@dataclass
class _Objects:
    """Plain-JSON GET/POST/PUT of the Lease and the watermark ConfigMap (blocking; run in threads)."""

    client: ApiClient
    namespace: str
    name: str
    timeout: float

    @property
    def server(self) -> str:
        return str(self.client.configuration.host)

    def _lease_path(self, named: bool) -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{self.name}" if named else base

    def _configmap_path(self, named: bool) -> str:
        base = f"/api/v1/namespaces/{self.namespace}/configmaps"
        return f"{base}/{self.name}-watermarks" if named else base

    def _request(self, method: str, path: str, body: Obj | None = None, timeout: float | None = None) -> Obj:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self.client.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self.client.call_api(*request, _request_timeout=timeout or self.timeout)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        data = json.loads(response.data or b"{}")
        if not isinstance(data, dict):
            raise ValueError(f"{method} {path}: the API server answered JSON that is not an object")
        return data

    def get_lease(self) -> Obj:
        return self._request("GET", self._lease_path(True))

    def create_lease(self, lease: Obj) -> Obj:
        return self._request("POST", self._lease_path(False), lease)

    def replace_lease(self, lease: Obj) -> Obj:
        return self._request("PUT", self._lease_path(True), lease)

    def get_configmap(self) -> Obj:
        return self._request("GET", self._configmap_path(True))

    def create_configmap(self, configmap: Obj, timeout: float) -> Obj:
        return self._request("POST", self._configmap_path(False), configmap, timeout)

    def replace_configmap(self, configmap: Obj, timeout: float) -> Obj:
        return self._request("PUT", self._configmap_path(True), configmap, timeout)

    def close(self) -> None:
        self.client.close()


# -- the coordinator ------------------------------------------------------------------------------


class LeaseCoordinator(Coordinator[LeaseConfig]):
    """Leads while it holds the Lease and renewed it less than ``renew_deadline`` ago."""

    def __init__(self, ctx: ComponentContext, config: LeaseConfig) -> None:
        super().__init__(ctx, config)
        self.identity = config.identity or default_identity()
        self.namespace: str | None = config.namespace
        self._api: _Objects | None = None
        self._lock = asyncio.Lock()  # one Lease or ConfigMap write at a time: ours never conflict with ours
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Fencing: the monotonic time at which the last successful renewal was *sent*.
        self._renewed_at: float | None = None
        self._was_leader = False
        self._loss_reason: str | None = None
        # What this replica saw of the Lease: client-go's observedRecord / observedTime.
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._holder: str | None = None
        self._transitions = 0
        self._watermarks: dict[str, str] = {}  # the shared watermarks as last read or written
        self._problem: str | None = None
        self._problem_key: object = None
        m = ctx.metrics
        leader = m.gauge("kubernetes_lease_leader", "1 while this replica leads through its Lease.", ["coordinator"])
        leader.labels(coordinator=ctx.id).set_function(lambda: 1.0 if self.is_leader() else 0.0)
        self._m_transitions = m.counter(
            "kubernetes_lease_transitions", "Times this replica gained or lost leadership.", ["coordinator"]
        ).labels(coordinator=ctx.id)

    # -- the contract -------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        renewed = self._renewed_at
        if renewed is None or self._stopping:
            return False
        return self.ctx.clock.monotonic() < renewed + self.config.renew_deadline

    async def load_watermark(self, receiver_id: str) -> float | None:
        """While leading, the copy read with the Lease (authoritative: only the holder writes it);
        otherwise a fresh read, falling back to the last copy seen when the API cannot be read."""
        key = watermark_key(receiver_id)
        value = self._watermarks.get(key)
        if not self.is_leader() and self._api is not None:
            try:
                value = (await self._read_watermarks()).get(key)
            except Exception as exc:
                self.log.warning(
                    "coordinator %s: cannot read the shared watermark of %s (%s); using the last one seen",
                    self.id, receiver_id, self._describe(exc, "read", configmap=self.config.watermarks == "configmap"),
                )  # fmt: skip
        if value is None:
            return None
        try:
            return parse_watermark(value)
        except ValueError:
            self.log.error("coordinator %s: the shared watermark %s=%r is not a time; ignoring it", self.id, key, value)
            return None

    async def save_watermark(self, receiver_id: str, end: float) -> None:
        """Write ``end`` only while holding the Lease; raises :class:`NotLeaderError` otherwise."""
        key, value = watermark_key(receiver_id), format_watermark(end)
        async with self._lock:
            self._check_leading(f"move the watermark of {receiver_id}")
            try:
                if self.config.watermarks == "lease":
                    await self._save_on_lease(key, value)
                else:
                    await self._save_on_configmap(key, value)
            except RuntimeError:  # NotLeaderError, or a message already written for people
                raise
            except Exception as exc:
                raise RuntimeError(
                    self._describe(exc, "save a watermark on", configmap=self.config.watermarks == "configmap")
                ) from None
            self._watermarks[key] = value

    def health(self) -> dict[str, Any]:
        out = super().health()
        out.update(
            leader=self.is_leader(),
            holder=self._holder,
            identity=self.identity,
            lease=f"{self.namespace or '?'}/{self.config.name}",
            transitions=self._transitions,
        )
        if self._problem is not None:
            out["ready"] = False
            out["reason"] = self._problem
        return out

    # -- lifecycle ------------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"lease-{self.id}"),
            asyncio.create_task(self._fence(), name=f"lease-fence-{self.id}"),
        ]

    async def _shutdown(self) -> None:
        self._loss_reason = "the collector is shutting down; releasing it"
        self._stopping = True  # no leadership claimed from here on, before the release below
        self._observe()
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self._call_timeout() + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        api = self._api
        if api is None:
            return
        # Even without a lead seen: a takeover interrupted by the shutdown may have landed.
        await self._release(api)
        self._api = None
        await asyncio.to_thread(api.close)

    # -- the election loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._round()
            except Exception as exc:  # a bug must show in /health, and must not end the elections
                self.log.exception("coordinator %s: unexpected error in the Lease loop", self.id)
                self._set_problem(f"unexpected error in the Lease loop: {type(exc).__name__}: {exc}")
            self._observe()
            await self._pause(self.config.retry_period)

    async def _fence(self) -> None:
        """Notices the renew deadline passing when it passes (log line), not at the next round."""
        while not self._stopping:
            self._observe()
            wait = self.config.retry_period
            renewed = self._renewed_at
            if renewed is not None:
                left = renewed + self.config.renew_deadline - self.ctx.clock.monotonic()
                if left > 0:
                    wait = min(wait, left)
            await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        if self._stopping:
            return
        waits = [asyncio.ensure_future(self.ctx.clock.sleep(seconds)), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _round(self) -> None:
        if self._api is None and not await self._connect():
            return
        async with self._lock:
            if not self._stopping:
                await self._acquire_or_renew()

    async def _connect(self) -> bool:
        try:
            self._api, self.namespace = await asyncio.to_thread(self._open)
        except ConfigError as exc:
            self._set_problem(str(exc))
            return False
        return True

    def _open(self) -> tuple[_Objects, str]:
        client = new_api_client(self.config, f"coordinators.{self.id}")
        namespace = resolve_namespace(self.config)
        return _Objects(client, namespace, self.config.name, self._call_timeout()), namespace

    def _call_timeout(self) -> float:
        # A Lease call slower than the renew deadline is useless: the lead is gone by then.
        return min(self.config.request_timeout, self.config.renew_deadline)

    async def _call(self, fn: Callable[..., Obj], *args: Any) -> Obj:
        return await asyncio.to_thread(fn, *args)

    async def _acquire_or_renew(self) -> None:
        """One round of client-go's tryAcquireOrRenew."""
        api = self._api
        assert api is not None
        clock = self.ctx.clock
        try:
            lease: Obj | None = await self._call(api.get_lease)
        except Exception as exc:
            if status_of(exc) != 404:
                self._api_failed(exc, "read")
                return
            lease = None
        if lease is None:
            sent = clock.monotonic()
            try:
                created = await self._call(api.create_lease, self._new_lease())
            except Exception as exc:
                if status_of(exc) == 409:  # another replica created it first: a standby this round
                    self._set_problem(None)
                    return
                self._api_failed(exc, "create")
                return
            await self._claim(created, sent)
            return
        now = clock.monotonic()
        self._note(lease, now)
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            if self._renewed_at is not None:
                self._drop(f"it is now held by {holder}")
            duration = spec.get("leaseDurationSeconds") or _lease_seconds(self.config.lease_duration)
            if now < self._observed_at + float(duration):
                self._set_problem(None)  # a healthy standby
                return
        if holder != self.identity:
            spec["acquireTime"] = micro_time(clock.time())
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = _lease_seconds(self.config.lease_duration)
        spec["renewTime"] = micro_time(clock.time())
        sent = clock.monotonic()
        try:
            updated = await self._call(api.replace_lease, lease)
        except Exception as exc:
            if status_of(exc) == 409:
                # Someone wrote the Lease between our read and our write: they won this round.
                self.log.debug("coordinator %s: the Lease changed under us (409); not leading this round", self.id)
                self._set_problem(None)
                return
            self._api_failed(exc, "update")
            return
        await self._claim(updated, sent)

    async def _claim(self, lease: Obj, sent: float) -> None:
        """We hold the Lease as of ``sent``; lead (in configmap mode: once the watermarks are read)."""
        self._note(lease, self.ctx.clock.monotonic())
        self._observe()  # a deadline that passed unnoticed is a loss before this gain
        if self.config.watermarks == "configmap" and not self.is_leader():
            # Only the holder writes the ConfigMap, so the copy read now stays right while we lead.
            try:
                self._watermarks = await self._read_watermarks()
            except Exception as exc:
                self._api_failed(exc, "read", configmap=True)
                return
        self._renewed_at = sent
        self._set_problem(None)
        self._observe()

    def _new_lease(self) -> Obj:
        now = micro_time(self.ctx.clock.time())
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.config.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "collector"},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": _lease_seconds(self.config.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _note(self, lease: Obj, now: float) -> None:
        """Remember the Lease as seen at ``now``; a changed record restarts the standby's wait."""
        spec = lease.get("spec") or {}
        record = tuple(
            spec.get(k)
            for k in ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions", "leaseDurationSeconds")
        )
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self._holder = spec.get("holderIdentity") or None
        self._transitions = int(spec.get("leaseTransitions") or 0)
        if self.config.watermarks == "lease":
            annotations = (lease.get("metadata") or {}).get("annotations") or {}
            self._watermarks = {k: str(v) for k, v in annotations.items() if k.startswith(WATERMARK_PREFIX)}

    # -- leadership changes, problems ----------------------------------------------------------------

    def _observe(self) -> None:
        """Log and count a change of :meth:`is_leader`, whatever made it change."""
        leader = self.is_leader()
        if leader == self._was_leader:
            return
        self._was_leader = leader
        self._m_transitions.inc()
        where = f"the Lease {self.config.name} in namespace {self.namespace}"
        if leader:
            self._loss_reason = None
            self.log.info(
                "coordinator %s: leading: holding %s as %s (lease transitions: %d)",
                self.id, where, self.identity, self._transitions,
            )  # fmt: skip
            return
        reason = self._loss_reason
        if reason is None:
            failed = f": {self._problem}" if self._problem else " (no successful renewal)"
            reason = f"renew failed for {format_duration(self.config.renew_deadline)}{failed}"
        if self._stopping:
            # Giving the Lease up on shutdown is the normal way out, not a problem.
            self.log.info("coordinator %s: stepping down from %s: %s", self.id, where, reason)
        else:
            self.log.warning("coordinator %s: lost %s: %s", self.id, where, reason)
        self._renewed_at = None
        self._loss_reason = None

    def _drop(self, reason: str) -> None:
        self._loss_reason = reason
        self._renewed_at = None
        self._observe()

    def _set_problem(self, problem: str | None, key: object = None) -> None:
        """Show ``problem`` in /health; log it when its ``key`` (default: the text) is new, not every retry."""
        if problem is None:
            if self._problem is not None:
                self.log.info(
                    "coordinator %s: the Lease %s/%s is usable again", self.id, self.namespace, self.config.name
                )
            self._problem = self._problem_key = None
            return
        key = problem if key is None else key
        if key != self._problem_key:
            self.log.error(
                "coordinator %s: %s; retrying every %s", self.id, problem, format_duration(self.config.retry_period)
            )
        self._problem, self._problem_key = problem, key

    def _api_failed(self, exc: BaseException, verb: str, *, configmap: bool = False) -> None:
        # Keyed by the object and the status, not the socket error nor the verb: an outage that begins during
        # a renewal's write and goes on failing its reads is one problem, logged once
        # (docs/components/kubernetes-lease-coordinator.md, "Health, logs and metrics").
        self._set_problem(self._describe(exc, verb, configmap=configmap), (configmap, status_of(exc)))

    def _describe(self, exc: BaseException, verb: str, *, configmap: bool = False) -> str:
        """One actionable line (client.describe), naming what RBAC must grant when the answer is 403."""
        name = f"{self.config.name}-watermarks" if configmap else self.config.name
        what = f"{verb} the {'ConfigMap' if configmap else 'Lease'} {name} in namespace {self.namespace}"
        text = describe(exc, what, self._api.server if self._api is not None else None)
        if status_of(exc) == 403:
            resource = 'configmaps (API group "")' if configmap else "leases (API group coordination.k8s.io)"
            text += f"; the coordinator needs get, create and update on {resource}"
        return text

    def _check_leading(self, what: str) -> None:
        if not self.is_leader():
            raise NotLeaderError(
                f"coordinator {self.id}: will not {what}: this replica ({self.identity}) does not hold the Lease "
                f"{self.namespace}/{self.config.name}"
            )

    # -- watermarks ---------------------------------------------------------------------------------

    async def _read_watermarks(self) -> dict[str, str]:
        api = self._api
        assert api is not None
        if self.config.watermarks == "lease":
            annotations = ((await self._call(api.get_lease)).get("metadata") or {}).get("annotations") or {}
            return {k: str(v) for k, v in annotations.items() if k.startswith(WATERMARK_PREFIX)}
        try:
            data = (await self._call(api.get_configmap)).get("data") or {}
        except Exception as exc:
            if status_of(exc) == 404:
                return {}
            raise
        return {k: str(v) for k, v in data.items() if k.startswith(WATERMARK_PREFIX)}

    async def _save_on_lease(self, key: str, value: str) -> None:
        """Annotation and renewal in one conditional PUT: it succeeds only if we still hold the Lease."""
        api = self._api
        assert api is not None
        clock = self.ctx.clock
        for _ in range(_CONFLICT_RETRIES):
            lease = await self._call(api.get_lease)
            self._note(lease, clock.monotonic())
            holder = (lease.get("spec") or {}).get("holderIdentity") or ""
            if holder != self.identity:
                self._drop(f"it is now held by {holder or 'nobody'}")
            self._check_leading("move a watermark")
            metadata = lease.setdefault("metadata", {})
            metadata.setdefault("annotations", {})[key] = value
            spec = lease.setdefault("spec", {})
            spec["renewTime"] = micro_time(clock.time())
            spec["leaseDurationSeconds"] = _lease_seconds(self.config.lease_duration)
            sent = clock.monotonic()
            try:
                updated = await self._call(api.replace_lease, lease)
            except Exception as exc:
                if status_of(exc) == 409:
                    continue
                raise
            self._note(updated, clock.monotonic())
            self._renewed_at = sent
            return
        raise RuntimeError(f"the Lease {self.namespace}/{self.config.name} kept changing (409 Conflict) while saving")

    async def _save_on_configmap(self, key: str, value: str) -> None:
        """Conditional writes of the ConfigMap, each sent only while leading and bounded by the lead left."""
        api = self._api
        assert api is not None
        for _ in range(_CONFLICT_RETRIES):
            try:
                configmap: Obj | None = await self._call(api.get_configmap)
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
                configmap = None
            self._check_leading("move a watermark")
            assert self._renewed_at is not None
            left = self._renewed_at + self.config.renew_deadline - self.ctx.clock.monotonic()
            timeout = max(0.001, min(self._call_timeout(), left))
            try:
                if configmap is None:
                    body: Obj = {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": f"{self.config.name}-watermarks",
                            "namespace": self.namespace,
                            "labels": {"app.kubernetes.io/managed-by": "collector"},
                        },
                        "data": {key: value},
                    }
                    await self._call(api.create_configmap, body, timeout)
                else:
                    configmap.setdefault("data", {})[key] = value
                    await self._call(api.replace_configmap, configmap, timeout)
            except Exception as exc:
                if status_of(exc) == 409:
                    continue
                raise
            return
        raise RuntimeError(
            f"the ConfigMap {self.namespace}/{self.config.name}-watermarks kept changing (409 Conflict) while saving"
        )

    async def _release(self, api: _Objects) -> None:
        """Clear the holder (client-go's ReleaseOnCancel) so that a standby need not wait out the lease."""
        async with self._lock:
            for _ in range(_CONFLICT_RETRIES):
                try:
                    lease = await self._call(api.get_lease)
                    spec = lease.setdefault("spec", {})
                    if (spec.get("holderIdentity") or "") != self.identity:
                        return
                    now = micro_time(self.ctx.clock.time())
                    spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
                    released = await self._call(api.replace_lease, lease)
                except Exception as exc:
                    if status_of(exc) == 409:
                        continue
                    self.log.warning(
                        "coordinator %s: could not release the Lease (%s); a standby takes over after %s",
                        self.id, self._describe(exc, "release"), format_duration(self.config.lease_duration),
                    )  # fmt: skip
                    return
                self._note(released, self.ctx.clock.monotonic())
                self.log.info("coordinator %s: released the Lease %s/%s", self.id, self.namespace, self.config.name)
                return
