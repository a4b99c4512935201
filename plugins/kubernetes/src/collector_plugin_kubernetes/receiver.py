"""The ``kubernetes`` receiver: exactly what ran, per pod and window, as CloudEvents.

Built on the pull-receiver framework (windows, watermarks, backfill, retries,
leadership).  This module keeps the cluster's pods (and optionally nodes and
volumes) in a :class:`~collector_plugin_kubernetes.tracker.Tracker` fed by
list+watch informers, and turns one window into one record per object that
ran in it (docs/components/kubernetes-receiver.md):

* a window is billed only when every informer is complete through its end
  plus ``offset`` -- during an API outage, or without RBAC permission, the
  window waits and is retried; it is never committed with missing data;
* seconds run come from container start and finish times
  (docs/components/kubernetes-accounting.md), so a 5-second job is billed
  5 seconds, and a window collected late (backfill) is billed the same;
* the id is derived from the object's uid and the window start: a replay, a
  backfill or a new leader sends the same ids.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Any

from collector.api import (
    CompiledMapping,
    ConfigError,
    Meta,
    PullReceiver,
    RetryableError,
    Window,
    compile_expression,
    format_time,
)
from collector_plugin_kubernetes.client import describe, new_api_client
from collector_plugin_kubernetes.config import KubernetesReceiverConfig
from collector_plugin_kubernetes.informer import Informer
from collector_plugin_kubernetes.quantity import QuantityError, parse_quantity
from collector_plugin_kubernetes.tracker import PODS, Sample, Tracker

RECONNECT_SECONDS = 30.0
_FIELD = re.compile(r"[^A-Za-z0-9]+")


class WindowNotComplete(RetryableError):
    """An informer's cache is not known complete through the window: the window waits."""


def resource_field(name: str) -> str:
    """``nvidia.com/gpu`` -> ``nvidia_com_gpu``: an extended resource as a data field name."""
    return _FIELD.sub("_", name).strip("_").lower()


def _wall(t: float) -> str:
    from datetime import UTC, datetime

    return format_time(datetime.fromtimestamp(t, UTC))


