"""The Run:ai API client against the fake control plane: tokens, paging, metrics, retries, secrets.

Time and sleep are injected: token expiry is driven by a settable clock, and
backoff delays are recorded instead of waited, so every test is fast and its
waits are the ones asserted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
from collector_plugin_runai.client import RunaiAuthError, RunaiClient, RunaiError, Sample, _retry_after, iso_ms
from fakerunai import FakeRunai

SECRET = "s3cret-do-not-leak"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    """Unix seconds that a test sets; shared by the fake (token exp) and the client."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def fake(clock: Clock) -> AsyncIterator[FakeRunai]:
    server = FakeRunai(app_id="collector", app_secret=SECRET, token_ttl=3600.0, time=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(url: str, clock: Clock, sleeps: list[float], *, secret: str = SECRET, **kw: Any) -> RunaiClient:
    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    kw.setdefault("timeout", 5.0)
    return RunaiClient(url, "collector", lambda: secret, time=clock, sleep=sleep, **kw)


@pytest.fixture
async def client(fake: FakeRunai, clock: Clock, sleeps: list[float]) -> AsyncIterator[RunaiClient]:
    c = make_client(fake.url, clock, sleeps)
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def requests_to(fake: FakeRunai, path: str, method: str = "GET") -> list[dict[str, list[str]]]:
    return [query for m, p, query in fake.requests if m == method and p == path]


# -- the token --------------------------------------------------------------------------------


async def test_token_is_refreshed_only_near_its_exp(fake: FakeRunai, client: RunaiClient, clock: Clock) -> None:
    fake.add_workload("w1", name="train")
    await client.workloads(["Running"])
    assert fake.token_requests == 1
    clock.now = T0 + 3600 - 61  # just outside the 60 s skew: the token is still used
    await client.workloads(["Running"])
    assert fake.token_requests == 1
    clock.now = T0 + 3600 - 59  # inside the skew: a new token before the server would refuse the old one
    assert [w["id"] for w in await client.workloads(["Running"])] == ["w1"]
    assert fake.token_requests == 2
    # no request was refused on the way: each list call was answered the first time
    assert len(requests_to(fake, "/api/v1/workloads")) == 3


async def test_a_401_gets_one_new_token_and_the_call_is_retried(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    await client.workloads(["Running"])
    fake.expire_tokens()
    assert [w["id"] for w in await client.workloads(["Running"])] == ["w1"]
    assert fake.token_requests == 2
    assert len(requests_to(fake, "/api/v1/workloads")) == 3  # 1, then the refused one and its retry


async def test_twenty_concurrent_calls_make_one_token_request(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0 - 3600, 1.0)])

    async def burst() -> None:
        answers = await asyncio.gather(
            *(client.metrics("workloads", "w1", ["GPU_ALLOCATION"], T0 - 600, T0, 10) for _ in range(20))
        )
        assert all(len(a["GPU_ALLOCATION"]) == 10 for a in answers)

    await burst()
    assert fake.token_requests == 1
    fake.expire_tokens()  # all twenty get a 401: still one refresh
    await burst()
    assert fake.token_requests == 2


