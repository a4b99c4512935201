"""The Run:ai REST API client: token, paged lists, metrics, retries (docs/components/runai-receiver.md).

Written against the public Run:ai API with aiohttp (the plugin does not depend
on the ``runapy`` SDK).  What it guarantees, because the receiver's billing
depends on it:

* **One token at a time.**  ``POST /api/v1/token`` with the application's id and
  secret gives a JWT; it is refreshed ``token_skew`` seconds before its ``exp``
  and after a 401 (the call is then retried once).  However many requests wait,
  one token request is made (a lock, and a re-check under it).  The secret and
  the token never appear in a log line, a ``repr`` or an exception message.
* **Paging by what the server returned.**  A list continues from the server's
  ``next`` and stops when it is absent or a page is empty; phases are filtered
  by the server (``filterBy=phase==Running``), never by the client, so a page
  of filtered-out items can neither repeat a page nor loop forever.  A server
  that sends an offset twice is an error, not a loop.
* **Missing is absent.**  :meth:`RunaiClient.metrics` returns only the metric
  types the server measured; a value that is not a number is dropped and
  counted, never turned into 0.
* **Retries with backoff.**  429, 5xx, timeouts and connection errors are
  retried with full-jitter backoff (``Retry-After`` honoured, capped at
  ``retry_max``), then :class:`RunaiError` -- a :class:`RetryableError`, so the
  pull framework retries the whole window and commits none of it.  401 after a
  fresh token and 403 are :class:`RunaiAuthError`, with what to check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import ssl as ssl_module
import time as time_module
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from collector.api import AuthError, Backoff, RetryableError
from collector_plugin_runai.metric_types import MAX_PER_CALL

__all__ = ["RunaiAuthError", "RunaiClient", "RunaiError", "Sample", "iso_ms"]

TOKEN_PATH = "/api/v1/token"
WORKLOADS_PATH = "/api/v1/workloads"
PODS_PATH = "/api/v1/workloads/pods"

# How much of an error body goes into a message: enough for the server's explanation, not a whole HTML page.
_MAX_MESSAGE = 300


class RunaiError(RetryableError):
    """A Run:ai API call failed (after its retries, or at once for a 4xx); the framework retries the window."""


class RunaiAuthError(AuthError):
    """The Run:ai API refused the application: bad credentials, or no permission for a call."""


@dataclass(frozen=True)
class Sample:
    """One value of a metric: ``at`` (Unix seconds) and the value the API reported."""

    at: float
    value: float


def iso_ms(ts: float) -> str:
    """Unix seconds as the API's ISO 8601 with milliseconds and ``Z`` (``2024-05-01T12:00:00.000Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (its payload, base64url JSON); None when absent or unreadable.

    The signature is not checked: the token comes straight from the server over
    the connection we trust, and only its lifetime is read here.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date (then relative to ``now``)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _server_message(body: bytes) -> str:
    """The ``message`` of the API's JSON error body, else the start of the body as text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "details", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])[:_MAX_MESSAGE]
    text = " ".join(text.split())
    return text[:_MAX_MESSAGE] if text else "(empty body)"


class _Failure(Exception):
    """A retryable failure of one attempt (internal): what happened, and the server's Retry-After if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RunaiClient:
    """An authenticated, retrying client of one Run:ai control plane.

    ``app_secret`` is a callable (the configured secret, or a reader of
    ``app_secret_file`` so that a rotated secret is picked up at the next token
    request).  ``time`` and ``sleep`` are injectable for tests; ``time`` is Unix
    seconds, compared with the token's ``exp``.  ``requests`` counts the HTTP
    requests made (tokens included), ``invalid_values`` the metric values that
    were dropped because they were not numbers, ``missing_series`` the metric
    types asked for that came back without a single usable value.
    """

    def __init__(
        self,
        url: str,
        app_id: str,
        app_secret: Callable[[], str],
        *,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        retries: int = 4,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        token_skew: float = 60.0,
        ssl: ssl_module.SSLContext | bool = True,
        time: Callable[[], float] = time_module.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        if retries < 1:
            raise ValueError(f"retries must be at least 1 (got {retries})")
        self.url = url.rstrip("/")
        self.app_id = app_id
        self._app_secret = app_secret
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff = Backoff(base=retry_initial, cap=retry_max, max_retry_after=retry_max)
        self.token_skew = token_skew
        self._ssl = ssl
        self._time = time
        self._sleep = sleep
        self.log: logging.Logger | logging.LoggerAdapter[Any] = log or logging.getLogger(__name__)
        self.requests = 0
        self.invalid_values = 0
        self.missing_series = 0
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_exp = 0.0
        self._token_lock = asyncio.Lock()
        self._metrics_slots = asyncio.Semaphore(max_concurrency)
        # Strings that must never leave this object in a message: the secrets seen, the tokens issued.
        self._redact: set[str] = set()

    def __repr__(self) -> str:  # never the secret nor the token
        return f"RunaiClient(url={self.url!r}, app_id={self.app_id!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session (connections: the metrics concurrency plus room for the lists and the token)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency + 4, ssl=self._ssl),
                headers={"Accept": "application/json", "User-Agent": "collector-plugin-runai"},
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> RunaiClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the token -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._redact:
            if secret:
                text = text.replace(secret, "***")
        return text

    async def _valid_token(self) -> str:
        """A token that is not about to expire, fetching one if needed (one fetch however many wait)."""
        token = self._token
        if token is not None and self._time() < self._token_exp - self.token_skew:
            return token
        async with self._token_lock:
            token = self._token  # re-check: another request may have fetched it while we waited
            if token is not None and self._time() < self._token_exp - self.token_skew:
                return token
            return await self._fetch_token()

    async def _refresh_after_401(self, rejected: str) -> str:
        """A new token after ``rejected`` got a 401, unless another request already replaced it."""
        async with self._token_lock:
            if self._token is not None and self._token != rejected:
                return self._token
            self._token = None
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        what = "token request (POST /api/v1/token)"
        try:
            secret = self._app_secret()
        except OSError as exc:
            raise RunaiAuthError(f"Run:ai {what}: cannot read the application secret: {exc.strerror or exc}") from None
        self._redact.add(secret)
        body = {"grantType": "app_token", "AppId": self.app_id, "AppSecret": secret}
        data = await self._request("POST", TOKEN_PATH, what, json_body=body, auth=False)
        token = data.get("accessToken") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RunaiError(f"Run:ai {what}: the answer has no accessToken")
        self._redact.add(token)
        now = self._time()
        exp = _jwt_exp(token)
        if exp is None:
            expires_in = data.get("expiresIn")
            if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
                exp = now + float(expires_in)
            else:  # no lifetime known: keep it until the server answers 401
                exp = math.inf
        if exp - self.token_skew <= now:
            self.log.warning(
                "Run:ai token for application %r expires within token_skew (%gs); it is refreshed on every call",
                self.app_id,
                self.token_skew,
            )
        self._token, self._token_exp = token, exp
        self.log.debug("Run:ai token for application %r obtained", self.app_id)
        return token

    # -- requests --------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        json_body: dict[str, Any] | None = None,
        auth: bool = True,
    ) -> Any:
        """One API call with its retries; the parsed JSON answer.

        ``what`` names the call in every message.  Retryable failures (429, 5xx,
        timeouts, connection errors) are tried ``retries`` times in all; a 401
        gets one fresh token and one more try, which does not count as a retry.
        """
        attempt = 0
        refreshed = False
        while True:
            token = await self._valid_token() if auth else None
            try:
                return await self._once(method, path, what, params, json_body, token)
            except _Failure as failure:
                attempt += 1
                if attempt >= self.retries:
                    raise RunaiError(
                        self._scrub(f"Run:ai {what}: {failure.message} (gave up after {attempt} attempts)"),
                        retry_after=failure.retry_after,
                    ) from None
                delay = self.backoff.delay(attempt - 1, failure.retry_after)
                self.log.warning(
                    "Run:ai %s: %s; retrying in %.1fs (attempt %d of %d)",
                    what,
                    self._scrub(failure.message),
                    delay,
                    attempt + 1,
                    self.retries,
                )
                await self._sleep(delay)
            except _Unauthorized as exc:
                if token is None:  # the token request itself was refused: wrong id or secret
                    raise RunaiAuthError(
                        self._scrub(
                            f"Run:ai {what}: the application {self.app_id!r} was refused (401: {exc.message}); "
                            "check app_id and app_secret (or app_secret_file), and that the application is active"
                        ),
                        status=401,
                    ) from None
                if refreshed:
                    raise RunaiAuthError(
                        self._scrub(
                            f"Run:ai {what}: 401 Unauthorized again with a fresh token ({exc.message}); check that "
                            f"the application {self.app_id!r} still exists and is active"
                        ),
                        status=401,
                    ) from None
                refreshed = True
                self.log.info("Run:ai %s: 401 Unauthorized; getting a new token and trying once more", what)
                await self._refresh_after_401(token)

    async def _once(
        self,
        method: str,
        path: str,
        what: str,
        params: Sequence[tuple[str, str]],
        json_body: dict[str, Any] | None,
        token: str | None,
    ) -> Any:
        """One HTTP request; raises _Failure (retry), _Unauthorized (401), RunaiAuthError (403), RunaiError."""
        if self._session is None:
            raise RunaiError(f"Run:ai {what}: the client is not started")
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.requests += 1
        try:
            async with self._session.request(
                method,
                self.url + path,
                params=list(params),
                json=json_body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                status, body = resp.status, await resp.read()
                retry_after_header = resp.headers.get("Retry-After")
        except TimeoutError:
            raise _Failure(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else str(exc)
            raise _Failure(f"cannot connect to {self.url}: {reason}") from None
        except aiohttp.ClientError as exc:
            raise _Failure(f"request failed: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            try:
                return json.loads(body) if body else {}
            except ValueError:
                raise _Failure(f"HTTP {status} with a body that is not JSON") from None
        message = _server_message(body)
        if status == 401:
            raise _Unauthorized(message)
        if status == 403:
            raise RunaiAuthError(
                self._scrub(
                    f"Run:ai {what}: forbidden (403: {message}); give the application {self.app_id!r} a role that "
                    "may read workloads and pods (for example Viewer) in the scope to be metered"
                ),
                status=403,
            )
        if status == 429 or status >= 500:
            raise _Failure(f"HTTP {status}: {message}", _retry_after(retry_after_header, self._time()))
        raise RunaiError(self._scrub(f"Run:ai {what}: HTTP {status}: {message}"))

    # -- lists ------------------------------------------------------------------------------

    async def _list(
        self, path: str, key: str, what: str, params: Sequence[tuple[str, str]], page_size: int
    ) -> list[dict[str, Any]]:
        """Every item of a paged list, following the server's ``next``.

        The next page starts where the server says (``next``), never where a
        client-side count would put it; the list ends when ``next`` is absent
        or a page is empty.  An offset the server already sent is an error.
        """
        items: list[dict[str, Any]] = []
        offset = 0
        seen: set[int] = set()
        while True:
            seen.add(offset)
            page_what = f"{what} (offset {offset})"
            data = await self._request(
                "GET", path, page_what, params=[*params, ("offset", str(offset)), ("limit", str(page_size))]
            )
            page = data.get(key) if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise RunaiError(f"Run:ai {page_what}: the answer has no {key!r} list")
            items.extend(item for item in page if isinstance(item, dict))
            nxt = data.get("next")
            if not page or nxt is None:
                return items
            if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < 0:
                raise RunaiError(f"Run:ai {page_what}: 'next' is {nxt!r}, not an offset")
            if nxt in seen:
                raise RunaiError(
                    f"Run:ai {page_what}: the server sent offset {nxt} again as the next page; stopping instead of "
                    "reading the same items twice"
                )
            offset = nxt

    @staticmethod
    def _unique(lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        out: dict[Any, dict[str, Any]] = {}
        anonymous: list[dict[str, Any]] = []
        for items in lists:
            for item in items:
                ident = item.get("id")
                if ident is None:
                    anonymous.append(item)
                else:
                    out.setdefault(ident, item)
        return [*out.values(), *anonymous]

    async def workloads(
        self,
        phases: list[str],
        page_size: int = 500,
        *,
        finished_phases: Sequence[str] = (),
        finished_since: float | None = None,
    ) -> list[dict[str, Any]]:
        """The workloads in ``phases`` (all of them when empty and no finished phases are asked for), one
        server-filtered listing per phase, then those in ``finished_phases`` whose completedAt is at or after
        ``finished_since`` (``filterBy=completedAt>=...``).

        The listings run one after the other, active phases first: a workload that moves on (Running to
        Completed) between two listings is then in one of them whenever it moves, never in neither; one
        that appears in two is kept once (by id).
        """
        if not phases and not finished_phases:
            return self._unique([await self._list(WORKLOADS_PATH, "workloads", "list workloads", (), page_size)])
        listings = []
        for phase in dict.fromkeys(phases):
            listings.append(
                await self._list(
                    WORKLOADS_PATH,
                    "workloads",
                    f"list workloads (phase=={phase})",
                    [("filterBy", f"phase=={phase}")],
                    page_size,
                )
            )
        for phase in dict.fromkeys(finished_phases):
            filters = [("filterBy", f"phase=={phase}")]
            if finished_since is not None:
                filters.append(("filterBy", f"completedAt>={iso_ms(finished_since)}"))
            listings.append(
                await self._list(
                    WORKLOADS_PATH,
                    "workloads",
                    f"list workloads (phase=={phase}, finished recently)",
                    filters,
                    page_size,
                )
            )
        return self._unique(listings)

    async def pods(self, page_size: int = 500) -> list[dict[str, Any]]:
        """Every pod of every workload, with ``verbosity=full`` (project and workload names included)."""
        return self._unique([await self._list(PODS_PATH, "pods", "list pods", [("verbosity", "full")], page_size)])

    # -- metrics ----------------------------------------------------------------------------

    async def metrics(
        self,
        kind: Literal["workloads", "pods"],
        resource_id: str,
        metric_types: Sequence[str],
        start: float,
        end: float,
        samples: int,
        *,
        workload_id: str | None = None,
    ) -> dict[str, list[Sample]]:
        """The samples of ``metric_types`` for one workload or pod between ``start`` and ``end`` (Unix seconds).

        More than nine types are asked in several calls, concurrently, under
        the client's ``max_concurrency`` shared with every other metrics call.
        Only the types the server measured are in the answer: a missing series
        is absent, never zeros.  Several series of one type (one per GPU) are
        added up per timestamp.  Raises if any call fails: no partial answer.
        """
        if kind == "workloads":
            path = f"{WORKLOADS_PATH}/{quote(resource_id, safe='')}/metrics"
            what = f"metrics of workload {resource_id}"
        elif kind == "pods":
            if workload_id is None:
                raise ValueError("pod metrics need the pod's workload_id")
            path = f"{WORKLOADS_PATH}/{quote(workload_id, safe='')}/pods/{quote(resource_id, safe='')}/metrics"
            what = f"metrics of pod {resource_id}"
        else:
            raise ValueError(f"unknown Run:ai resource type {kind!r}: expected 'workloads' or 'pods'")
        types = list(dict.fromkeys(metric_types))
        if not types:
            return {}
        window = [("start", iso_ms(start)), ("end", iso_ms(end)), ("numberOfSamples", str(samples))]
        chunks = [types[i : i + MAX_PER_CALL] for i in range(0, len(types), MAX_PER_CALL)]
        answers = await asyncio.gather(
            *(self._metrics_call(path, what, chunk, window) for chunk in chunks), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        out: dict[str, list[Sample]] = {}
        for chunk, answer in zip(chunks, answers, strict=True):
            assert not isinstance(answer, BaseException)
            out.update(self._parse_measurements(answer, set(chunk), what))
        self.missing_series += sum(1 for t in types if t not in out)
        return out

    async def _metrics_call(self, path: str, what: str, chunk: list[str], window: list[tuple[str, str]]) -> Any:
        async with self._metrics_slots:
            return await self._request("GET", path, what, params=[*(("metricType", t) for t in chunk), *window])

    def _parse_measurements(self, data: Any, asked: set[str], what: str) -> dict[str, list[Sample]]:
        measurements = data.get("measurements") if isinstance(data, dict) else None
        if not isinstance(measurements, list):
            raise RunaiError(f"Run:ai {what}: the answer has no 'measurements' list")
        sums: dict[str, dict[float, float]] = {}
        # The same timestamps repeat for every metric type of a call: parse each once.
        times: dict[str, float | None] = {}
        for measurement in measurements:
            if not isinstance(measurement, dict):
                continue
            metric = measurement.get("type")
            if not isinstance(metric, str) or metric not in asked:
                continue
            for raw in measurement.get("values") or ():
                sample = self._sample(raw, times)
                if sample is None:
                    self.invalid_values += 1
                    continue
                series = sums.setdefault(metric, {})
                series[sample.at] = series.get(sample.at, 0.0) + sample.value
        return {
            metric: [Sample(at, value) for at, value in sorted(series.items())]
            for metric, series in sums.items()
            if series
        }

    @staticmethod
    def _sample(raw: Any, times: dict[str, float | None]) -> Sample | None:
        """A sample from ``{"value": "0.5", "timestamp": "..."}``; None when either is unusable.

        ``times`` caches parsed timestamps (None for an unreadable one) across the samples of one answer."""
        if not isinstance(raw, dict):
            return None
        value, stamp = raw.get("value"), raw.get("timestamp")
        try:
            number = float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or not isinstance(stamp, str):
            return None
        if stamp in times:
            at = times[stamp]
        else:
            at = times[stamp] = _unix(stamp)
        return None if at is None else Sample(at, number)


def _unix(stamp: str) -> float | None:
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class _Unauthorized(Exception):
    """A 401 (internal): the caller refreshes the token once, or reports it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
