"""Builders of complete Kubernetes objects, as a real API server would return them.

The official client's models reject incomplete objects (a container status
needs name, image, imageID, ready and restartCount; a terminated state needs
exitCode), so every builder fills what the server always fills.  Times are
unix seconds in, RFC 3339 out; the API carries whole seconds, so fractions
are dropped (compute the truth of a test from whole seconds).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

Obj = dict[str, Any]


def rfc3339(t: float) -> str:
    """``2026-12-06T10:00:00Z`` for unix seconds (whole seconds, as metav1.Time carries)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def _image(name: str) -> str:
    return f"registry.example/{name}:1"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _uid(*parts: str) -> str:
    """A uid stable for the same names, so tests can predict ids (pass ``uid`` for a re-created object)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "k8s://" + "/".join(parts)))


def container(
    name: str = "main",
    *,
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    restart_policy: str | None = None,
) -> Obj:
    """A container spec; a resource with a limit and no request requests the limit (API-server defaulting)."""
    resources: Obj = {}
    if limits:
        resources["limits"] = dict(limits)
        resources["requests"] = {**limits, **(requests or {})}
    elif requests:
        resources["requests"] = dict(requests)
    spec: Obj = {
        "name": name,
        "image": _image(name),
        "imagePullPolicy": "IfNotPresent",
        "resources": resources,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy  # "Always" on an init container makes it a sidecar
    return spec


def _terminated_state(name: str, started: float, finished: float, exit_code: int, attempt: int) -> Obj:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": rfc3339(started),
            "finishedAt": rfc3339(finished),
            "containerID": _container_id(name, attempt),
        }
    }


def _container_id(name: str, attempt: int) -> str:
    return "containerd://" + _digest(f"{name}/{attempt}")


def _status(
    name: str, state: Obj, *, ready: bool, started: bool, restarts: int, last_terminated: tuple[float, float] | None
) -> Obj:
    pulled = "waiting" not in state or restarts > 0 or last_terminated is not None
    status: Obj = {
        "name": name,
        "image": _image(name),
        "imageID": f"registry.example/{name}@sha256:{_digest(name)}" if pulled else "",
        "ready": ready,
        "started": started,
        "restartCount": restarts,
        "state": state,
        "lastState": {},
    }
    if "waiting" not in state:
        status["containerID"] = _container_id(name, restarts)
    if last_terminated is not None:
        status["lastState"] = _terminated_state(name, last_terminated[0], last_terminated[1], 1, max(restarts - 1, 0))
    return status


def running(name: str, started: float, *, restarts: int = 0, last_terminated: tuple[float, float] | None = None) -> Obj:
    """The status of a running container (``last_terminated``: (started, finished) of the previous run)."""
    state = {"running": {"startedAt": rfc3339(started)}}
    return _status(name, state, ready=True, started=True, restarts=restarts, last_terminated=last_terminated)


def terminated(
    name: str,
    started: float,
    finished: float,
    *,
    exit_code: int = 0,
    restarts: int = 0,
    last_terminated: tuple[float, float] | None = None,
) -> Obj:
    """The status of a container that ran from ``started`` to ``finished``."""
    state = _terminated_state(name, started, finished, exit_code, restarts)
    return _status(name, state, ready=False, started=False, restarts=restarts, last_terminated=last_terminated)


def waiting(
    name: str,
    reason: str = "ContainerCreating",
    *,
    restarts: int = 0,
    last_terminated: tuple[float, float] | None = None,
) -> Obj:
    """The status of a container not running (being created, or in CrashLoopBackOff after a run)."""
    state = {"waiting": {"reason": reason}}
    return _status(name, state, ready=False, started=False, restarts=restarts, last_terminated=last_terminated)


def _qos(containers: list[Obj]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(name) and (r.get("limits") or {}).get(name) == (r.get("requests") or {}).get(name)
        for r in resources
        for name in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def pod(
    name: str,
    namespace: str = "default",
    *,
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node: str | None = "node-1",
    containers: list[Obj] | None = None,
    init_containers: list[Obj] | None = None,
    overhead: dict[str, str] | None = None,
    phase: str = "Running",
    statuses: list[Obj] | None = None,
    init_statuses: list[Obj] | None = None,
    deletion: float | None = None,
    created: float | None = None,
) -> Obj:
    """A pod; without ``statuses`` a Running pod's containers run since ``created`` and a Pending pod's wait.

    A Succeeded or Failed pod needs its ``statuses``: their times are the truth a test bills against.
    """
    created = time.time() if created is None else created
    containers = [container()] if containers is None else containers
    if statuses is None:
        if phase == "Running":
            statuses = [running(c["name"], created) for c in containers]
        elif phase == "Pending":
            statuses = [waiting(c["name"]) for c in containers] if node else []
        elif phase in ("Succeeded", "Failed"):
            raise ValueError(f"a {phase} pod needs statuses (terminated(...)): their times are the truth")
        else:
            statuses = []
    metadata: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": uid or _uid("pods", namespace, name),
        "creationTimestamp": rfc3339(created),
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    if deletion is not None:
        metadata["deletionTimestamp"] = rfc3339(deletion)
        metadata["deletionGracePeriodSeconds"] = 30
    spec: Obj = {
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
    }
    if node:
        spec["nodeName"] = node
    if init_containers:
        spec["initContainers"] = init_containers
    if overhead:
        spec["overhead"] = dict(overhead)
    ready = phase == "Running" and all(s.get("ready") for s in statuses) and bool(statuses)
    scheduled = "True" if node else "False"
    conditions = [
        {"type": "PodScheduled", "status": scheduled, "lastTransitionTime": rfc3339(created)},
        {"type": "Initialized", "status": scheduled, "lastTransitionTime": rfc3339(created)},
        {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": rfc3339(created)},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": rfc3339(created)},
    ]
    status: Obj = {"phase": phase, "conditions": conditions, "qosClass": _qos([*containers, *(init_containers or [])])}
    if node:
        octet = int(_digest(f"{namespace}/{name}")[:2], 16)
        status.update(
            {
                "hostIP": "10.0.0.1",
                "podIP": f"10.1.0.{octet}",
                "startTime": rfc3339(created),
                "containerStatuses": statuses,
            }
        )
        if init_containers:
            status["initContainerStatuses"] = init_statuses if init_statuses is not None else []
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def node(
    name: str,
    *,
    cpu: str = "8",
    memory: str = "32Gi",
    gpus: dict[str, str] | None = None,
    created: float | None = None,
) -> Obj:
    """A Ready node; allocatable equals capacity here (a real node reserves some for the system)."""
    created = time.time() if created is None else created
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi", **(gpus or {})}
    stamp = rfc3339(created)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": _uid("nodes", name),
            "creationTimestamp": stamp,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            "annotations": {},
        },
        "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"]},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _digest(name)[:32],
                "systemUUID": _uid("system", name),
                "bootID": _uid("boot", name),
                "kernelVersion": "6.1.0",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.7.0",
                "kubeletVersion": "v1.31.0",
                "kubeProxyVersion": "v1.31.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def persistent_volume(
    name: str, capacity: str = "10Gi", *, claim: tuple[str, str] | None = None, created: float | None = None
) -> Obj:
    """A CSI PersistentVolume, Bound to ``claim`` (namespace, name) or Available."""
    created = time.time() if created is None else created
    spec: Obj = {
        "capacity": {"storage": capacity},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": "standard",
        "volumeMode": "Filesystem",
        "csi": {"driver": "csi.fake.example", "volumeHandle": name, "fsType": "ext4"},
    }
    if claim is not None:
        spec["claimRef"] = {
            "kind": "PersistentVolumeClaim",
            "apiVersion": "v1",
            "namespace": claim[0],
            "name": claim[1],
            "uid": _uid("persistentvolumeclaims", *claim),
        }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "uid": _uid("persistentvolumes", name), "creationTimestamp": rfc3339(created)},
        "spec": spec,
        "status": {"phase": "Bound" if claim is not None else "Available"},
    }


def persistent_volume_claim(
    name: str,
    namespace: str = "default",
    *,
    capacity: str = "10Gi",
    volume: str | None = None,
    phase: str = "Bound",
    created: float | None = None,
) -> Obj:
    """A PersistentVolumeClaim; a Bound one reports its capacity in status."""
    created = time.time() if created is None else created
    spec: Obj = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": capacity}},
        "storageClassName": "standard",
        "volumeMode": "Filesystem",
    }
    if volume is not None:
        spec["volumeName"] = volume
    status: Obj = {"phase": phase}
    if phase == "Bound":
        status.update({"accessModes": ["ReadWriteOnce"], "capacity": {"storage": capacity}})
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": _uid("persistentvolumeclaims", namespace, name),
            "creationTimestamp": rfc3339(created),
        },
        "spec": spec,
        "status": status,
    }
