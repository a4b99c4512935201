"""The ``openmeter`` exporter against a hostile or careless destination (issue 10).

* 1: a redirect is never followed on delivery: nothing is counted as delivered
  until the destination itself answers 2xx; the 3xx is retried, logged, counted
  and shown in ``/health``.
* 7: a destination (or a proxy) that echoes the ``Authorization`` header in its
  error body does not get the token into ``/health``, the dead letters or
  ``collector dlq list``; credentials in ``url`` are never shown in clear, and
  a ``url`` that cannot be used is not echoed in the error.
* 11: an error body is read only up to what is kept, not whole.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.config import load_config
from collector.errors import ConfigError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout
from collector.testing import eventually
from collector.testing.harness import RunningPipeline, testing_registry
from support.fake_openmeter import FakeOpenMeter, Fault

TOKEN = "om-token-hardening-5be1d2"
FAST_RETRY = "retry: {initial_interval: 0.01, max_interval: 0.05, auth_interval: 0.05}"
ERROR_BODY_CAP = 8192  # what the exporter keeps of an error body (docs/components/openmeter-exporter.md)


def ev(i: int | str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"h{i}",
        "source": "hardening-test",
        "type": "api-call",
        "subject": "cust-1",
        "time": "2024-05-01T12:00:00Z",
        "data": {"n": str(i)},
    }


def config(url: str, *, token: str | None = TOKEN, timeout: float = 0.5, max_events: int = 20) -> str:
    token_line = f"    token: {token}\n" if token else ""
    return (
        "receivers: {scripted: {}}\n"
        "exporters:\n"
        "  openmeter:\n"
        f"    url: '{url}'\n"
        f"{token_line}"
        f"    timeout: {timeout}\n"
        f"    batch: {{period: 0.01, max_events: {max_events}}}\n"
        f"    {FAST_RETRY}\n"
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenMeter]:
    server = FakeOpenMeter(token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Records of the ``collector`` loggers (which do not propagate outside tests)."""
    root = logging.getLogger("collector")
    old = root.propagate
    root.propagate = True
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        root.propagate = old


def metric(p: RunningPipeline, name: str, **labels: str) -> float:
    return p.service.telemetry.metrics.registry.get_sample_value(name, labels) or 0.0


def delivered(p: RunningPipeline) -> float:
    return metric(p, "collector_exporter_delivered_events_total", exporter="openmeter")


def retries(p: RunningPipeline, klass: str) -> float:
    return metric(p, "collector_exporter_retries_total", exporter="openmeter", **{"class": klass})


def health_text(p: RunningPipeline) -> str:
    return json.dumps(p.service.health())


def exporter_health(p: RunningPipeline) -> dict[str, Any]:
    return p.service.health()["components"]["exporters"]["openmeter"]


async def send(p: RunningPipeline, events: list[dict[str, Any]]) -> set[str]:
    await p.service.receivers["scripted"].send(events)
    return {e["id"] for e in events}


