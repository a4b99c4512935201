"""What the receiver knows about pods, nodes and volumes between windows.

The informers (one per namespace and resource) call :meth:`Tracker.replace`
after a (re)list and :meth:`Tracker.event` for each watch event, on their own
threads; the receiver reads a snapshot per window on the event loop.  So every
access holds one lock, and the callbacks only slim and merge.

Memory stays bounded (docs/components/kubernetes-receiver.md, "Scale"): an object is
slimmed before it is kept (no managedFields, no last-applied annotation, no
env or volumes: only what billing reads), a pod keeps at most a fixed number
of run intervals (accounting.PodUsage), and :meth:`Tracker.prune` drops what
ended before the watermark.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector_plugin_kubernetes.accounting import CapacityUsage, PodUsage
from collector_plugin_kubernetes.quantity import QuantityError

PODS = "pods"
CAPACITY_KINDS = {
    "nodes": "node",
    "persistentvolumes": "persistentvolume",
    "persistentvolumeclaims": "persistentvolumeclaim",
}
# Samples kept per pod for sampled usage: a day of 30 s samples at most.
MAX_SAMPLES = 2880


@dataclass(frozen=True)
class Sample:
    """One metrics.k8s.io reading of a pod: when, CPU cores, memory bytes."""

    at: float
    cpu: float
    memory: float


def _metadata(obj: dict[str, Any], keep_annotation: Any) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    out = {k: meta[k] for k in ("uid", "name", "namespace", "deletionTimestamp", "creationTimestamp") if k in meta}
    out["labels"] = dict(meta.get("labels") or {})
    out["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if keep_annotation(k)}
    return out


def _resources(container: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": container.get("name", ""), "resources": container.get("resources") or {}}
    if container.get("restartPolicy"):
        out["restartPolicy"] = container["restartPolicy"]
    return out


def _status(status: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "state", "lastState", "restartCount")
    return {k: status[k] for k in keep if k in status}


def slim_pod(pod: dict[str, Any], keep_annotation: Any) -> dict[str, Any]:
    """The parts of a pod that billing reads (a real pod object is 5-20 KiB; this is a few hundred bytes)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    out_spec: dict[str, Any] = {
        "containers": [_resources(c) for c in spec.get("containers") or []],
        "initContainers": [_resources(c) for c in spec.get("initContainers") or []],
    }
    for key in ("nodeName", "overhead", "resources"):
        if spec.get(key):
            out_spec[key] = spec[key]
    return {
        "metadata": _metadata(pod, keep_annotation),
        "spec": out_spec,
        "status": {
            "phase": status.get("phase", ""),
            "containerStatuses": [_status(s) for s in status.get("containerStatuses") or []],
            "initContainerStatuses": [_status(s) for s in status.get("initContainerStatuses") or []],
            # Only their times: they bound a finished pod that still shows a stale running container.
            "conditions": [
                {"type": c.get("type"), "lastTransitionTime": c["lastTransitionTime"]}
                for c in status.get("conditions") or []
                if c.get("lastTransitionTime")
            ],
        },
    }


