"""Benchmark of the ``kubernetes`` receiver with 10,000 realistic pods (issue 11, "Scale").

    .venv/bin/python plugins/kubernetes/tests/bench_pods.py [--pods 10000] [--windows 10] [--updates 2000]

Not a pytest test (no ``test_`` prefix); ``make bench`` runs it through
tests/bench/run_all.py.  Every collector figure is printed beside a baseline
measured in the same run: the official client decoding the same pod list into
its models (``CoreV1Api.list_pod_for_all_namespaces()``), which is what a
collector that lists every tick pays per pod per tick.

Three processes, so that no one's memory or CPU is counted for another:

* ``--role server``: the fake API server (tests/fakeapi.py, ``validate=False``)
  holding the N pods, driven over stdin (``update M`` applies M MODIFIED
  updates, ``quit`` ends it);
* ``--role baseline``: the client decoding the full list (best of
  ``--rounds``), its RSS holding the models and its peak, and the bytes its
  models keep per pod (tracemalloc, on a sample);
* this process (the collector side): the pods informer's first list into the
  receiver's Tracker, ``collect()`` of W 60-second windows (the receiver's own
  record and event code, pruning at the watermark as the framework does), M
  watch updates through the informer (the CPU time of its thread: the fake
  sends them slower than the collector reads), RSS, and the bytes the Tracker
  keeps per pod (tracemalloc, on the same sample).

Prints a table (figure, collector, baseline, ratio) and writes JSON to
``/tmp/collector-bench/kubernetes.json``.  About a minute for 10,000 pods on
2 cores (the baseline's decodes are most of it: best of 2 above 5,000 pods,
else of 3); ``--pods 2000`` for a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from k8sobjects import container, pod, rfc3339, running, terminated

_BENCH = Path(__file__).resolve().parents[3] / "tests" / "bench"  # the shared summary table
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))

from ratio_table import print_summary, row  # noqa: E402

T0 = 1_796_558_400.0  # 2026-12-06T12:00:00Z, a window boundary
WINDOW = 60.0
NAMESPACES = 10
HERE = Path(__file__).resolve().parent

# --- the pods ------------------------------------------------------------------------------------


def _env(app: str, n: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": f"{app.upper()}_SETTING_{i}", "value": f"value-{i}-" + "x" * 24} for i in range(n)
    ]
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
    env.append({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": f"{app}-db", "key": "password"}}})
    env.append({"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": f"{app}-config", "key": "log-level"}}})
    return env


def _bulk(c: dict[str, Any], app: str, port: int) -> dict[str, Any]:
    """What real containers carry and billing never reads: env, mounts, probes, ports, security context."""
    probe: dict[str, Any] = {
        "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
        "initialDelaySeconds": 5,
        "periodSeconds": 10,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    c.update(
        {
            "command": ["/bin/app", "--config=/etc/app/config.yaml", f"--listen=:{port}"],
            "args": ["--verbose", "--metrics-port=9090"],
            "ports": [
                {"name": "http", "containerPort": port, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
            ],
            "env": _env(app, 6),
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/app", "readOnly": True},
                {"name": "data", "mountPath": "/var/lib/app"},
                {
                    "name": "kube-api-access",
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": True,
                },
            ],
            "livenessProbe": probe,
            "readinessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/ready"}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    )
    return c


def _managed_fields(at: str) -> list[dict[str, Any]]:
    spec_fields: dict[str, Any] = {
        f"f:{k}": {}
        for k in (
            "dnsPolicy",
            "enableServiceLinks",
            "restartPolicy",
            "schedulerName",
            "securityContext",
            "terminationGracePeriodSeconds",
            "volumes",
        )
    }
    containers = {
        f'k:{{"name":"{name}"}}': {
            ".": {},
            "f:env": {f'k:{{"name":"SETTING_{i}"}}': {".": {}, "f:name": {}, "f:value": {}} for i in range(6)},
            "f:image": {},
            "f:name": {},
            "f:ports": {},
            "f:resources": {".": {}, "f:limits": {}, "f:requests": {}},
            "f:volumeMounts": {},
        }
        for name in ("app", "sidecar")
    }
    status: dict[str, Any] = {
        "f:conditions": {
            f'k:{{"type":"{t}"}}': {
                ".": {},
                "f:lastProbeTime": {},
                "f:lastTransitionTime": {},
                "f:status": {},
                "f:type": {},
            }
            for t in ("ContainersReady", "Initialized", "Ready")
        },
        "f:containerStatuses": {},
        "f:hostIP": {},
        "f:phase": {},
        "f:podIP": {},
        "f:startTime": {},
    }
    return [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": at,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {}},
                "f:spec": {"f:containers": containers, **spec_fields},
            },
        },
        {
            "manager": "kubelet",
            "operation": "Update",
            "apiVersion": "v1",
            "time": at,
            "fieldsType": "FieldsV1",
            "subresource": "status",
            "fieldsV1": {"f:status": status},
        },
    ]


def big_pod(i: int, *, windows: int = 10, seed: int = 11) -> dict[str, Any]:
    """Pod number ``i`` of the benchmark: 8-10 KiB of JSON like a real Deployment's or Job's pod.

    Labels, annotations (a large kubectl last-applied-configuration among them), env, volumes,
    probes and managedFields; an app container and a sidecar with requests; a GPU on every 8th pod.
    About 60% Running (most started before ``T0``, some restarted), the rest Succeeded jobs of
    5 s to 10 min, their start and finish times spread over ``windows`` windows of 60 s from ``T0``.
    """
    rng = random.Random(seed * 1_000_003 + i)
    namespace = f"team-{i % NAMESPACES}"
    app = f"svc{i % 97}"
    name = f"{app}-{i:06d}-{rng.getrandbits(20):05x}"
    span = windows * WINDOW
    gpu = i % 8 == 0
    app_limits = {"cpu": "2", "memory": "4Gi", **({"nvidia.com/gpu": "1"} if gpu else {})}
    containers = [
        _bulk(
            container("app", requests={"cpu": f"{rng.choice((250, 500, 1000))}m", "memory": "1Gi"}, limits=app_limits),
            app,
            8080,
        ),
        container("sidecar", requests={"cpu": "50m", "memory": "64Mi"}, limits={"memory": "128Mi"}),
    ]
    containers[1]["ports"] = [{"name": "proxy", "containerPort": 15001, "protocol": "TCP"}]
    containers[1]["args"] = ["proxy", "sidecar", "--concurrency=2"]
    if rng.random() < 0.6:  # a long-running service pod; some restarted once
        phase = "Running"
        started = T0 - rng.uniform(0, 7200) if rng.random() < 0.8 else T0 + rng.uniform(0, span)
        started = float(int(started))
        if rng.random() < 0.2:
            first = (started - 600, started - 30)
            statuses = [running("app", started, restarts=1, last_terminated=first), running("sidecar", started - 600)]
        else:
            statuses = [running("app", started), running("sidecar", started)]
        created = started - 5
    else:  # a Job's pod that ran 5 s to 10 min
        phase = "Succeeded"
        started = float(int(T0 - 60 + rng.uniform(0, span)))
        finished = started + int(rng.uniform(5, 600))
        statuses = [terminated("app", started, finished), terminated("sidecar", started, finished + 1)]
        created = started - 3
    labels = {
        "app": app,
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": f"{app}-prod",
        "app.kubernetes.io/version": "1.42.0",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"{app}-3.2.1",
        "pod-template-hash": f"{rng.getrandbits(32):08x}",
        "team": namespace,
    }
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": containers},
    }
    annotations = {
        "openmeter.io/subject": f"customer-{i % 250}",
        "data.openmeter.io/project": f"project-{i % 40}",
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(manifest, separators=(",", ":"))[:1600] + "\n",
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9090",
        "checksum/config": f"{rng.getrandbits(128):032x}{rng.getrandbits(128):032x}",
        "kubernetes.io/psp": "restricted",
    }
    obj = pod(
        name,
        namespace,
        labels=labels,
        annotations=annotations,
        node=f"node-{i % 50}",
        containers=containers,
        phase=phase,
        statuses=statuses,
        created=created,
    )
    meta, spec = obj["metadata"], obj["spec"]
    meta["generateName"] = f"{app}-"
    meta["ownerReferences"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": f"{app}-{labels['pod-template-hash']}",
            "uid": f"00000000-0000-4000-8000-{i:012d}",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    meta["managedFields"] = _managed_fields(rfc3339(created))
    spec["volumes"] = [
        {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}},
        {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
        {
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        },
    ]
    spec["tolerations"] = [
        {"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        for t in ("not-ready", "unreachable")
    ]
    spec["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
    if phase == "Succeeded":
        spec["restartPolicy"] = "Never"
    return obj


def _compact_size(obj: dict[str, Any]) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


# --- memory helpers --------------------------------------------------------------------------------


def rss_mib() -> float:
    """Current resident set size of this process (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_cpu_s(thread: threading.Thread) -> float:
    """CPU seconds (user + system) a thread of this process used so far, from /proc (10 ms resolution)."""
    with open(f"/proc/self/task/{thread.native_id}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def traced_bytes() -> int:
    """Bytes allocated since tracemalloc started and still alive, after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# --- role: the fake API server -----------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """The fake API server with ``--pods`` pods; prints one JSON line when ready, then obeys stdin."""
    from fakeapi import FakeKubeAPI

    started = time.perf_counter()
    fake = FakeKubeAPI(validate=False, history=max(10_000, args.updates + 1000))
    fake.bookmark_interval = 1.0
    await fake.start()
    pods = [big_pod(i, windows=args.windows) for i in range(args.pods)]
    raw = sum(_compact_size(p) for p in pods[:500]) / min(len(pods), 500)
    for p in pods:
        fake.create("pods", p)
    running_pods = [p for p in pods if p["status"]["phase"] == "Running"]
    del pods
    fake.write_kubeconfig(Path(args.kubeconfig))
    print(json.dumps({"url": fake.url, "raw_bytes_per_pod": raw, "setup_s": time.perf_counter() - started}), flush=True)
    loop = asyncio.get_running_loop()
    rev = 0
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        if line[0] == "update":
            # Yield to the watch stream after each update, so that events leave as separate chunks as a real
            # API server writes them (one chunk of a whole burst would make the client's line splitter,
            # which copies the rest of its buffer after each line, quadratic in the burst).
            t = time.perf_counter()
            for k in range(int(line[1])):
                rev += 1
                p = running_pods[k % len(running_pods)]
                p["metadata"]["labels"]["bench/revision"] = str(rev)
                fake.update("pods", p)
                await asyncio.sleep(0)
            print(json.dumps({"applied": int(line[1]), "apply_s": time.perf_counter() - t}), flush=True)
    await fake.stop()


# --- role: the baseline (the client's models) --------------------------------------------------------


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The official client decoding the whole pod list into its models, best of ``--rounds``."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig, persist_config=False))
    api.list_pod_for_all_namespaces(limit=1)  # connect and warm up
    gc.collect()
    rss_before = rss_mib()
    times, rss_holding = [], 0.0
    for _ in range(args.rounds):
        t = time.perf_counter()
        pods = api.list_pod_for_all_namespaces(_request_timeout=300)
        times.append(time.perf_counter() - t)
        if len(pods.items) != args.pods:
            raise SystemExit(f"baseline listed {len(pods.items)} pods, expected {args.pods}")
        gc.collect()
        rss_holding = max(rss_holding, rss_mib())
        del pods
    peak = peak_rss_mib()
    # What the models keep per pod, on a sample (tracemalloc slows the decoding down; not timed).
    tracemalloc.start()
    before = traced_bytes()
    sample = api.list_pod_for_all_namespaces(limit=args.sample, _request_timeout=300)
    kept = traced_bytes() - before
    tracemalloc.stop()
    return {
        "pods": args.pods,
        "list_s": times,
        "pods_per_s": args.pods / min(times),
        "rss_before_mib": rss_before,
        "rss_holding_list_mib": rss_holding,
        "rss_growth_mib": rss_holding - rss_before,
        "peak_rss_mib": peak,
        "model_bytes_per_pod": kept / len(sample.items),
        "sample": len(sample.items),
    }


# --- role: the collector ---------------------------------------------------------------------------


class _NotLeader:
    """Keeps the receiver's own schedule idle: the bench calls collect() itself."""

    def is_leader(self) -> bool:
        return False


def collector(args: argparse.Namespace, server: subprocess.Popen[str], work: Path) -> dict[str, Any]:
    """The receiver's side: first list into the Tracker, W windows collected, M watch updates, memory."""
    from collector_plugin_kubernetes.client import new_api_client
    from collector_plugin_kubernetes.config import KubernetesReceiverConfig
    from collector_plugin_kubernetes.informer import Informer
    from collector_plugin_kubernetes.receiver import KubernetesReceiver
    from collector_plugin_kubernetes.tracker import PODS, Tracker
    from kubernetes.client import CoreV1Api

    from collector.api import FakeClock, Window
    from collector.components import ComponentContext
    from collector.telemetry import Telemetry

    config = KubernetesReceiverConfig(kubeconfig=Path(args.kubeconfig), interval="60s", offset="5s")
    ctx = ComponentContext(
        id="kubernetes/bench",
        kind="receiver",
        storage_dir=work,
        telemetry=Telemetry(),
        clock=FakeClock(start=T0 + (args.windows + 1) * WINDOW),
        coordinator=_NotLeader(),
    )
    rec = KubernetesReceiver(ctx, config)
    api_client = new_api_client(config, "bench")
    CoreV1Api(api_client).list_pod_for_all_namespaces(limit=1)  # connect and warm up, as the baseline does
    gc.collect()
    rss_before = rss_mib()

    listed = threading.Event()
    updates_done = threading.Event()
    seen = {"events": 0, "first": 0.0, "last": 0.0}

    def on_replace(items: Iterable[dict[str, Any]], at: float) -> None:
        rec.tracker.replace("pods/*", PODS, items, at)
        listed.set()

    def on_event(kind: str, obj: dict[str, Any], at: float) -> None:
        now = time.perf_counter()
        if seen["events"] == 0:
            seen["first"] = now
        rec.tracker.event("pods/*", PODS, kind, obj, at)
        seen["events"] += 1
        seen["last"] = time.perf_counter()
        if seen["events"] >= args.updates:
            updates_done.set()

    informer = Informer(api_client, PODS, on_replace=on_replace, on_event=on_event, name="bench pods")
    t = time.perf_counter()
    informer.start()
    try:
        if not listed.wait(300):
            raise SystemExit(f"the informer did not list within 300 s: {informer.error}")
        list_s = time.perf_counter() - t
        deadline = time.monotonic() + 10
        while not informer.synced and time.monotonic() < deadline:  # the list's raw items are let go
            time.sleep(0.001)
        tracked = rec.tracker.counts()[PODS]
        gc.collect()
        rss_listed = rss_mib()
        peak_listed = peak_rss_mib()

        # W windows of 60 s, each as the framework runs it: the watermark is the previous window's end,
        # so collect() prunes what was billed before it.
        async def windows() -> tuple[int, list[float]]:
            total, each = 0, []
            for w in range(args.windows):
                window = Window(T0 + w * WINDOW, T0 + (w + 1) * WINDOW)
                rec.watermark = window.start
                t = time.perf_counter()
                total += len(await rec.collect(window))
                each.append(time.perf_counter() - t)
            return total, each

        events, window_s = asyncio.run(windows())
        after_windows = rec.tracker.counts()[PODS]

        # M MODIFIED updates in one burst through the open watch.
        assert server.stdin is not None and server.stdout is not None
        # The fake paces the events (it does more per update than the collector), so the figure is the
        # CPU time of the informer's thread (read, decode, merge into the tracker) per event.
        thread = next((th for th in threading.enumerate() if th.name.startswith("informer-")), None)
        if thread is None:
            raise SystemExit("cannot find the informer's thread (named informer-...) to read its CPU time")
        cpu = thread_cpu_s(thread)
        t = time.perf_counter()
        server.stdin.write(f"update {args.updates}\n")
        server.stdin.flush()
        applied = json.loads(server.stdout.readline())
        if not updates_done.wait(300):
            raise SystemExit(f"only {seen['events']}/{args.updates} watch events arrived: {informer.error}")
        watch_cpu_s = thread_cpu_s(thread) - cpu
        watch_total_s = seen["last"] - t
        watch_s = seen["last"] - seen["first"]
        gc.collect()
        rss_end = rss_mib()
        peak = peak_rss_mib()
    finally:
        informer.stop()

    # What the Tracker keeps per pod, on the same sample the baseline measures: a fresh Tracker filled
    # under tracemalloc from the raw JSON (decoded under tracing too, so that the strings it keeps count).
    resp = CoreV1Api(api_client).list_pod_for_all_namespaces(limit=args.sample, _preload_content=False)
    raw = resp.data  # type: ignore[attr-defined]  # with _preload_content=False: the urllib3 response
    tracemalloc.start()
    before = traced_bytes()
    items = json.loads(raw)["items"]
    sample = len(items)
    fresh = Tracker(rec._keep_annotation)
    fresh.replace("pods/*", PODS, items, T0)
    del items
    kept = traced_bytes() - before
    tracemalloc.stop()
    api_client.close()
    return {
        "pods": tracked,
        "list_s": list_s,
        "pods_per_s": tracked / list_s,
        "windows": args.windows,
        "events": events,
        "window_s": window_s,
        "events_per_s": events / sum(window_s),
        "tracked_after_windows": after_windows,
        "updates": args.updates,
        "server_apply_s": applied["apply_s"],
        "watch_s": watch_s,
        "watch_total_s": watch_total_s,
        "watch_cpu_s": watch_cpu_s,
        "watch_events_per_cpu_s": args.updates / watch_cpu_s if watch_cpu_s > 0 else 0.0,
        "watch_events_per_s_wall": (args.updates - 1) / watch_s if watch_s > 0 else 0.0,
        "rss_before_mib": rss_before,
        "rss_listed_mib": rss_listed,
        "rss_growth_mib": rss_listed - rss_before,
        "rss_end_mib": rss_end,
        "peak_rss_at_list_mib": peak_listed,
        "peak_rss_mib": peak,
        "tracker_bytes_per_pod": kept / sample,
        "sample": sample,
    }


# --- the run -----------------------------------------------------------------------------------------


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "server",
        "--pods",
        str(args.pods),
        "--windows",
        str(args.windows),
        "--updates",
        str(args.updates),
        "--kubeconfig",
        args.kubeconfig,
    ]
    server = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    # A server that hangs while filling its store is killed, so readline() returns.
    killer = threading.Timer(300, server.kill)
    killer.start()
    try:
        line = server.stdout.readline()
    finally:
        killer.cancel()
    if not line:
        server.wait(10)
        raise SystemExit(f"the fake API server failed to start (exit status {server.returncode})")
    return server, json.loads(line)


def _stop_server(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        try:
            assert server.stdin is not None
            server.stdin.write("quit\n")
            server.stdin.close()
            server.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
            server.wait(10)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-pods-") as tmp:
        args.kubeconfig = str(Path(tmp) / "kubeconfig")
        print(f"fake API server with {args.pods:,} pods ...", file=sys.stderr, flush=True)
        server, info = _start_server(args)
        try:
            print(f"baseline: the client decoding the list, best of {args.rounds} ...", file=sys.stderr, flush=True)
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--role",
                "baseline",
                "--pods",
                str(args.pods),
                "--rounds",
                str(args.rounds),
                "--sample",
                str(args.sample),
                "--kubeconfig",
                args.kubeconfig,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            if out.returncode != 0:
                raise SystemExit(f"the baseline failed:\n{out.stderr[-3000:]}")
            base = json.loads(out.stdout.strip().splitlines()[-1])
            print("collector: list, windows, watch ...", file=sys.stderr, flush=True)
            col = collector(args, server, Path(tmp))
        finally:
            _stop_server(server)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "settings": {
            "pods": args.pods,
            "windows": args.windows,
            "updates": args.updates,
            "rounds": args.rounds,
            "sample": args.sample,
            "namespaces": NAMESPACES,
        },
        "raw_bytes_per_pod": info["raw_bytes_per_pod"],
        "server_setup_s": info["setup_s"],
        "baseline": base,
        "collector": col,
        "summary": summarise(info, base, col),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def summarise(info: dict[str, Any], base: dict[str, Any], col: dict[str, Any]) -> list[dict[str, Any]]:
    decode = "client decodes the list, pods/s"
    return [
        row("first list into the tracker (pods/s)", col["pods_per_s"], base["pods_per_s"], decode),
        row(
            f"{col['windows']} windows of 60 s collected (events/s)",
            col["events_per_s"],
            base["pods_per_s"],
            decode + " (a list per tick)",
        ),
        row("watch updates applied (events/CPU-s)", col["watch_events_per_cpu_s"], base["pods_per_s"], decode),
        row(
            "memory kept per pod (bytes)",
            col["tracker_bytes_per_pod"],
            base["model_bytes_per_pod"],
            "client models per pod",
        ),
        row("  (raw pod JSON, bytes)", info["raw_bytes_per_pod"], None, ""),
        row(
            f"RSS growth holding {col['pods']:,} pods (MiB)",
            col["rss_growth_mib"],
            base["rss_growth_mib"],
            "RSS growth holding the models",
        ),
        row("peak RSS (MiB)", col["peak_rss_mib"], base["peak_rss_mib"], "client process peak"),
    ]


def print_table(r: dict[str, Any]) -> None:
    print_summary("kubernetes receiver", r["summary"])
    c, b = r["collector"], r["baseline"]
    print(
        f"{c['pods']:,} pods in {NAMESPACES} namespaces, {r['raw_bytes_per_pod']:,.0f} bytes of JSON each.\n"
        f"list: the informer's first list (paged by 500) into the tracker {c['list_s']:.2f} s; the client "
        f"decoding the whole list into models {min(b['list_s']):.2f} s (best of {len(b['list_s'])}).\n"
        f"windows: {c['events']:,} events in {sum(c['window_s']):.2f} s over {c['windows']} windows "
        f"(collect() with pruning at the watermark); {c['tracked_after_windows']:,} pods tracked after them.\n"
        f"watch: {c['updates']:,} MODIFIED updates took {c['watch_cpu_s']:.2f} CPU-s of the informer thread; "
        f"they arrived over {c['watch_s']:.2f} s ({c['watch_events_per_s_wall']:,.0f}/s), paced by the fake "
        f"({c['server_apply_s']:.2f} s to apply them).\n"
        f"RSS: {c['rss_before_mib']:.0f} MiB before the list, {c['rss_listed_mib']:.0f} after it, "
        f"{c['rss_end_mib']:.0f} at the end, peak {c['peak_rss_mib']:.0f}; the client process "
        f"{b['rss_before_mib']:.0f} before, {b['rss_holding_list_mib']:.0f} holding the models, peak "
        f"{b['peak_rss_mib']:.0f}.\n"
        f"bytes per pod: tracemalloc on {c['sample']:,} pods, what stays allocated after the raw objects go.\n"
        f"run took {r['elapsed_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=10_000, help="pods in the fake API server")
    p.add_argument("--windows", type=int, default=10, help="60-second windows collected")
    p.add_argument("--updates", type=int, default=2000, help="MODIFIED updates sent through the watch")
    p.add_argument(
        "--rounds", type=int, default=None, help="baseline decodes, the best kept (default 3; 2 above 5,000 pods)"
    )
    p.add_argument("--sample", type=int, default=1000, help="pods in the tracemalloc bytes-per-pod samples")
    p.add_argument("--json", type=Path, default=Path("/tmp/collector-bench/kubernetes.json"), help="write results")
    p.add_argument("--role", choices=("main", "server", "baseline"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--kubeconfig", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "server":
        asyncio.run(serve(args))
        return 0
    if args.role == "baseline":
        print(json.dumps(baseline(args)))
        return 0
    if args.rounds is None:  # each decode of 10,000 pods takes ~10 s here: keep the whole run near a minute
        args.rounds = 3 if args.pods <= 5000 else 2
    results = run(args)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