async def drained(p: RunningPipeline) -> None:
    runner = p.service.exporters["openmeter"]
    await eventually(lambda: runner.queue.stats().items == 0, timeout=10, message="exporter queue drained")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "collector"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_"))}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def cli_config(path: Path, url: str, storage: Path, token_line: str) -> Path:
    path.write_text(
        f"""
receivers: {{http: {{endpoint: "127.0.0.1:0"}}}}
exporters:
  openmeter:
    url: {url}
    {token_line}
storage: {{directory: '{storage}'}}
service: {{pipelines: {{p: {{receivers: [http], exporters: [openmeter]}}}}}}
""",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------------------
# 1. Redirects


@pytest.mark.parametrize("target", ["same-host", "other-port"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_everything_is_delivered_once_it_stops(
    collector_run_pipeline, fake, logs, status, target
):
    other = FakeOpenMeter(token=TOKEN)
    await other.start()
    try:
        sink = fake if target == "same-host" else other
        location = sink.sink_url
        fake.redirect_next(status, location, count=100_000)
        async with collector_run_pipeline(config(fake.url)) as p:
            ids = await send(p, [ev(i) for i in range(5)])
            # Wait on the exporter's own count, not the fake's: the fake records a request before
            # the exporter has read the answer and counted the retry.
            await eventually(
                lambda: retries(p, "http_3xx") >= 3 or delivered(p) > 0 or sink.sink_hits,
                timeout=10,
                message="three redirected attempts",
            )
            # Nothing went anywhere but the configured URL, and nothing counts as delivered.
            assert sink.sink_hits == [], "the exporter followed the redirect"
            assert delivered(p) == 0
            assert not fake.arrivals and not other.arrivals
            assert retries(p, "http_3xx") >= 3
            detail = exporter_health(p)
            assert str(status) in detail["last_error"] and location in detail["last_error"]
            loud = [r for r in logs.records if r.levelno >= logging.WARNING and r.name.startswith("collector")]
            assert any(str(status) in r.getMessage() and location in r.getMessage() for r in loud)
            # The redirect stops: every event is delivered to the configured URL, once.
            fake.clear_faults()
            await fake.wait_for_ids(ids, timeout=10)
            await drained(p)
            assert delivered(p) == 5
    finally:
        await other.stop()
    assert Counter(e["id"] for e in fake.arrivals) == dict.fromkeys(ids, 1)
    assert sink.sink_hits == [] and not other.arrivals


# ---------------------------------------------------------------------------
# 7. Secrets: an echoed Authorization header, credentials in the URL


@pytest.mark.parametrize(("status", "field"), [(500, "last_error"), (404, "last_error"), (401, "paused_reason")])
async def test_a_token_echoed_in_an_error_body_stays_out_of_health(collector_run_pipeline, fake, status, field):
    fake.queue_faults([Fault(status=status, echo_authorization=True, detail="refused")] * 100_000)
    async with collector_run_pipeline(config(fake.url)) as p:
        ids = await send(p, [ev(i) for i in range(3)])
        await eventually(lambda: field in exporter_health(p), timeout=10, message=f"{field} in /health")
        shown = exporter_health(p)[field]
        assert str(status) in shown and "Authorization: Bearer ***" in shown  # the answer is still there
        assert TOKEN not in health_text(p)
        fake.clear_faults()
        await fake.wait_for_ids(ids, timeout=10)


async def test_a_token_echoed_in_a_rejection_is_not_stored_in_dead_letters_nor_listed(
    collector_run_pipeline, collector_storage, fake, tmp_path
):
    fake.queue_faults([Fault(status=400, echo_authorization=True, detail="subject unknown")])
    async with collector_run_pipeline(config(fake.url)) as p:
        runner = p.service.exporters["openmeter"]
        await send(p, [ev("poison")])
        await eventually(lambda: runner.deadletters.count() == 1, timeout=10, message="one dead letter")
        assert TOKEN not in health_text(p)
    path = StorageLayout(collector_storage).exporter_deadletters("openmeter")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT reason, status, body, event FROM dead_letters").fetchall()
    assert len(rows) == 1 and rows[0][1] == 400
    assert "subject unknown" in rows[0][2] and "Bearer ***" in rows[0][2]
    assert all(TOKEN not in str(column) for column in rows[0])
    cfg = cli_config(tmp_path / "c.yaml", fake.url, collector_storage, f"token: {TOKEN}")
    for extra in ([], ["--json"]):
        out = cli("dlq", "list", "-c", str(cfg), *extra)
        assert out.returncode == 0, out.stderr
        assert "hpoison" in out.stdout and TOKEN not in out.stdout + out.stderr


@pytest.mark.parametrize("token_source", ["token", "token_file"])
async def test_dlq_list_masks_secrets_in_entries_stored_before_redaction(tmp_path, token_source):
    storage = tmp_path / "data"
    store = DeadLetterStore(StorageLayout(storage).exporter_deadletters("openmeter"))
    body = f'{{"detail": "bad credentials: Authorization: Bearer {TOKEN}"}}'
    store.add([ev("old")], f"rejected by {TOKEN}", status=400, body=body)
    store.close()
    if token_source == "token":
        token_line = f"token: {TOKEN}"
    else:
        (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
        token_line = f"token_file: '{tmp_path / 'token'}'"
    cfg = cli_config(tmp_path / "c.yaml", "http://127.0.0.1:9", storage, token_line)
    for extra in ([], ["--json"]):
        out = cli("dlq", "list", "-c", str(cfg), *extra)
        assert out.returncode == 0, out.stderr
        assert "hold" in out.stdout and "***" in out.stdout
        assert TOKEN not in out.stdout + out.stderr


async def test_credentials_in_the_url_are_sent_but_never_shown(collector_run_pipeline, logs):
    user, password = "meter-user", "pa55-w0rd-9c1e7"
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    server = FakeOpenMeter(token=None)  # a self-hosted OpenMeter behind a proxy that takes basic auth
    await server.start()
    try:
        server.queue_faults([Fault(status=503, echo_authorization=True, detail="proxy says no")] * 3)
        url = f"http://{user}:{password}@127.0.0.1:{server.port}"
        async with collector_run_pipeline(config(url, token=None)) as p:
            ids = await send(p, [ev(i) for i in range(3)])
            await server.wait_for_ids(ids, timeout=10)
            await drained(p)
            shown = exporter_health(p)["last_error"]
            assert "Authorization: Basic ***" in shown  # the credentials were sent, and masked
            assert password not in health_text(p) and basic not in health_text(p)
    finally:
        await server.stop()
    assert "openmeter exporter sending to" in logs.text
    for record in logs.records:
        text = record.getMessage() + repr(vars(record))
        assert password not in text and basic not in text


@pytest.mark.parametrize(
    "url",
    [
        "htp://meter-user:hunter2-secret@openmeter.example",  # wrong scheme
        "meter-user:hunter2-secret@openmeter.example",  # no scheme
        "http://meter-user:hunter2-secret@",  # no host
        "http://meter-user:hunter2-secret@[::1",  # not parseable at all
        "http://meter-user:hunter2-secret@openmeter.example:99999",  # no such port
    ],
)
def test_an_unusable_url_is_not_echoed_in_the_error(url):
    text = (
        f"receivers: {{http: {{}}}}\nexporters: {{openmeter: {{url: '{url}'}}}}\n"
        "service: {pipelines: {p: {receivers: [http], exporters: [openmeter]}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(text, testing_registry(), source="<test>")
    message = str(caught.value)
    assert "exporters.openmeter.url" in message
    assert "hunter2-secret" not in message


def test_collector_validate_does_not_echo_a_bad_url(tmp_path):
    cfg = cli_config(tmp_path / "c.yaml", "htp://meter-user:hunter2-secret@openmeter.example", tmp_path, "")
    out = cli("validate", "-c", str(cfg))
    assert out.returncode == 2
    assert "exporters.openmeter.url" in out.stdout + out.stderr
    assert "hunter2-secret" not in out.stdout + out.stderr


# ---------------------------------------------------------------------------
# 11. Error bodies read bounded

HUGE = 50 * 1024 * 1024


async def test_a_huge_error_body_is_read_only_up_to_the_cap_then_retried(collector_run_pipeline, fake):
    fake.queue_faults([Fault(status=500, body_bytes=HUGE)])
    async with collector_run_pipeline(config(fake.url, timeout=10)) as p:
        ids = await send(p, [ev(i) for i in range(3)])
        await fake.wait_for_ids(ids, timeout=15)
        await drained(p)
        assert retries(p, "http_5xx") == 1
        assert len(exporter_health(p)["last_error"]) <= 500
    await eventually(lambda: fake.streamed_error_bytes, timeout=10, message="the fake finished its error body")
    (written,) = fake.streamed_error_bytes
    # The connection was closed after the cap: only what the sockets buffered left the fake.
    assert written < 8 * 1024 * 1024, f"{written} of {HUGE} bytes read"


async def test_a_huge_rejection_body_is_stored_capped_and_not_read_whole(collector_run_pipeline, fake):
    fake.queue_faults([Fault(status=400, body_bytes=HUGE)])
    async with collector_run_pipeline(config(fake.url, timeout=10)) as p:
        runner = p.service.exporters["openmeter"]
        await send(p, [ev("big-answer")])
        await eventually(lambda: runner.deadletters.count() == 1, timeout=15, message="one dead letter")
        (letter,) = runner.deadletters.list()
    assert letter.status == 400 and letter.body is not None
    assert 0 < len(letter.body.encode()) <= ERROR_BODY_CAP
    await eventually(lambda: fake.streamed_error_bytes, timeout=10, message="the fake finished its error body")
    (written,) = fake.streamed_error_bytes
    assert written < 8 * 1024 * 1024, f"{written} of {HUGE} bytes read"


def test_credentials_in_the_url_and_a_token_are_refused_together():
    # aiohttp would refuse every request (two Authorization headers); say so at start instead.
    text = (
        "receivers: {http: {}}\n"
        "exporters: {openmeter: {url: 'https://meter-user:hunter2-secret@openmeter.example', token: abcd1234}}\n"
        "service: {pipelines: {p: {receivers: [http], exporters: [openmeter]}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(text, testing_registry(), source="<test>")
    assert "credentials in url" in str(caught.value) and "hunter2-secret" not in str(caught.value)


def test_the_dead_letter_store_masks_registered_secrets_whoever_writes(tmp_path):
    # Any exporter's (or processor's) dead letters: the store itself masks at write.
    from collector.telemetry import REDACTOR

    secret = "plugin-secret-0d9e41"
    REDACTOR.add(secret)
    store = DeadLetterStore(tmp_path / "deadletter.sqlite")
    try:
        store.add([ev("p")], f"rejected: {secret}", status=400, body=f"echo: Bearer {secret}")
        (letter,) = store.list()
    finally:
        store.close()
    assert letter.reason == "rejected: ***" and letter.body == "echo: Bearer ***"
