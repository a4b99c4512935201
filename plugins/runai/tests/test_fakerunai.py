"""The fake Run:ai control plane keeps to the API's contract.

The plugin's tests mean something only if the fake answers as a control plane
does, so these tests pin its contract: every payload it sends is validated with
the official ``runapy`` SDK's models, the SDK itself drives it, and the rules a
client can get wrong -- token expiry, paging over filtered lists, the 9 metric
types per call, per-resource metric names, missing series, 429 with
Retry-After -- answer as documented.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from fakerunai import PHASES, POD_METRICS, WORKLOAD_METRICS, FakeRunai, iso
from runai.models import (
    Error,
    GetWorkloads200Response,
    ListPods200Response,
    MetricsResponse,
    Phase,
    PodMetricType,
    TokenRequest,
    TokenResponse,
    Workload,
    WorkloadMetricType,
)

T0 = 1_796_000_000.0  # 2026-11-30T00:53:20Z: the metric windows lie around it
NOW = T0 + 3600  # the fake's clock starts an hour later, so those windows are in the past
TIMEOUT = aiohttp.ClientTimeout(total=5)
Params = list[tuple[str, str]]


class Clock:
    """The fake's injected time, advanced by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeRunai]:
    async with FakeRunai(time=clock, token_ttl=600.0) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def post_token(http: aiohttp.ClientSession, fake: FakeRunai, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(
        f"{fake.url}/api/v1/token", data=data, headers={"Content-Type": "application/json"}
    ) as response:
        return response.status, await response.json()


async def new_token(http: aiohttp.ClientSession, fake: FakeRunai) -> str:
    status, body = await post_token(http, fake, {"grantType": "app_token", "AppId": "collector", "AppSecret": "s3cret"})
    assert status == 200, body
    answer = TokenResponse.model_validate(body)
    assert answer.access_token is not None
    return answer.access_token


async def get(
    http: aiohttp.ClientSession, fake: FakeRunai, path: str, token: str | None, params: Params | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(f"{fake.url}{path}", params=params or [], headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def ok(
    http: aiohttp.ClientSession, fake: FakeRunai, path: str, token: str | None, params: Params | None = None
) -> Any:
    """GET that must answer 200; returns the body."""
    status, body, _ = await get(http, fake, path, token, params)
    assert status == 200, body
    return body


async def expect_error(
    http: aiohttp.ClientSession, fake: FakeRunai, path: str, token: str | None, params: Params, status: int
) -> str:
    """Assert an error answer with the API's JSON error body; returns its message."""
    got, body, _ = await get(http, fake, path, token, params)
    assert got == status, body
    error = Error.model_validate(body)
    assert error.code == status
    return error.message


def jwt_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    assert len(parts) == 3 and all(parts)
    for part in parts:
        assert "=" not in part and "+" not in part and "/" not in part  # base64url, unpadded
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    assert header["typ"] == "JWT" and header["alg"]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    return claims


def window(start: float, end: float, samples: int, *types: str) -> Params:
    params = [("metricType", t) for t in types]
    return [*params, ("start", iso(start)), ("end", iso(end)), ("numberOfSamples", str(samples))]


# --- the names the fake knows are the SDK's ---------------------------------------------------------------


def test_metric_types_and_phases_are_the_sdks() -> None:
    assert {m.value for m in WorkloadMetricType} == WORKLOAD_METRICS
    assert {m.value for m in PodMetricType} == POD_METRICS
    assert {p.value for p in Phase} == PHASES
    assert "GPU_ALLOCATION" in WORKLOAD_METRICS - POD_METRICS


# --- tokens -------------------------------------------------------------------------------------------------


async def test_token_is_a_jwt_that_expires_with_the_injected_clock(
    fake: FakeRunai, http: aiohttp.ClientSession, clock: Clock
) -> None:
    token = await new_token(http, fake)
    claims = jwt_claims(token)
    assert claims["exp"] == NOW + 600
    assert fake.token_requests == 1

    clock.now = NOW + 599
    await ok(http, fake, "/api/v1/workloads", token)

    clock.now = NOW + 600
    message = await expect_error(http, fake, "/api/v1/workloads", token, [], 401)
    assert "expired" in message

    fresh = await new_token(http, fake)
    assert jwt_claims(fresh)["exp"] == NOW + 1200
    assert (await get(http, fake, "/api/v1/workloads", fresh))[0] == 200
    assert fake.token_requests == 2


async def test_token_request_is_checked(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    # The SDK's model spells the keys appID/appSecret, its client AppId/AppSecret: the server takes both.
    sdk_body = TokenRequest(grant_type="app_token", app_id="collector", app_secret="s3cret").to_dict()
    assert (await post_token(http, fake, sdk_body))[0] == 200

    cases: list[tuple[Any, int]] = [
        ({"grantType": "app_token", "AppId": "collector", "AppSecret": "wrong"}, 401),
        ({"grantType": "app_token", "AppId": "someone", "AppSecret": "s3cret"}, 401),
        ({"grantType": "app_token", "AppId": "collector"}, 400),
        ({"grantType": "password", "AppId": "collector", "AppSecret": "s3cret"}, 400),
        ({"grantType": "app_token", "AppId": "collector", "AppSecret": 7}, 400),
        (["app_token"], 400),
        (b"not json", 400),
    ]
    for body, expected in cases:
        status, answer = await post_token(http, fake, body)
        assert status == expected, (body, answer)
        assert Error.model_validate(answer).code == expected
    assert fake.token_requests == 1


async def test_missing_unknown_and_revoked_tokens_are_401(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    await expect_error(http, fake, "/api/v1/workloads", None, [], 401)
    await expect_error(http, fake, "/api/v1/workloads", token[:-4] + "AAAA", [], 401)
    fake.add_workload("w1", name="job")
    await expect_error(http, fake, "/api/v1/workloads/w1/metrics", None, window(T0, T0 + 60, 6, "GPU_UTILIZATION"), 401)

    fake.expire_tokens()
    await expect_error(http, fake, "/api/v1/workloads/pods", token, [], 401)
    fresh = await new_token(http, fake)
    assert (await get(http, fake, "/api/v1/workloads/pods", fresh))[0] == 200


# --- paging and filters ---------------------------------------------------------------------------------------


async def list_all(
    http: aiohttp.ClientSession, fake: FakeRunai, token: str, path: str, key: str, params: Params, limit: int
) -> list[list[str]]:
    """Follow ``next`` from offset 0; returns the ids of each page (bounded, so a loop cannot hang the test)."""
    pages: list[list[str]] = []
    offset: int | None = 0
    while offset is not None:
        assert len(pages) < 50, "paging does not end"
        body = await ok(http, fake, path, token, [*params, ("offset", str(offset)), ("limit", str(limit))])
        model = GetWorkloads200Response if key == "workloads" else ListPods200Response
        model.model_validate(body)
        pages.append([item["id"] for item in body[key]])
        offset = body.get("next")
        if offset is not None:
            assert offset == (0 if not pages[:-1] else sum(map(len, pages[:-1]))) + limit
    return pages


async def test_paging_counts_what_the_filter_kept(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    running = []
    for i in range(12):
        phase = "Running" if i % 3 else "Pending"  # 8 running, interleaved with pending ones
        fake.add_workload(f"w{i:02}", name=f"job-{i}", phase=phase, project="team-a" if i < 6 else "team-b")
        if phase == "Running":
            running.append(f"w{i:02}")

    # 8 matches in pages of 3: the boundaries fall inside the filtered list, not the raw one.
    pages = await list_all(http, fake, token, "/api/v1/workloads", "workloads", [("filterBy", "phase==Running")], 3)
    assert pages == [running[0:3], running[3:6], running[6:8]]

    # An exact multiple: the last full page has no next.
    pages = await list_all(http, fake, token, "/api/v1/workloads", "workloads", [("filterBy", "phase==Running")], 4)
    assert pages == [running[0:4], running[4:8]]

    # Repeated filterBy clauses are ANDed; so are the SDK's comma-joined ones.
    expected = [w for w in running if w >= "w06"]
    for params in (
        [("filterBy", "phase!=Pending"), ("filterBy", "projectName==team-b"), ("filterBy", "clusterId==cluster-1")],
        [("filterBy", "phase!=Pending,projectName==team-b")],
    ):
        pages = await list_all(http, fake, token, "/api/v1/workloads", "workloads", params, 50)
        assert pages == [expected]

    # Nothing matches: an empty list and no next, even with a full-page limit asked from offset 0.
    body = await ok(http, fake, "/api/v1/workloads", token, [("filterBy", "phase==Degraded"), ("limit", "5")])
    assert body == {"workloads": []}
    body = await ok(http, fake, "/api/v1/workloads", token, [("offset", "100")])
    assert body == {"workloads": []}

    # Default limit 50, no filter.
    body = await ok(http, fake, "/api/v1/workloads", token)
    assert [w["id"] for w in body["workloads"]] == [f"w{i:02}" for i in range(12)] and "next" not in body


async def test_workload_payloads_are_the_sdks(fake: FakeRunai, http: aiohttp.ClientSession, clock: Clock) -> None:
    token = await new_token(http, fake)
    added = fake.add_workload(
        "0b4c-1", name="train-llm", project="nlp", department="ai", cluster_id="c-9", submitted_by="bob@example.com"
    )
    fake.add_pod("p1", "0b4c-1", name="train-llm-0-0", node="gpu-node-3")
    body = await ok(http, fake, "/api/v1/workloads", token)
    workload = GetWorkloads200Response.model_validate(body).workloads[0]
    assert Workload.model_validate(added).id == "0b4c-1"
    assert (workload.id, workload.name, workload.project_name, workload.department_name) == (
        "0b4c-1",
        "train-llm",
        "nlp",
        "ai",
    )
    assert (workload.cluster_id, workload.submitted_by, workload.phase, workload.running_pods) == (
        "c-9",
        "bob@example.com",
        Phase.RUNNING,
        1,
    )
    assert workload.created_at == datetime.fromtimestamp(NOW, tz=UTC)
    single = await ok(http, fake, "/api/v1/workloads/0b4c-1", token)
    assert Workload.model_validate(single).name == "train-llm"
    await expect_error(http, fake, "/api/v1/workloads/nope", token, [], 404)

    # A phase change moves it across filters; a removal takes it out of the default list.
    clock.now = NOW + 30
    fake.set_phase("0b4c-1", "Completed")
    assert (await get(http, fake, "/api/v1/workloads", token, [("filterBy", "phase==Running")]))[1]["workloads"] == []
    fake.remove_workload("0b4c-1")
    assert (await get(http, fake, "/api/v1/workloads", token))[1] == {"workloads": []}
    body = await ok(http, fake, "/api/v1/workloads", token, [("deleted", "true")])
    deleted = GetWorkloads200Response.model_validate(body).workloads
    assert [(w.id, w.phase, w.deleted_at) for w in deleted] == [
        ("0b4c-1", Phase.COMPLETED, datetime.fromtimestamp(NOW + 30, tz=UTC))
    ]


async def test_pods_list_with_full_verbosity(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job-1", project="team-a")
    fake.add_workload("w2", name="job-2", project="team-b")
    for i in range(5):
        fake.add_pod(f"p{i}", "w1" if i < 3 else "w2", name=f"pod-{i}", phase="Succeeded" if i == 4 else "Running")

    body = await ok(http, fake, "/api/v1/workloads/pods", token, [("verbosity", "full"), ("limit", "2")])
    pods = ListPods200Response.model_validate(body)
    assert [(p.id, p.workload_id, p.workload_name, p.project_name) for p in pods.pods] == [
        ("p0", "w1", "job-1", "team-a"),
        ("p1", "w1", "job-1", "team-a"),
    ]
    assert pods.next == 2

    body = await ok(http, fake, "/api/v1/workloads/pods", token)
    brief = ListPods200Response.model_validate(body).pods
    assert len(brief) == 5 and all(p.workload_name is None and p.project_name is None for p in brief)

    pages = await list_all(
        http,
        fake,
        token,
        "/api/v1/workloads/pods",
        "pods",
        [("verbosity", "full"), ("filterBy", "projectName==team-b"), ("completed", "false")],
        1,
    )
    assert pages == [["p3"]]
    body = await ok(http, fake, "/api/v1/workloads/w1/pods", token)
    assert [p.id for p in ListPods200Response.model_validate(body).pods] == ["p0", "p1", "p2"]
    await expect_error(http, fake, "/api/v1/workloads/pods", token, [("verbosity", "loud")], 400)


async def test_bad_list_parameters_are_400(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    for params in (
        [("limit", "501")],
        [("limit", "0")],
        [("limit", "ten")],
        [("offset", "-1")],
        [("filterBy", "color==red")],
        [("filterBy", "phase==Running"), ("filterBy", "colour!=blue")],
        [("filterBy", "phase~Running")],
        [("sortBy", "color")],
        [("sortOrder", "sideways")],
    ):
        await expect_error(http, fake, "/api/v1/workloads", token, params, 400)
    assert (await get(http, fake, "/api/v1/workloads", token, [("limit", "500")]))[0] == 200


# --- metrics ------------------------------------------------------------------------------------------------------


async def test_samples_of_a_step_function_at_exact_times(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job")
    fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0 + 30, 2.0), (T0, 1.0)])  # unordered on purpose
    fake.set_series("workloads", "w1", "CPU_USAGE_CORES", [(T0, 0.25)])

    # Samples at start + i*(end-start)/N: T0-10 (no data yet), T0, T0+10, T0+20 (1), T0+30, T0+40 (2).
    params = window(T0 - 10, T0 + 50, 6, "GPU_ALLOCATION", "CPU_USAGE_CORES", "GPU_UTILIZATION")
    body = await ok(http, fake, "/api/v1/workloads/w1/metrics", token, params)
    answer = MetricsResponse.model_validate(body)
    by_type = {m.type: m for m in answer.measurements}
    assert set(by_type) == {"GPU_ALLOCATION", "CPU_USAGE_CORES"}  # GPU_UTILIZATION was never set: absent, not 0
    gpu = by_type["GPU_ALLOCATION"].values or []
    assert [(v.timestamp, v.value) for v in gpu] == [
        (datetime.fromtimestamp(T0 + s, tz=UTC), value)
        for s, value in ((0, "1"), (10, "1"), (20, "1"), (30, "2"), (40, "2"))
    ]
    cpu = by_type["CPU_USAGE_CORES"].values or []
    assert [v.value for v in cpu] == ["0.25"] * 5
    assert all(isinstance(v["value"], str) for m in body["measurements"] for v in m["values"])

    # Default 20 samples; a window before any data has no measurement at all.
    default = [("metricType", "GPU_ALLOCATION"), ("start", iso(T0)), ("end", iso(T0 + 200))]
    body = await ok(http, fake, "/api/v1/workloads/w1/metrics", token, default)
    assert [v["timestamp"] for v in body["measurements"][0]["values"]] == [iso(T0 + 10 * i) for i in range(20)]
    body = await ok(http, fake, "/api/v1/workloads/w1/metrics", token, window(T0 - 100, T0, 10, "GPU_ALLOCATION"))
    assert MetricsResponse.model_validate(body).measurements == []


async def test_no_samples_from_the_future(fake: FakeRunai, http: aiohttp.ClientSession, clock: Clock) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job")
    fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0, 1.0)])
    clock.now = T0 + 25
    body = await ok(http, fake, "/api/v1/workloads/w1/metrics", token, window(T0, T0 + 60, 6, "GPU_ALLOCATION"))
    values = MetricsResponse.model_validate(body).measurements[0].values or []
    assert [v.timestamp for v in values] == [datetime.fromtimestamp(T0 + s, tz=UTC) for s in (0, 10, 20)]


async def test_pod_metrics(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job")
    fake.add_workload("w2", name="other")
    fake.add_pod("p1", "w1", name="job-0")
    fake.set_series("pods", "p1", "GPU_UTILIZATION_PER_GPU", [(T0, 87.5)])
    nine = [*sorted(POD_METRICS - {"GPU_UTILIZATION_PER_GPU"})[:8], "GPU_UTILIZATION_PER_GPU"]
    # The SDK's form: one comma-joined metricType.
    params = [("metricType", ",".join(nine)), ("start", iso(T0)), ("end", iso(T0 + 60)), ("numberOfSamples", "2")]
    body = await ok(http, fake, "/api/v1/workloads/w1/pods/p1/metrics", token, params)
    answer = MetricsResponse.model_validate(body)
    assert [(m.type, [v.value for v in m.values or []]) for m in answer.measurements] == [
        ("GPU_UTILIZATION_PER_GPU", ["87.5", "87.5"])
    ]
    valid = window(T0, T0 + 60, 2, "GPU_UTILIZATION_PER_GPU")
    await expect_error(http, fake, "/api/v1/workloads/w2/pods/p1/metrics", token, valid, 404)  # not w2's pod
    await expect_error(http, fake, "/api/v1/workloads/w1/pods/nope/metrics", token, valid, 404)
    await expect_error(http, fake, "/api/v1/workloads/nope/metrics", token, valid[1:], 404)


async def test_bad_metric_requests_are_400(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job")
    fake.add_pod("p1", "w1", name="job-0")
    workload, pod = "/api/v1/workloads/w1/metrics", "/api/v1/workloads/w1/pods/p1/metrics"
    ten = sorted(WORKLOAD_METRICS)[:10]

    message = await expect_error(http, fake, workload, token, window(T0, T0 + 60, 6, *ten), 400)
    assert "at most 9" in message
    assert (await get(http, fake, workload, token, window(T0, T0 + 60, 6, *ten[:9])))[0] == 200
    message = await expect_error(
        http, fake, pod, token, window(T0, T0 + 60, 6, "CPU_USAGE_CORES", "GPU_ALLOCATION"), 400
    )
    assert "GPU_ALLOCATION" in message and "pod" in message
    await expect_error(http, fake, workload, token, window(T0, T0 + 60, 6, "GPU_UTILIZATION_PER_GPU"), 400)
    await expect_error(http, fake, workload, token, window(T0, T0 + 60, 6), 400)  # no metricType
    await expect_error(http, fake, workload, token, window(T0 + 60, T0 + 60, 6, "GPU_UTILIZATION"), 400)
    await expect_error(http, fake, workload, token, window(T0 + 60, T0, 6, "GPU_UTILIZATION"), 400)
    await expect_error(http, fake, workload, token, window(T0, T0 + 60, 1001, "GPU_UTILIZATION"), 400)
    await expect_error(http, fake, workload, token, window(T0, T0 + 60, 0, "GPU_UTILIZATION"), 400)
    base = [("metricType", "GPU_UTILIZATION"), ("end", iso(T0))]
    await expect_error(http, fake, workload, token, base, 400)  # no start
    await expect_error(http, fake, workload, token, [*base, ("start", "yesterday")], 400)
    await expect_error(http, fake, workload, token, [*base, ("start", str(int(T0 - 60)))], 400)
    assert (await get(http, fake, workload, token, [*base, ("start", "2026-11-30T00:52:20+00:00")]))[0] == 200


async def test_max_samples_is_configurable(http: aiohttp.ClientSession) -> None:
    async with FakeRunai(max_samples=10) as fake:
        token = await new_token(http, fake)
        fake.add_workload("w1", name="job")
        path = "/api/v1/workloads/w1/metrics"
        assert (await get(http, fake, path, token, window(T0, T0 + 60, 10, "GPU_UTILIZATION")))[0] == 200
        await expect_error(http, fake, path, token, window(T0, T0 + 60, 11, "GPU_UTILIZATION"), 400)


# --- faults and observation -----------------------------------------------------------------------------------


async def test_fail_next_with_retry_after(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    fake.fail_next(2, 429, retry_after=1.5, path="/api/v1/workloads")
    token = await new_token(http, fake)  # another path: not failed
    for _ in range(2):
        status, body, headers = await get(http, fake, "/api/v1/workloads", token)
        assert status == 429 and headers["Retry-After"] == "1.5"
        assert Error.model_validate(body).code == 429
    assert (await get(http, fake, "/api/v1/workloads", token))[0] == 200

    fake.fail_next(1, 503, retry_after=2)
    status, body = await post_token(http, fake, {"grantType": "app_token", "AppId": "collector", "AppSecret": "s3cret"})
    assert status == 503 and Error.model_validate(body).code == 503
    fake.fail_next(1, 500)
    status, body, headers = await get(http, fake, "/api/v1/workloads/pods", token)
    assert status == 500 and "Retry-After" not in headers
    assert (await get(http, fake, "/api/v1/workloads/pods", token))[0] == 200
    assert fake.token_requests == 1  # the failed token call does not count

    # An outage ends with fail_next(0, ...): all pending faults, or those of one path.
    fake.fail_next(1000, 503)
    fake.fail_next(1000, 502, path="/api/v1/workloads/pods")
    fake.fail_next(0, 503, path="/api/v1/workloads/pods")
    assert (await get(http, fake, "/api/v1/workloads/pods", token))[0] == 503
    fake.fail_next(0, 503)
    assert (await get(http, fake, "/api/v1/workloads/pods", token))[0] == 200

    assert [(method, path) for method, path, _ in fake.requests] == [
        ("POST", "/api/v1/token"),
        ("GET", "/api/v1/workloads"),
        ("GET", "/api/v1/workloads"),
        ("GET", "/api/v1/workloads"),
        ("POST", "/api/v1/token"),
        ("GET", "/api/v1/workloads/pods"),
        ("GET", "/api/v1/workloads/pods"),
        ("GET", "/api/v1/workloads/pods"),
        ("GET", "/api/v1/workloads/pods"),
    ]


async def test_requests_record_the_query_as_a_multidict(fake: FakeRunai, http: aiohttp.ClientSession) -> None:
    token = await new_token(http, fake)
    fake.add_workload("w1", name="job")
    await get(http, fake, "/api/v1/workloads/w1/metrics", token, window(T0, T0 + 60, 3, "GPU_UTILIZATION", "POD_COUNT"))
    method, path, query = fake.requests[-1]
    assert (method, path) == ("GET", "/api/v1/workloads/w1/metrics")
    assert query == {
        "metricType": ["GPU_UTILIZATION", "POD_COUNT"],
        "start": [iso(T0)],
        "end": [iso(T0 + 60)],
        "numberOfSamples": ["3"],
    }
    await expect_error(http, fake, "/api/v1/nothing-here", token, [], 404)
    assert fake.requests[-1][:2] == ("GET", "/api/v1/nothing-here")


def test_store_rejects_what_the_api_could_not_hold() -> None:
    fake = FakeRunai()
    fake.add_workload("w1", name="job")
    with pytest.raises(ValueError):
        fake.add_workload("w1", name="again")
    with pytest.raises(ValueError):
        fake.add_workload("w2", name="job", phase="Sleeping")
    with pytest.raises(ValueError):
        fake.add_pod("p1", "nope", name="orphan")
    with pytest.raises(ValueError):
        fake.set_series("pods", "p1", "GPU_ALLOCATION", [(T0, 1.0)])
    with pytest.raises(ValueError):
        fake.set_series("nodes", "n1", "GPU_UTILIZATION", [(T0, 1.0)])


# --- the official SDK drives the fake ----------------------------------------------------------------------------


async def test_the_official_sdk_drives_the_fake() -> None:
    """The SDK (comma-joined list parameters, AppId/AppSecret, isoformat datetimes) talks to the fake as to Run:ai."""
    from runai.api_client import ApiClient
    from runai.configuration import Configuration
    from runai.runai_client import RunaiClient

    async with FakeRunai() as fake:
        now = datetime.now(tz=UTC).timestamp()
        for i in range(3):
            fake.add_workload(f"w{i}", name=f"job-{i}", phase="Running" if i else "Pending")
        fake.add_pod("p1", "w1", name="job-1-0")
        fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(now - 3600, 4.0)])

        def drive() -> tuple[Any, Any, Any]:
            config = Configuration(
                client_id="collector",
                client_secret="s3cret",
                runai_base_url=fake.url,
                auto_refresh_token=False,
                retry_enabled=False,
            )
            client = RunaiClient(ApiClient(config))
            try:
                workloads = client.workloads.workloads.get_workloads(filter_by=["phase==Running"], limit=1)
                # A plain string: the SDK writes a single enum parameter with str(), "PodVerbosity.FULL" on 3.11.
                pods = client.workloads.pods.list_pods(verbosity="full")  # type: ignore[arg-type]
                metrics = client.workloads.workloads.get_workload_metrics(
                    workload_id="w1",
                    metric_type=[WorkloadMetricType.GPU_ALLOCATION, WorkloadMetricType.GPU_UTILIZATION],
                    start=datetime.fromtimestamp(now - 600, tz=UTC),
                    end=datetime.fromtimestamp(now - 300, tz=UTC),
                    number_of_samples=5,
                )
                return workloads.data, pods.data, metrics.data
            finally:
                client.close()

        workloads, pods, metrics = await asyncio.wait_for(asyncio.to_thread(drive), 10)
    page = GetWorkloads200Response.model_validate(workloads)
    assert ([w.id for w in page.workloads], page.next) == (["w1"], 1)
    assert [p.workload_name for p in ListPods200Response.model_validate(pods).pods] == ["job-1"]
    answer = MetricsResponse.model_validate(metrics)
    assert [(m.type, [v.value for v in m.values or []]) for m in answer.measurements] == [("GPU_ALLOCATION", ["4"] * 5)]
    assert fake.token_requests == 1