class KubernetesReceiver(PullReceiver[KubernetesReceiverConfig]):
    def __init__(self, ctx: Any, config: KubernetesReceiverConfig) -> None:
        super().__init__(ctx, config)
        self.source = config.source
        self.mapping: CompiledMapping | None = None
        if config.mapping is not None:
            self.mapping = compile_expression(config.mapping, ctx.functions, path=f"receivers.{ctx.id}.mapping")
        prefix = config.data_annotation_prefix
        wanted = {a for a in (config.subject.annotation,) if a}
        if config.subject.fallback.startswith("annotation:"):
            wanted.add(config.subject.fallback.removeprefix("annotation:"))
        self._keep_annotation: Callable[[str], bool] = lambda key: key in wanted or key.startswith(prefix)
        self.tracker = Tracker(self._keep_annotation)
        self.informers: list[tuple[str, Informer]] = []
        self._api: Any = None
        self._client_error: str | None = None
        self._usage_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: set[str] = set()
        self._gpus = config.gpu_names()
        self._metered = config.metered_resources()
        m = ctx.metrics
        self._m_unbilled = m.counter(
            "kubernetes_unbilled",
            "Objects that ran in a window but were not billed because they have no subject "
            "(set subject.fallback or annotate them).",
            ["receiver", "kind"],
        )
        self._m_tracked = m.gauge(
            "kubernetes_tracked_objects", "Objects the receiver holds in memory.", ["receiver", "resource"]
        )
        self._m_relists = m.gauge("kubernetes_relists", "Full relists after a watch expired (410 Gone).", ["receiver"])

    # -- lifecycle -----------------------------------------------------------------

    async def _start(self) -> None:
        if not await self._connect():
            self._tasks.append(asyncio.create_task(self._reconnect(), name=f"k8s-connect-{self.id}"))
        await super()._start()

    async def _connect(self) -> bool:
        where = f"receivers.{self.id}"
        try:
            self._api = await asyncio.to_thread(new_api_client, self.config, where)
        except ConfigError as exc:
            if str(exc) != self._client_error:
                self.log.error("receiver %s: %s; retrying every %.0fs", self.id, exc, RECONNECT_SECONDS)
            self._client_error = str(exc)
            return False
        if self._client_error is not None:
            self.log.info(
                "receiver %s: Kubernetes credentials loaded from %s", self.id, self.config.credentials_source()
            )
        self._client_error = None
        self._start_informers()
        if self.config.usage.enabled:
            self._tasks.append(asyncio.create_task(self._sample_usage(), name=f"k8s-usage-{self.id}"))
        return True

    async def _reconnect(self) -> None:
        while not self._stopping:
            await self._sleep(RECONNECT_SECONDS)
            if self._stopping or await self._connect():
                return

    def _start_informers(self) -> None:
        cfg = self.config
        namespaces: list[str | None] = list(cfg.namespaces) or [None]
        wanted: list[tuple[str, str | None, bool]] = [(PODS, ns, True) for ns in namespaces]
        if cfg.nodes:
            wanted.append(("nodes", None, False))
        if cfg.persistent_volumes:
            wanted.append(("persistentvolumes", None, False))
        if cfg.persistent_volume_claims:
            wanted.extend(("persistentvolumeclaims", ns, False) for ns in namespaces)
        for resource, namespace, selectors in wanted:
            key = f"{resource}/{namespace or '*'}"
            informer = Informer(
                self._api,
                resource,
                namespace=namespace,
                label_selector=cfg.label_selector if selectors else None,
                field_selector=cfg.field_selector if selectors else None,
                on_replace=self._replacer(key, resource),
                on_event=self._eventer(key, resource),
                watch_timeout=cfg.watch_timeout,
                # The watch retries on the receiver's own backoff settings (retry_initial, retry_max).
                backoff_initial=self.retry_initial,
                backoff_max=self.retry_max,
                time=self.ctx.clock.time,
                log=self.log,
                name=f"{self.id} {resource}" + (f" in namespace {namespace}" if namespace else ""),
            )
            informer.start()
            self.informers.append((key, informer))

    def _replacer(self, key: str, resource: str) -> Callable[[Iterable[dict[str, Any]], float], None]:
        return lambda items, at: self.tracker.replace(key, resource, items, at)

    def _eventer(self, key: str, resource: str) -> Callable[[str, dict[str, Any], float], None]:
        return lambda kind, obj, at: self.tracker.event(key, resource, kind, obj, at)

    async def _shutdown(self) -> None:
        try:
            await super()._shutdown()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await asyncio.gather(*(asyncio.to_thread(inf.stop) for _, inf in self.informers))
            self.informers.clear()
            if self._api is not None:
                api, self._api = self._api, None
                await asyncio.to_thread(api.close)

    def problems(self) -> list[str]:
        """What keeps windows from being billed right now, one actionable line each."""
        out = [self._client_error] if self._client_error else []
        out.extend(inf.error for _, inf in self.informers if inf.error)
        if self._usage_error:
            out.append(self._usage_error)
        return out

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["tracked"] = self.tracker.counts()
        out["namespaces"] = list(self.config.namespaces) or "all"
        problems = self.problems()
        if problems:
            out["ready"] = False
            out["reason"] = "; ".join(problems)
        return out

    # -- sampled usage -------------------------------------------------------------

    async def _sample_usage(self) -> None:
        from kubernetes.client import CustomObjectsApi

        api = CustomObjectsApi(self._api)
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        while not self._stopping:
            for namespace in namespaces:
                try:
                    readings = await asyncio.to_thread(self._read_metrics, api, namespace)
                except Exception as exc:
                    where = "namespace " + namespace if namespace else "all namespaces"
                    message = describe(exc, f"receiver {self.id}: read metrics.k8s.io pod metrics in {where}")
                    if message != self._usage_error:
                        self.log.warning("%s; the sampled usage fields of its pods are left out meanwhile", message)
                    self._usage_error = message
                    continue
                if self._usage_error:
                    self.log.info("receiver %s: metrics.k8s.io readable again", self.id)
                self._usage_error = None
                self.tracker.add_samples(readings)
            await self._sleep(self.config.usage.sample_interval)

    def _read_metrics(self, api: Any, namespace: str | None) -> list[tuple[str, str, Sample]]:
        if namespace is None:
            body = api.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "pods")
        else:
            body = api.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
        at = self.ctx.clock.time()
        out = []
        for item in body.get("items") or []:
            meta = item.get("metadata") or {}
            cpu = memory = 0.0
            try:
                for container in item.get("containers") or []:
                    usage = container.get("usage") or {}
                    cpu += float(parse_quantity(usage.get("cpu", "0")))
                    memory += float(parse_quantity(usage.get("memory", "0")))
            except QuantityError as exc:
                self.log.warning("receiver %s: pod metrics of %s/%s skipped: %s", self.id,
                                 meta.get("namespace"), meta.get("name"), exc)  # fmt: skip
                continue
            out.append((str(meta.get("namespace", "")), str(meta.get("name", "")), Sample(at, cpu, memory)))
        return out

    # -- the window ----------------------------------------------------------------

    def _check_complete(self, window: Window) -> None:
        need = window.end + self.offset
        waiting = []
        if self._client_error:
            waiting.append("there is no Kubernetes client yet (its credentials could not be loaded; see /health)")
        for _, informer in self.informers:
            through = informer.complete_through()
            if through is None or through < need:
                known = "nothing listed yet" if through is None else f"complete only through {_wall(through)}"
                waiting.append(f"{informer.name}: {known}" + (f" ({informer.error})" if informer.error else ""))
        if waiting:
            raise WindowNotComplete(
                f"receiver {self.id}: window {window} is not billed until the watch is complete through "
                f"{_wall(need)}: " + "; ".join(waiting)
            )

    async def collect(self, window: Window) -> list[Any]:
        self._check_complete(window)
        if self.autorun and self.watermark is not None:
            self.tracker.prune(self.watermark)
        pods, capacity = self.tracker.running_in(window.start, window.end)
        meta = Meta(receiver=self.id, window=window)
        records: list[dict[str, Any]] = []
        unbilled: dict[str, list[str]] = {}
        for usage, seconds in pods:
            records.append(self._pod_record(usage, seconds, window))
        for resource, items in capacity.items():
            for obj, seconds in items:
                records.append(self._capacity_record(resource, obj, seconds))
        events: list[Any] = []
        for record in records:
            event = self.window_event(
                window,
                meta,
                record,
                event_type=f"kubernetes_{record['kind']}",
                key=(record["kind"], record["uid"]),
                describe=_describe,
            )
            if event is None:
                if record["subject"] is None and self.mapping is None:
                    unbilled.setdefault(record["kind"], []).append(_name(record))
                continue
            events.append(event)
        for kind, names in unbilled.items():
            self._m_unbilled.labels(receiver=self.id, kind=kind).inc(len(names))
            self.log.warning(
                "receiver %s: %d %s(s) ran in window %s without a subject and were not billed (first: %s); "
                "annotate them with %s or set subject.fallback", self.id, len(names), kind, window, names[0],
                self.config.subject.annotation or self.config.subject.label,
            )  # fmt: skip
        for name, why in list(self.tracker.rejected.items()):
            if name not in self._reported:
                self._reported.add(name)
                self.log.warning("receiver %s: %s cannot be billed: %s", self.id, name, why)
        for resource, count in self.tracker.counts().items():
            self._m_tracked.labels(receiver=self.id, resource=resource).set(count)
        self._m_relists.labels(receiver=self.id).set(sum(inf.relists for _, inf in self.informers))
        return events

    # -- records -------------------------------------------------------------------

    def _subject(
        self, namespace: str | None, name: str, labels: dict[str, str], annotations: dict[str, str]
    ) -> str | None:
        s = self.config.subject
        if s.annotation and annotations.get(s.annotation):
            return annotations[s.annotation]
        if s.label and labels.get(s.label):
            return labels[s.label]
        fallback = s.fallback
        if fallback == "namespace":
            return namespace or None
        if fallback == "name":
            return name
        if fallback.startswith("label:"):
            return labels.get(fallback.removeprefix("label:")) or None
        if fallback.startswith("annotation:"):
            return annotations.get(fallback.removeprefix("annotation:")) or None
        return None

    def _annotation_data(self, annotations: dict[str, str]) -> dict[str, str]:
        prefix = self.config.data_annotation_prefix
        return {k.removeprefix(prefix): v for k, v in annotations.items() if k.startswith(prefix) and k != prefix}

    def _pod_record(self, pod: Any, seconds: float, window: Window) -> dict[str, Any]:
        data: dict[str, Any] = {
            "namespace": pod.namespace,
            "pod": pod.name,
            "uid": pod.uid,
            "node": pod.node,
            "seconds": seconds,
        }
        requests, limits = pod.requests, pod.limits
        data["cpu_request_core_seconds"] = requests.get("cpu", 0.0) * seconds
        data["memory_request_byte_seconds"] = requests.get("memory", 0.0) * seconds
        # A limit that no container sets is unbounded, not zero: the field is left out.
        if "cpu" in limits:
            data["cpu_limit_core_seconds"] = limits["cpu"] * seconds
        if "memory" in limits:
            data["memory_limit_byte_seconds"] = limits["memory"] * seconds
        gpus = 0.0
        for resource in self._metered:
            amount = requests.get(resource, limits.get(resource, 0.0))
            data[f"{resource_field(resource)}_seconds"] = amount * seconds
            if resource in self._gpus:
                gpus += amount
        data["gpu_seconds"] = gpus * seconds
        if self.config.usage.enabled:
            samples = self.tracker.samples_in(pod.namespace, pod.name, window.start, window.end)
            data["usage_samples"] = len(samples)
            if samples:
                data["cpu_usage_core_seconds_sampled"] = sum(s.cpu for s in samples) / len(samples) * seconds
                data["memory_usage_byte_seconds_sampled"] = sum(s.memory for s in samples) / len(samples) * seconds
        record = self._record("pod", pod.namespace, pod.name, pod.uid, pod.labels, pod.annotations, data)
        # The phase is what it is now, not in the window: in the record for mappings, not in the default
        # event, so a window collected again sends the same event.
        record["phase"] = pod.phase
        return record

    def _capacity_record(self, resource: str, obj: Any, seconds: float) -> dict[str, Any]:
        kind = obj.kind
        data: dict[str, Any] = {kind: obj.name, "uid": obj.uid, "seconds": seconds}
        if obj.namespace:
            data["namespace"] = obj.namespace
        capacity = obj.capacity
        if kind == "node":
            data["cpu_core_seconds"] = capacity.get("cpu", 0.0) * seconds
            data["memory_byte_seconds"] = capacity.get("memory", 0.0) * seconds
            gpus = 0.0
            for name in self._metered:
                amount = capacity.get(name, 0.0)
                data[f"{resource_field(name)}_seconds"] = amount * seconds
                if name in self._gpus:
                    gpus += amount
            data["gpu_seconds"] = gpus * seconds
        else:
            data["storage_bytes"] = capacity.get("storage", 0.0)
            data["storage_byte_seconds"] = capacity.get("storage", 0.0) * seconds
        return self._record(kind, obj.namespace, obj.name, obj.uid, obj.labels, obj.annotations, data)

    def _record(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        uid: str,
        labels: dict[str, str],
        annotations: dict[str, str],
        data: dict[str, Any],
    ) -> dict[str, Any]:
        data.update(self._annotation_data(annotations))
        if self.config.labels:
            data["labels"] = dict(labels)
        return {
            "kind": kind,
            "uid": uid,
            "name": name,
            "namespace": namespace,
            "subject": self._subject(namespace, name, labels, annotations),
            "labels": dict(labels),
            "annotations": dict(annotations),
            "data": data,
        }


def _describe(record: dict[str, Any]) -> str:
    return f"{record['kind']} {_name(record)}"


def _name(record: dict[str, Any]) -> str:
    return f"{record['namespace']}/{record['name']}" if record.get("namespace") else str(record["name"])