async def test_wrong_secret_is_an_auth_error_that_never_shows_the_secret(
    fake: FakeRunai, clock: Clock, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-also-private"
    async with make_client(fake.url, clock, sleeps, secret=wrong) as c:
        with pytest.raises(RunaiAuthError) as info:
            await c.workloads(["Running"])
        assert info.value.status == 401
        assert "app_secret" in str(info.value) and "'collector'" in str(info.value)
        assert wrong not in str(info.value) and wrong not in repr(c)
    assert sleeps == []  # refused credentials are not retried
    assert wrong not in caplog.text


async def test_neither_secret_nor_token_reaches_logs_or_errors(
    fake: FakeRunai, client: RunaiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_workload("w1", name="train")
    await client.workloads(["Running"])
    fake.expire_tokens()
    await client.workloads(["Running"])  # 401 then refresh: logged
    fake.fail_next(4, 503, path="/api/v1/workloads")
    with pytest.raises(RunaiError) as info:
        await client.workloads(["Running"])
    fake.fail_next(1, 403, path="/api/v1/workloads")
    with pytest.raises(RunaiAuthError) as denied:
        await client.workloads(["Running"])
    assert "401" in caplog.text and "retrying" in caplog.text  # the log did record what happened
    text = caplog.text + str(info.value) + str(denied.value) + repr(client)
    assert SECRET not in text
    assert "eyJ" not in text  # a JWT starts with base64url('{"'): no token either


async def test_a_401_with_a_fresh_token_is_an_auth_error(clock: Clock, sleeps: list[float]) -> None:
    tokens = 0

    async def token(_: aiohttp.web.Request) -> aiohttp.web.Response:
        nonlocal tokens
        tokens += 1
        return aiohttp.web.json_response({"accessToken": f"opaque-{tokens}"})

    async def refuse(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"code": 401, "message": "application disabled"}, status=401)

    runner = await _stub([aiohttp.web.post("/api/v1/token", token), aiohttp.web.get("/api/v1/workloads", refuse)])
    try:
        async with make_client(_stub_url(runner), clock, sleeps) as c:
            with pytest.raises(RunaiAuthError) as info:
                await c.workloads(["Running"])
    finally:
        await runner.cleanup()
    assert info.value.status == 401 and tokens == 2  # one refresh, then reported
    assert "again with a fresh token (application disabled)" in str(info.value)
    assert "opaque-" not in str(info.value)


async def test_an_unreadable_secret_file_is_an_auth_error(fake: FakeRunai, clock: Clock) -> None:
    def missing() -> str:
        raise FileNotFoundError(2, "No such file or directory", "/run/secrets/runai")

    async with RunaiClient(fake.url, "collector", missing, time=clock) as c:
        with pytest.raises(RunaiAuthError, match="cannot read the application secret: No such file"):
            await c.pods()
    assert fake.token_requests == 0


# -- lists ------------------------------------------------------------------------------------


async def test_paging_follows_the_server_and_lists_each_workload_once(fake: FakeRunai, client: RunaiClient) -> None:
    phases = ["Running", "Pending", "Degraded", "Running", "Completed", "Running", "Pending"]
    expected = set()
    for i in range(30):
        phase = phases[i % len(phases)]
        fake.add_workload(f"w{i:02d}", name=f"job-{i}", phase=phase)
        if phase in ("Running", "Degraded"):
            expected.add(f"w{i:02d}")
    listed = await client.workloads(["Running", "Degraded"], page_size=4)
    ids = [w["id"] for w in listed]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    queries = requests_to(fake, "/api/v1/workloads")
    by_phase = {p: [q for q in queries if q.get("filterBy") == [f"phase=={p}"]] for p in ("Running", "Degraded")}
    assert len(by_phase["Running"]) == math.ceil(13 / 4) and len(by_phase["Degraded"]) == math.ceil(4 / 4)
    assert [q["offset"] for q in by_phase["Running"]] == [["0"], ["4"], ["8"], ["12"]]
    assert len(queries) == 5  # the server filtered: no request was made for the other phases


async def test_a_phase_with_nothing_in_it_ends_at_once(fake: FakeRunai, client: RunaiClient) -> None:
    for i in range(12):
        fake.add_workload(f"w{i}", name=f"job-{i}", phase="Pending")
    assert await client.workloads(["Running", "Deleting"], page_size=5) == []
    assert len(requests_to(fake, "/api/v1/workloads")) == 2  # one empty page per phase, then done


async def test_a_workload_in_two_listed_phases_is_listed_once(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    listed = await client.workloads(["Running", "Running"])
    assert [w["id"] for w in listed] == ["w1"]


async def test_pods_are_listed_with_full_verbosity(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    for i in range(7):
        fake.add_pod(f"p{i}", "w1", name=f"train-{i}")
    pods = await client.pods(page_size=3)
    assert sorted(p["id"] for p in pods) == [f"p{i}" for i in range(7)]
    queries = requests_to(fake, "/api/v1/workloads/pods")
    assert len(queries) == 3 and all(q["verbosity"] == ["full"] for q in queries)


async def _stub(routes: list[aiohttp.web.RouteDef]) -> aiohttp.web.AppRunner:
    app = aiohttp.web.Application()
    app.add_routes(routes)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _stub_url(runner: aiohttp.web.AppRunner) -> str:
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}"


async def _token(_: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.json_response({"accessToken": "opaque"})


async def test_a_server_that_repeats_an_offset_is_an_error_not_a_loop(clock: Clock, sleeps: list[float]) -> None:
    calls = 0

    async def workloads(_: aiohttp.web.Request) -> aiohttp.web.Response:
        nonlocal calls
        calls += 1
        return aiohttp.web.json_response({"workloads": [{"id": f"w{calls}"}], "next": 1})

    runner = await _stub([aiohttp.web.post("/api/v1/token", _token), aiohttp.web.get("/api/v1/workloads", workloads)])
    try:
        async with make_client(_stub_url(runner), clock, sleeps) as c:
            with pytest.raises(RunaiError, match="offset 1 again"):
                await c.workloads([], page_size=1)
    finally:
        await runner.cleanup()
    assert calls == 2


async def test_a_silent_server_times_out_and_is_retried(clock: Clock, sleeps: list[float]) -> None:
    never = asyncio.Event()

    async def hang(_: aiohttp.web.Request) -> aiohttp.web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    runner = await _stub([aiohttp.web.post("/api/v1/token", _token), aiohttp.web.get("/api/v1/workloads/pods", hang)])
    try:
        async with make_client(_stub_url(runner), clock, sleeps, timeout=0.2, retries=2) as c:
            with pytest.raises(RunaiError, match=r"list pods \(offset 0\): no answer within 0.2s"):
                await c.pods()
            assert c.requests == 3  # the token, then two attempts
    finally:
        never.set()
        await runner.cleanup()
    assert len(sleeps) == 1


# -- retries ----------------------------------------------------------------------------------


async def test_429_waits_at_least_retry_after(fake: FakeRunai, client: RunaiClient, sleeps: list[float]) -> None:
    fake.add_workload("w1", name="train")
    fake.fail_next(2, 429, retry_after=3, path="/api/v1/workloads")
    assert [w["id"] for w in await client.workloads(["Running"])] == ["w1"]
    assert len(sleeps) == 2 and all(3 <= d <= 10 for d in sleeps)


async def test_a_huge_retry_after_is_capped_at_retry_max(fake: FakeRunai, clock: Clock, sleeps: list[float]) -> None:
    fake.add_workload("w1", name="train")
    fake.fail_next(1, 429, retry_after=86400, path="/api/v1/workloads")
    async with make_client(fake.url, clock, sleeps, retry_max=7.5) as c:
        await c.workloads(["Running"])
    assert sleeps == [7.5]


async def test_a_500_is_retried_then_succeeds(fake: FakeRunai, client: RunaiClient, sleeps: list[float]) -> None:
    fake.add_workload("w1", name="train")
    fake.fail_next(1, 500, path="/api/v1/workloads")
    assert [w["id"] for w in await client.workloads(["Running"])] == ["w1"]
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5  # full jitter under retry_initial for the first retry


async def test_the_token_request_is_retried_too(fake: FakeRunai, client: RunaiClient, sleeps: list[float]) -> None:
    fake.fail_next(2, 503, path="/api/v1/token")
    assert await client.pods() == []
    assert fake.token_requests == 1 and len(sleeps) == 2


async def test_four_failures_give_up_with_a_retryable_error(
    fake: FakeRunai, client: RunaiClient, sleeps: list[float]
) -> None:
    fake.fail_next(4, 503, retry_after=2, path="/api/v1/workloads")
    with pytest.raises(RunaiError) as info:
        await client.workloads(["Running"])
    message = str(info.value)
    assert "list workloads (phase==Running)" in message and "503" in message and "4 attempts" in message
    assert info.value.retry_after == 2  # the framework waits at least that before retrying the window
    assert len(requests_to(fake, "/api/v1/workloads")) == 4 and len(sleeps) == 3


async def test_403_is_an_auth_error_at_once(fake: FakeRunai, client: RunaiClient, sleeps: list[float]) -> None:
    fake.fail_next(1, 403, path="/api/v1/workloads/pods")
    with pytest.raises(RunaiAuthError) as info:
        await client.pods()
    assert info.value.status == 403
    assert "list pods" in str(info.value) and "role" in str(info.value)
    assert sleeps == [] and len(requests_to(fake, "/api/v1/workloads/pods")) == 1


async def test_a_400_is_not_retried_and_carries_the_servers_message(
    fake: FakeRunai, client: RunaiClient, sleeps: list[float]
) -> None:
    fake.add_workload("w1", name="train")
    fake.add_pod("p1", "w1", name="train-0")
    with pytest.raises(RunaiError) as info:  # GPU_ALLOCATION is a workload metric: the API answers 400
        await client.metrics("pods", "p1", ["GPU_ALLOCATION"], T0 - 60, T0, 6, workload_id="w1")
    assert "metrics of pod p1: HTTP 400" in str(info.value) and "GPU_ALLOCATION" in str(info.value)
    assert sleeps == [] and len(requests_to(fake, "/api/v1/workloads/w1/pods/p1/metrics")) == 1


# -- metrics ----------------------------------------------------------------------------------

TWELVE = [
    "GPU_ALLOCATION",
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
]


async def test_twelve_metric_types_take_two_calls(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    for metric in TWELVE:
        fake.set_series("workloads", "w1", metric, [(T0 - 3600, 1.0)])
    answer = await client.metrics("workloads", "w1", TWELVE, T0 - 60, T0, 6)
    assert sorted(answer) == sorted(TWELVE)
    calls = requests_to(fake, "/api/v1/workloads/w1/metrics")
    assert sorted(len(q["metricType"]) for q in calls) == [3, 9]
    assert sorted(t for q in calls for t in q["metricType"]) == sorted(TWELVE)
    assert all(q["start"] == ["2023-11-14T22:12:20.000Z"] and q["end"] == ["2023-11-14T22:13:20.000Z"] for q in calls)
    assert all(q["numberOfSamples"] == ["6"] for q in calls)


async def test_samples_are_the_servers_values_and_a_missing_series_is_absent(
    fake: FakeRunai, client: RunaiClient
) -> None:
    fake.add_workload("w1", name="train")
    start = T0 - 60
    fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(start - 10, 2.0), (start + 30, 0.5)])
    fake.set_series("workloads", "w1", "CPU_REQUEST_CORES", [(start + 20, 4.0)])  # no data before start + 20
    answer = await client.metrics(
        "workloads", "w1", ["GPU_ALLOCATION", "CPU_REQUEST_CORES", "CPU_MEMORY_REQUEST_BYTES"], start, T0, 6
    )
    assert answer["GPU_ALLOCATION"] == [Sample(start + 10 * i, 2.0 if i < 3 else 0.5) for i in range(6)]
    assert answer["CPU_REQUEST_CORES"] == [Sample(start + 10 * i, 4.0) for i in range(2, 6)]
    assert "CPU_MEMORY_REQUEST_BYTES" not in answer  # never set: absent, not zeros
    assert client.missing_series == 1


async def test_pod_metrics_use_the_pod_path(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    fake.add_pod("p1", "w1", name="train-0")
    fake.set_series("pods", "p1", "GPU_UTILIZATION_PER_GPU", [(T0 - 3600, 85.0)])
    answer = await client.metrics("pods", "p1", ["GPU_UTILIZATION_PER_GPU"], T0 - 60, T0, 3, workload_id="w1")
    assert [s.value for s in answer["GPU_UTILIZATION_PER_GPU"]] == [85.0, 85.0, 85.0]
    with pytest.raises(ValueError, match="workload_id"):
        await client.metrics("pods", "p1", ["GPU_UTILIZATION"], T0 - 60, T0, 3)


async def test_metrics_calls_stay_under_max_concurrency(clock: Clock, sleeps: list[float]) -> None:
    in_flight = peak = 0

    async def metrics(request: aiohttp.web.Request) -> aiohttp.web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)  # long enough for every permitted call to arrive
        in_flight -= 1
        at = request.query["start"]
        values = [{"value": "1", "timestamp": at}]
        return aiohttp.web.json_response(
            {
                "measurements": [
                    {"type": t, "labels": None, "values": values} for t in request.query.getall("metricType")
                ]
            }
        )

    runner = await _stub(
        [aiohttp.web.post("/api/v1/token", _token), aiohttp.web.get("/api/v1/workloads/{id}/metrics", metrics)]
    )
    try:
        async with make_client(_stub_url(runner), clock, sleeps, max_concurrency=3) as c:
            answers = await asyncio.gather(*(c.metrics("workloads", f"w{i}", TWELVE, T0 - 60, T0, 6) for i in range(5)))
            assert c.requests == 1 + 10  # the token, then 5 x ceil(12 / 9)
    finally:
        await runner.cleanup()
    assert all(sorted(a) == sorted(TWELVE) for a in answers)
    assert peak == 3


async def test_values_that_are_not_numbers_are_dropped_and_counted() -> None:
    client = RunaiClient("http://127.0.0.1:9", "collector", lambda: SECRET)
    answer = {
        "measurements": [
            {
                "type": "GPU_ALLOCATION",
                "labels": None,
                "values": [
                    {"value": "1.5", "timestamp": "2023-11-14T22:12:20.000Z"},
                    {"value": "NaN", "timestamp": "2023-11-14T22:12:30.000Z"},
                    {"value": "n/a", "timestamp": "2023-11-14T22:12:40.000Z"},
                    {"value": "2", "timestamp": None},
                ],
            },
            {
                "type": "CPU_REQUEST_CORES",
                "labels": None,
                "values": [{"value": "inf", "timestamp": "2023-11-14T22:12:20Z"}],
            },
        ]
    }
    parsed = client._parse_measurements(answer, {"GPU_ALLOCATION", "CPU_REQUEST_CORES"}, "metrics of workload w1")
    assert parsed == {"GPU_ALLOCATION": [Sample(T0 - 60, 1.5)]}  # CPU_REQUEST_CORES had nothing usable: absent
    assert client.invalid_values == 4


async def test_per_gpu_series_of_one_type_add_up() -> None:
    client = RunaiClient("http://127.0.0.1:9", "collector", lambda: SECRET)
    at = "2023-11-14T22:13:20.000Z"
    answer = {
        "measurements": [
            {
                "type": "GPU_MEMORY_USAGE_BYTES_PER_GPU",
                "labels": {"gpu": "0"},
                "values": [{"value": "10", "timestamp": at}],
            },
            {
                "type": "GPU_MEMORY_USAGE_BYTES_PER_GPU",
                "labels": {"gpu": "1"},
                "values": [{"value": "5", "timestamp": at}],
            },
        ]
    }
    parsed = client._parse_measurements(answer, {"GPU_MEMORY_USAGE_BYTES_PER_GPU"}, "metrics of pod p1")
    assert parsed == {"GPU_MEMORY_USAGE_BYTES_PER_GPU": [Sample(T0, 15.0)]}


async def test_the_request_counter_counts_every_http_request(fake: FakeRunai, client: RunaiClient) -> None:
    fake.add_workload("w1", name="train")
    fake.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0 - 3600, 1.0)])
    fake.fail_next(1, 500, path="/api/v1/workloads")
    await client.workloads(["Running", "Degraded"])
    await client.metrics("workloads", "w1", TWELVE, T0 - 60, T0, 6)
    fake.expire_tokens()
    await client.pods()
    # token, 2 listings + 1 retried, 2 metrics calls, a refused pods call + token + its retry
    assert client.requests == len(fake.requests) == 1 + 3 + 2 + 3


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert _retry_after("3", T0) == 3.0
    assert _retry_after("Tue, 14 Nov 2023 22:13:50 GMT", T0) == 30.0
    assert _retry_after("Tue, 14 Nov 2023 22:00:00 GMT", T0) == 0.0  # in the past: no wait
    assert _retry_after("soon", T0) is None and _retry_after(None, T0) is None


def test_window_bounds_are_iso_with_milliseconds() -> None:
    assert iso_ms(T0) == "2023-11-14T22:13:20.000Z"
    assert iso_ms(T0 + 0.25) == "2023-11-14T22:13:20.250Z"
