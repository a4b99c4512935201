"""The ``runai`` receiver: usage of NVIDIA Run:ai workloads and pods per time window.

Built on the pull-receiver framework (windows, watermarks, backfill, retries,
leadership).  For one window ``[start, end)`` it lists the workloads in the
configured phases (and their pods), reads each one's metrics for exactly that
window, and turns them into one record per workload (or pod) that had samples
in it (docs/components/runai-receiver.md):

* allocations and usage are integrated over the window (GPU allocation x
  seconds, CPU core-seconds, memory byte-seconds), with time-weighted averages
  beside them -- not one point sample per tick;
* a metric the API has no measurement for is left out of the event and
  counted (``collector_runai_missing_measurements_total``), never sent as 0;
* every call of the window must succeed: one failure fails the window, which
  is retried as a whole, so the watermark never passes a half-read window;
* ids come from the resource id and the window start.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any

from collector.api import CompiledMapping, Meta, PullReceiver, RetryableError, Window, compile_expression
from collector_plugin_runai.client import RunaiAuthError, RunaiClient
from collector_plugin_runai.config import MAX_SAMPLES, RunaiReceiverConfig
from collector_plugin_runai.integrate import integrate

#: Metrics whose integral is billable, and the field it goes to.
INTEGRATED = {
    "GPU_ALLOCATION": "gpu_allocation_seconds",
    "CPU_REQUEST_CORES": "cpu_request_core_seconds",
    "CPU_LIMIT_CORES": "cpu_limit_core_seconds",
    "CPU_USAGE_CORES": "cpu_usage_core_seconds",
    "CPU_MEMORY_REQUEST_BYTES": "memory_request_byte_seconds",
    "CPU_MEMORY_LIMIT_BYTES": "memory_limit_byte_seconds",
    "CPU_MEMORY_USAGE_BYTES": "memory_usage_byte_seconds",
    "GPU_MEMORY_REQUEST_BYTES": "gpu_memory_request_byte_seconds",
    "GPU_MEMORY_USAGE_BYTES": "gpu_memory_usage_byte_seconds",
}
_SUBJECT_FIELD = {
    "project": "project",
    "department": "department",
    "cluster": "cluster",
    "submitter": "submitter",
    "workload": "workload",
}


def _read_secret(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


class RunaiReceiver(PullReceiver[RunaiReceiverConfig]):
    def __init__(self, ctx: Any, config: RunaiReceiverConfig) -> None:
        super().__init__(ctx, config)
        self.source = config.source
        self.mapping: CompiledMapping | None = None
        if config.mapping is not None:
            self.mapping = compile_expression(config.mapping, ctx.functions, path=f"receivers.{ctx.id}.mapping")
        ctx.telemetry.redactor.add(*config.secrets())
        self.client: RunaiClient | None = None
        self._auth_problem: str | None = None
        m = ctx.metrics
        self._m_missing = m.counter(
            "runai_missing_measurements",
            "Metric types the API had no measurement for (left out of the event, never sent as 0).",
            ["receiver", "resource", "metric"],
        )
        self._m_unbilled = m.counter(
            "runai_unbilled", "Workloads or pods without the configured subject, not billed.", ["receiver", "kind"]
        )
        self._m_requests = m.gauge("runai_requests", "HTTP requests made to the Run:ai API since start.", ["receiver"])
        self._m_window_requests = m.gauge(
            "runai_window_requests", "HTTP requests the last collected window took.", ["receiver"]
        )

    # -- lifecycle -----------------------------------------------------------------

    def _secret(self) -> str:
        cfg = self.config
        if cfg.app_secret is not None:
            return cfg.app_secret.get_secret_value()
        assert cfg.app_secret_file is not None
        try:
            secret = _read_secret(cfg.app_secret_file)
        except OSError as exc:
            raise RetryableError(
                f"receiver {self.id}: cannot read app_secret_file {str(cfg.app_secret_file)!r}: {exc.strerror}"
            ) from None
        self.ctx.telemetry.redactor.add(secret)
        return secret

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.config.insecure_skip_verify:
            return False
        if self.config.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.config.ca_file))
        return True

    async def _start(self) -> None:
        cfg = self.config
        self.client = RunaiClient(
            cfg.url,
            cfg.app_id,
            self._secret,
            timeout=cfg.timeout,
            max_concurrency=cfg.max_concurrency,
            retries=cfg.retries,
            retry_initial=min(cfg.retry_initial, 1.0),
            retry_max=min(cfg.retry_max, 10.0),
            ssl=await asyncio.to_thread(self._ssl),
            log=self.log,
        )
        await self.client.start()
        await super()._start()

    async def _shutdown(self) -> None:
        try:
            await super()._shutdown()
        finally:
            if self.client is not None:
                await self.client.close()
                self.client = None

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["url"] = self.config.url
        out["requests"] = self.client.requests if self.client is not None else 0
        if self._auth_problem:
            out["ready"] = False
            out["reason"] = self._auth_problem
        return out

    # -- the window ----------------------------------------------------------------

    def samples_for(self, window: Window) -> int:
        return max(1, min(MAX_SAMPLES, math.ceil(window.seconds / self.config.resolution - 1e-9)))

    async def collect(self, window: Window) -> list[Any]:
        try:
            events = await self._collect(window)
        except RunaiAuthError as exc:
            # Credentials or permissions: nothing retrying fixes by itself, so /ready says so.
            self._auth_problem = str(exc)
            raise
        self._auth_problem = None
        return events

    async def _collect(self, window: Window) -> list[Any]:
        client = self.client
        if client is None:
            raise RetryableError(f"receiver {self.id} is not started")
        cfg = self.config
        before = client.requests
        samples = self.samples_for(window)
        # Finished workloads are listed when they completed at or after the window's start: they ran in it
        # (a workload that completed after the window ends is billed its part of it too).
        workloads = await client.workloads(
            cfg.phases, cfg.page_size, finished_phases=cfg.finished_phases, finished_since=window.start
        )
        by_id = {str(w.get("id")): w for w in workloads}
        jobs: list[tuple[str, dict[str, Any], Any]] = []
        if "workloads" in cfg.resources:
            for w in workloads:
                if not _alive_in(w, window):
                    continue  # created after the window or finished before it: no call, nothing to bill
                call = client.metrics("workloads", str(w["id"]), cfg.workload_metrics, window.start, window.end,
                                      samples)  # fmt: skip
                jobs.append(("workload", w, call))
        if "pods" in cfg.resources:
            for p in await client.pods(cfg.page_size):
                if not _alive_in(p, window):
                    continue
                call = client.metrics("pods", str(p["id"]), cfg.pod_metrics, window.start, window.end, samples,
                                      workload_id=str(p.get("workloadId")))  # fmt: skip
                jobs.append(("pod", p, call))
        # All or nothing: one failed call fails the window (the others are cancelled), which is retried.
        results = await _all_or_nothing([call for _, _, call in jobs])
        meta = Meta(receiver=self.id, window=window)
        events: list[Any] = []
        unbilled: dict[str, int] = {}
        for (kind, obj, _), series in zip(jobs, results, strict=True):
            record = self._record(kind, obj, by_id, series, window)
            if record is None:
                continue
            event = self.window_event(
                window,
                meta,
                record,
                event_type=f"runai_{record['kind']}",
                key=(record["kind"], record["id"]),
                describe=_describe,
            )
            if event is None:
                if record["subject"] is None and self.mapping is None:
                    unbilled[kind] = unbilled.get(kind, 0) + 1
                continue
            events.append(event)
        for kind, count in unbilled.items():
            self._m_unbilled.labels(receiver=self.id, kind=kind).inc(count)
            self.log.warning(
                "receiver %s: %d %s(s) without a %s were not billed in window %s",
                self.id, count, kind, cfg.subject, window,
            )  # fmt: skip
        self._m_requests.labels(receiver=self.id).set(client.requests)
        self._m_window_requests.labels(receiver=self.id).set(client.requests - before)
        return events

    def _record(
        self,
        kind: str,
        obj: dict[str, Any],
        workloads: dict[str, dict[str, Any]],
        series: dict[str, Any],
        window: Window,
    ) -> dict[str, Any] | None:
        wanted = self.config.workload_metrics if kind == "workload" else self.config.pod_metrics
        data: dict[str, Any] = {}
        covered = 0.0
        present = False
        missing: list[str] = []
        for metric in wanted:
            points = series.get(metric)
            if points is None:
                missing.append(metric)
                continue
            found = integrate(points, window.start, window.end)
            if found is None:
                continue  # measured, but nothing inside this window (not running then)
            present = True
            covered = max(covered, found.seconds)
            data[f"{metric.lower()}_avg"] = found.average
            if metric in INTEGRATED:
                data[INTEGRATED[metric]] = found.total
        if not present:
            return None  # no sample of anything in this window: it did not run in it
        for metric in missing:
            self._m_missing.labels(receiver=self.id, resource=kind, metric=metric).inc()
        owner = workloads.get(str(obj.get("workloadId"))) if kind == "pod" else obj
        owner = owner or {}
        info = {
            "workload": obj.get("workloadName") if kind == "pod" else obj.get("name"),
            "workload_id": obj.get("workloadId") if kind == "pod" else obj.get("id"),
            "project": obj.get("projectName") or owner.get("projectName"),
            "department": owner.get("departmentName"),
            "cluster": obj.get("clusterId") or owner.get("clusterId"),
            "submitter": owner.get("submittedBy"),
            "type": owner.get("type"),
        }
        if kind == "pod":
            info.update(pod=obj.get("name"), pod_id=obj.get("id"), node=obj.get("nodeName"))
        data = {**{k: v for k, v in info.items() if v is not None}, "seconds": covered, **data}
        subject = info.get(_SUBJECT_FIELD[self.config.subject])
        # The phase is what it is now, not in the window: it is in the record for mappings, not in the default
        # event, so a window read again sends the same event.
        phase = obj.get("phase") if kind == "workload" else obj.get("k8sPhase") or obj.get("phase")
        return {"kind": kind, "id": str(obj.get("id")), "subject": subject or None, "phase": phase,
                "missing": missing, "data": data}  # fmt: skip


def _describe(record: dict[str, Any]) -> str:
    return f"{record['kind']} {record['id']}"


def _alive_in(obj: dict[str, Any], window: Window) -> bool:
    """Whether a workload or pod may have run in ``window``, from its createdAt and completedAt/deletedAt
    (unknown or unreadable times count as alive: a wasted call is better than a missed bill)."""
    created = _time(obj.get("createdAt"))
    if created is not None and created >= window.end:
        return False
    ended = [t for t in (_time(obj.get("completedAt")), _time(obj.get("deletedAt"))) if t is not None]
    return not (ended and min(ended) < window.start)


def _time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


async def _all_or_nothing(calls: list[Any]) -> list[Any]:
    """Await every call; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