def slim_object(obj: dict[str, Any], keep_annotation: Any) -> dict[str, Any]:
    """A node, PV or PVC without what billing does not read (node images, conditions...)."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    out_spec = {k: spec[k] for k in ("capacity", "resources", "volumeName", "claimRef") if k in spec}
    out_status = {k: status[k] for k in ("capacity", "phase") if k in status}
    return {"metadata": _metadata(obj, keep_annotation), "spec": out_spec, "status": out_status}


class Tracker:
    """Pods, nodes and volumes by uid, with their run intervals; thread-safe."""

    def __init__(self, keep_annotation: Any) -> None:
        self._keep_annotation = keep_annotation
        self._lock = threading.Lock()
        self.pods: dict[str, PodUsage] = {}
        self.capacity: dict[str, dict[str, CapacityUsage]] = {kind: {} for kind in CAPACITY_KINDS}
        self.samples: dict[tuple[str, str], deque[Sample]] = {}
        # Which uids each informer (by its key) last listed, to notice what vanished while a watch was down.
        self._listed: dict[str, set[str]] = {}
        # Objects that could not be read (a quantity the parser refuses), by name: why.
        self.rejected: dict[str, str] = {}

    # -- informer callbacks (informer threads) ----------------------------------------

    def replace(self, key: str, resource: str, items: Iterable[dict[str, Any]], at: float) -> None:
        """A (re)list by informer ``key``: what it listed before and no longer lists was deleted meanwhile.

        ``items`` may arrive page by page (the informer fetches the next page while this consumes the
        last), so the lock is taken per object, and a window collected meanwhile sees each object
        either before or after its update, never half of one.
        """
        seen: set[str] = set()
        for obj in items:
            with self._lock:
                uid = self._apply(resource, obj, at)
            if uid:
                seen.add(uid)
        with self._lock:
            for uid in self._listed.get(key, set()) - seen:
                self._delete(resource, uid, None, at)
            self._listed[key] = seen

    def event(self, key: str, resource: str, kind: str, obj: dict[str, Any], at: float) -> None:
        with self._lock:
            if kind == "DELETED":
                uid = (obj.get("metadata") or {}).get("uid")
                if uid:
                    self._delete(resource, uid, obj, at)
                    self._listed.get(key, set()).discard(uid)
                return
            uid = self._apply(resource, obj, at)
            if uid:
                self._listed.setdefault(key, set()).add(uid)

    def _apply(self, resource: str, obj: dict[str, Any], at: float) -> str | None:
        uid = (obj.get("metadata") or {}).get("uid")
        if not uid:
            return None
        try:
            return self._merge(resource, str(uid), obj, at)
        except (QuantityError, ValueError) as exc:
            # One object the API server accepted but we cannot read must not stop the others.
            meta = obj.get("metadata") or {}
            name = f"{meta.get('namespace')}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name"))
            self.rejected[f"{resource} {name}"] = str(exc)
            return None

    def _merge(self, resource: str, uid: str, obj: dict[str, Any], at: float) -> str:
        if resource == PODS:
            slim = slim_pod(obj, self._keep_annotation)
            known = self.pods.get(uid)
            if known is None:
                self.pods[uid] = PodUsage.from_pod(slim)
            else:
                known.update(slim)
            return uid
        kind = CAPACITY_KINDS[resource]
        slim = slim_object(obj, self._keep_annotation)
        table = self.capacity[resource]
        found = table.get(uid)
        if found is None:
            table[uid] = CapacityUsage.from_object(kind, slim, at)
        else:
            found.update(slim, at)
        return uid

    def _delete(self, resource: str, uid: str, obj: dict[str, Any] | None, at: float) -> None:
        try:
            self._forget(resource, uid, obj, at)
        except (QuantityError, ValueError) as exc:
            meta = (obj or {}).get("metadata") or {}
            self.rejected[f"{resource} {meta.get('name', uid)}"] = str(exc)

    def _forget(self, resource: str, uid: str, obj: dict[str, Any] | None, at: float) -> None:
        if resource == PODS:
            pod = self.pods.get(uid)
            if pod is None and obj is not None:
                pod = self.pods[uid] = PodUsage.from_pod(slim_pod(obj, self._keep_annotation))
            if pod is not None:
                final = slim_pod(obj, self._keep_annotation) if obj is not None else None
                if final is not None:
                    pod.update(final)
                pod.mark_deleted(final or {}, at)
            return
        table = self.capacity[resource]
        found = table.get(uid)
        if found is None and obj is not None:
            found = table[uid] = CapacityUsage.from_object(
                CAPACITY_KINDS[resource], slim_object(obj, self._keep_annotation), at
            )
        if found is not None:
            found.mark_deleted(slim_object(obj, self._keep_annotation) if obj is not None else {}, at)

    # -- sampled usage (event loop) -------------------------------------------------

    def add_samples(self, readings: Iterable[tuple[str, str, Sample]]) -> None:
        with self._lock:
            for namespace, name, sample in readings:
                kept = self.samples.get((namespace, name))
                if kept is None:
                    kept = self.samples[(namespace, name)] = deque(maxlen=MAX_SAMPLES)
                kept.append(sample)

    def samples_in(self, namespace: str, name: str, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples.get((namespace, name), ()) if start <= s.at < end]

    # -- the receiver (event loop) ------------------------------------------------------

    def running_in(
        self, start: float, end: float
    ) -> tuple[list[tuple[PodUsage, float]], dict[str, list[tuple[CapacityUsage, float]]]]:
        """What ran inside ``[start, end)`` and for how many seconds, computed under the lock (the informer
        threads update the same objects)."""
        with self._lock:
            pods = [(p, s) for p in self.pods.values() if (s := p.seconds_in(start, end)) > 0]
            capacity = {
                kind: [(o, s) for o in table.values() if (s := o.seconds_in(start, end)) > 0]
                for kind, table in self.capacity.items()
            }
        return pods, capacity

    def prune(self, watermark: float) -> int:
        """Forget what ended before ``watermark`` (already billed); returns how many objects went."""
        gone = 0
        with self._lock:
            for uid, pod in list(self.pods.items()):
                ended = pod.ended_at()
                if ended is not None and ended <= watermark and (pod.deleted_at is not None or _final(pod.phase)):
                    del self.pods[uid]
                    gone += 1
                else:
                    pod.forget_before(watermark)
            for table in self.capacity.values():
                for uid, obj in list(table.items()):
                    if obj.until is not None and obj.until <= watermark:
                        del table[uid]
                        gone += 1
            for key, kept in list(self.samples.items()):
                while kept and kept[0].at < watermark:
                    kept.popleft()
                if not kept:
                    del self.samples[key]
        return gone

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {PODS: len(self.pods), **{k: len(v) for k, v in self.capacity.items()}}


def _final(phase: str) -> bool:
    return phase in ("Succeeded", "Failed")
