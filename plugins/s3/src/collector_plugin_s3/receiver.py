"""The ``s3`` receiver: usage files from S3-compatible storage, each record billed exactly once.

How exactly-once holds (docs/components/s3-receiver.md):

* the checkpoint lives in the component's state store (``state.sqlite``): per
  object ``{etag, record, done, after}`` -- the number of the last record
  committed, whether the object is finished and whether its ``after`` action ran;
* records are read in batches of ``batch_size``; a batch is emitted (``emit``
  returns only once every exporter queue committed it), and only then is the
  checkpoint advanced.  A restart, even after SIGKILL, resumes after the last
  committed record;
* a record without an ``id`` gets ``stable_id("s3", bucket, key, etag, number)``:
  a re-read after a crash between the commit and the checkpoint sends the same
  ids, which the destination de-duplicates;
* malformed records are counted, logged once per object, dead-lettered (or
  dropped) and then count as committed, so they never hold the object back;
* an object that cannot be read (403, gone, not gzip) is shown in ``/health``
  and retried on the next poll; the others go on.  An unreachable endpoint
  advances nothing.

Objects are streamed: boto3's body is read chunk by chunk on a worker thread,
one batch of records at a time, never whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from collector.api import (
    BackpressureError,
    CompiledMapping,
    Meta,
    Receiver,
    StateStore,
    compile_expression,
    finish_task,
    format_time,
    sleep_until_woken,
    stable_id,
)
from collector_plugin_s3.config import S3ReceiverConfig
from collector_plugin_s3.connection import describe, error_kind, new_client
from collector_plugin_s3.formats import FormatError, Record, decompressed, format_of, is_gzip, read_records

OBJECTS = "objects"  # state namespace: "<bucket>/<key>" -> {etag, record, done, after}
CURSORS = "cursors"  # state namespace: "<bucket>/<prefix>" -> start-after key, or [last_modified, key]
_MAX_FAILING_SHOWN = 20
# order: last_modified -- LastModified has one-second resolution and is when an upload *started*, so an
# object can appear after the cursor with an older time; objects this much older than the cursor are skipped
# without a look at their state, newer ones are checked one by one (a finished one costs one state read).
LATE_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class S3Object:
    """One listed object."""

    bucket: str
    key: str
    etag: str
    last_modified: float
    size: int

    @property
    def name(self) -> str:
        return f"{self.bucket}/{self.key}"


class ObjectFailed(Exception):
    """This object cannot be read now; it is retried on the next poll (the others go on)."""


class EndpointFailed(Exception):
    """Listing failed: nothing can advance until the endpoint answers again."""


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class S3Receiver(Receiver[S3ReceiverConfig]):
    """Polls its buckets every ``interval`` and emits every new record once."""

    def __init__(self, ctx: Any, config: S3ReceiverConfig) -> None:
        super().__init__(ctx, config)
        self.mapping: CompiledMapping | None = None
        if config.mapping is not None:
            self.mapping = compile_expression(config.mapping, ctx.functions, path=f"receivers.{ctx.id}.mapping")
        self._client: Any = None
        self._store: StateStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self.endpoint_error: str | None = None  # listing / the client: nothing advances meanwhile
        self.failing: dict[str, str] = {}  # "<bucket>/<key>" -> why it could not be read (retried each poll)
        self.polls = 0  # polls finished (whatever their outcome): tests and /health
        self.objects_done = 0
        m = ctx.metrics
        self._m_malformed = m.counter(
            "s3_malformed_records", "Malformed records in usage files (dead-lettered or dropped).", ["receiver"]
        ).labels(receiver=ctx.id)
        self._m_records = m.counter(
            "s3_records", "Records of usage files committed to the pipelines.", ["receiver"]
        ).labels(receiver=ctx.id)
        self._m_objects = m.counter("s3_objects", "Usage files read to the end.", ["receiver"]).labels(receiver=ctx.id)

    # -- lifecycle -----------------------------------------------------------------

    async def _start(self) -> None:
        path = self.ctx.storage_dir / "state.sqlite"
        self._store = await asyncio.to_thread(StateStore, path)
        self._task = asyncio.create_task(self._run(), name=f"s3-{self.id}")

    async def _shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # A batch being committed finishes (its checkpoint is saved); a read in progress is
            # abandoned and resumed from the checkpoint next time.
            await finish_task(self._task, 5.0)
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["buckets"] = [f"{b.bucket}/{b.prefix}" for b in self.config.buckets]
        out["objects_done"] = self.objects_done
        if self.endpoint_error:
            out["ready"] = False
            out["reason"] = self.endpoint_error
        if self.failing:
            # The receiver keeps reading the other objects, so it stays ready; these are retried each poll.
            shown = dict(list(self.failing.items())[:_MAX_FAILING_SHOWN])
            out["failing_objects"] = shown
            if len(self.failing) > len(shown):
                out["failing_objects_more"] = len(self.failing) - len(shown)
        return out

    async def _sleep(self, seconds: float) -> None:
        if not self._stopping:
            await sleep_until_woken(self.ctx.clock, seconds, self._wake)

    def _is_leader(self) -> bool:
        coordinator = self.ctx.coordinator
        return True if coordinator is None else bool(coordinator.is_leader())

    def poll_soon(self) -> None:
        """Poll now instead of at the end of the interval (an operator's "read it now"; tests)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # a poll_soon() during this poll makes the next one start at once
            if self._is_leader():
                try:
                    await self.poll()
                except Exception:  # a bug must not end the loop silently: log it and poll again later
                    self.log.exception("receiver %s: poll failed", self.id)
            self.polls += 1
            await self._sleep(self.config.interval)

    # -- one poll --------------------------------------------------------------------

    async def poll(self) -> None:
        """List every source and read what is new; problems are logged once each and shown in health."""
        if self._client is None:
            try:
                self._client = await new_client(self.config)
            except Exception as exc:
                self._endpoint_problem(describe(exc, f"receiver {self.id}: create the S3 client"))
                return
        errors: list[str] = []
        for source in self.config.buckets:
            if self._stopping:
                return
            try:
                await self._poll_source(source.bucket, source.prefix)
            except EndpointFailed as exc:
                errors.append(str(exc))
            except BackpressureError as exc:
                self.log.warning("receiver %s: the pipeline refuses data for now (%s); retrying next poll", self.id,
                                 exc)  # fmt: skip
                return
        if errors:
            self._endpoint_problem("; ".join(errors))
        elif self.endpoint_error is not None:
            self.log.info("receiver %s: the S3 endpoint answers again", self.id)
            self.endpoint_error = None

    def _endpoint_problem(self, message: str) -> None:
        if message != self.endpoint_error:
            self.log.error("%s; nothing is read until it answers (retrying every %.0fs)", message,
                           self.config.interval)  # fmt: skip
        self.endpoint_error = message

    async def _poll_source(self, bucket: str, prefix: str) -> None:
        assert self._store is not None
        cursor_key = f"{bucket}/{prefix}"
        cursor = await asyncio.to_thread(self._store.get, CURSORS, cursor_key)
        by_key = self.config.order == "key"
        # The cursor moves past an object only while every object before it is finished, so a failing
        # object is listed (and retried) again on the next poll.
        contiguous = True
        async for obj in self._listing(bucket, prefix, cursor if by_key else None, by_key):
            if self._stopping:
                return
            if not by_key and cursor is not None and obj.last_modified < cursor[0] - LATE_SECONDS:
                continue  # long finished; newer ones are checked one by one against their own state
            if not self.config.wanted(obj.key):
                finished = True
            else:
                finished = await self._handle(obj)
            if finished and contiguous:
                cursor = obj.key if by_key else [obj.last_modified, obj.key]
                await asyncio.to_thread(self._store.put, CURSORS, cursor_key, cursor)
            elif not finished:
                contiguous = False

    async def _listing(
        self, bucket: str, prefix: str, start_after: str | None, by_key: bool
    ) -> AsyncIterator[S3Object]:
        """The objects under ``prefix``: page by page in key order, or all of them oldest first."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        what = f"receiver {self.id}: list s3://{bucket}/{prefix}"
        try:
            pages: Iterator[dict[str, Any]] = iter(self._client.get_paginator("list_objects_v2").paginate(**kwargs))
        except Exception as exc:
            raise EndpointFailed(self._describe(exc, what, bucket)) from None
        collected: list[S3Object] = []
        while True:
            try:
                page = await asyncio.to_thread(next, pages, None)
            except Exception as exc:
                raise EndpointFailed(self._describe(exc, what, bucket)) from None
            if page is None:
                break
            objs = [
                S3Object(bucket, c["Key"], _etag(c.get("ETag")), c["LastModified"].timestamp(), int(c.get("Size", 0)))
                for c in page.get("Contents") or []
                if not c["Key"].endswith("/")
            ]
            if by_key:
                for obj in objs:
                    yield obj
            else:
                collected.extend(objs)
        collected.sort(key=lambda o: (o.last_modified, o.key))
        for obj in collected:
            yield obj

    # -- one object --------------------------------------------------------------------

    async def _handle(self, obj: S3Object) -> bool:
        """Bring ``obj`` up to date; True when it is finished (all records committed, after action run)."""
        assert self._store is not None
        state: dict[str, Any] | None = await asyncio.to_thread(self._store.get, OBJECTS, obj.name)
        if state is not None and state.get("etag") != obj.etag:
            if self.config.on_replaced == "ignore":
                if state.get("ignored") != obj.etag:
                    self.log.warning("receiver %s: s3://%s was replaced (new ETag) after it was read; the new "
                                     "version is ignored (on_replaced: ignore)", self.id, obj.name)  # fmt: skip
                    await asyncio.to_thread(self._store.put, OBJECTS, obj.name, {**state, "ignored": obj.etag})
                return True
            self.log.warning("receiver %s: s3://%s was replaced (new ETag) after it was read; reading the new "
                             "version from its start (on_replaced: reread)", self.id, obj.name)  # fmt: skip
            state = None
        if state is None:
            state = {"etag": obj.etag, "record": 0, "done": False, "after": False}
        try:
            if not state["done"]:
                state = await self._read(obj, state)
            if not state["after"]:
                await self._after(obj, state)
        except ObjectFailed as exc:
            message = str(exc)
            if self.failing.get(obj.name) != message:
                self.log.warning("%s; retried on the next poll, the other objects go on", message)
            self.failing[obj.name] = message
            return False
        if self.failing.pop(obj.name, None) is not None:
            self.log.info("receiver %s: s3://%s read after earlier failures", self.id, obj.name)
        return True

    def _describe(self, exc: BaseException, what: str, bucket: str) -> str:
        return describe(exc, what, bucket=bucket, where=self.config.where())

    def _object_error(self, exc: BaseException, what: str, obj: S3Object, note: str = "") -> NoReturn:
        """Raise what ``exc`` means: the endpoint is down (stop the poll) or this object failed (go on)."""
        message = self._describe(exc, what, obj.bucket) + note
        if error_kind(exc) in ("unavailable", "throttled"):
            raise EndpointFailed(message) from None
        raise ObjectFailed(message) from None

    def _open(self, obj: S3Object) -> tuple[Any, dict[str, Any]]:
        response = self._client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
        return response["Body"], response

    async def _read(self, obj: S3Object, state: dict[str, Any]) -> dict[str, Any]:
        """Emit the records after ``state["record"]``, one batch at a time, checkpointing after each commit."""
        assert self._store is not None
        cfg = self.config
        what = f"receiver {self.id}: read s3://{obj.name}"
        try:
            fmt = format_of(obj.key, cfg.format)
        except FormatError as exc:
            raise ObjectFailed(f"{what}: {exc}") from None
        try:
            body, response = await asyncio.to_thread(self._open, obj)
        except Exception as exc:
            self._object_error(exc, what, obj)
        gz = is_gzip(obj.key, response.get("ContentEncoding"), cfg.compression)
        records = read_records(
            decompressed(body, gz), fmt, csv_types=cfg.csv_types or None, csv_delimiter=cfg.csv_delimiter
        )
        committed = int(state["record"])
        malformed_lines: list[int] = []
        try:
            pending = await asyncio.to_thread(_take, records, committed, cfg.batch_size + 1)
            while pending:
                batch, pending = pending[: cfg.batch_size], pending[cfg.batch_size :]
                # Read and decode the next batch on a worker thread while this one is being committed.
                ahead = asyncio.ensure_future(
                    asyncio.to_thread(_take, records, committed, cfg.batch_size + 1 - len(pending))
                )
                try:
                    malformed_lines += await self._deliver(obj, batch)
                finally:
                    # The reader owns the body until it returns: wait for it even when delivery failed.
                    more = await asyncio.gather(ahead, return_exceptions=True)
                if isinstance(more[0], BaseException):
                    raise more[0]
                pending.extend(more[0])
                last = not pending
                committed = batch[-1].number
                state = {**state, "record": committed, "done": last}
                await asyncio.to_thread(self._store.put, OBJECTS, obj.name, state)
                if self._stopping and not last:
                    raise ObjectFailed(f"{what}: stopped after record {committed}; resumed on the next start")
        except FormatError as exc:
            raise ObjectFailed(f"{what}: {exc} (records through {committed} were delivered)") from None
        except BackpressureError:
            raise
        except (ObjectFailed, EndpointFailed):
            raise
        except Exception as exc:
            self._object_error(exc, what, obj, f" (records through {committed} were delivered)")
        finally:
            await asyncio.to_thread(body.close)
            if malformed_lines:
                self.log.warning(
                    "receiver %s: s3://%s has %d malformed record(s), first at line(s) %s; %s", self.id, obj.name,
                    len(malformed_lines), ", ".join(map(str, malformed_lines[:5])),
                    "dead-lettered" if cfg.on_malformed == "dead_letter" else "dropped (on_malformed: drop)",
                )  # fmt: skip
        if not state["done"]:  # an object without records
            state = {**state, "done": True}
            await asyncio.to_thread(self._store.put, OBJECTS, obj.name, state)
        self.objects_done += 1
        self._m_objects.inc()
        return state

    async def _deliver(self, obj: S3Object, batch: list[Record]) -> list[int]:
        """Emit the good records of ``batch``, dead-letter the others; returns the malformed lines."""
        events: list[dict[str, Any]] = []
        origin: list[Record] = []
        bad: list[tuple[Record, str]] = []
        for record in batch:
            if record.value is None:
                bad.append((record, record.error or "malformed"))
                continue
            try:
                event = self._event(obj, record)
            except ValueError as exc:
                bad.append((record, str(exc)))
                continue
            if event is not None:
                events.append(event)
                origin.append(record)
        if events:
            accepted = await self.emit(events, partial=True)
            for err in accepted.rejected:
                bad.append((origin[err.index], f"refused by the pipeline: {err.message}"))
            self._m_records.inc(len(events) - len(accepted.rejected_indexes))
        if bad:
            await self._malformed(obj, bad)
        return [r.line or r.number for r, _ in bad]

    def _event(self, obj: S3Object, record: Record) -> dict[str, Any] | None:
        value = record.value
        assert value is not None
        default_id = stable_id("s3", obj.bucket, obj.key, obj.etag, record.number)
        if self.mapping is None:
            if "specversion" not in value:
                raise ValueError(
                    f"not a CloudEvent (no specversion) and receivers.{self.id}.mapping is not set to map it"
                )
            event = dict(value)
        else:
            meta = Meta(
                receiver=self.id,
                extra={"bucket": obj.bucket, "key": obj.key, "line": record.line, "record": record.number,
                       "last_modified": _time(obj.last_modified), "etag": obj.etag},
            )  # fmt: skip
            try:
                mapped = self.mapping.to_event(value, meta, {"specversion": "1.0", "source": self.config.source})
            except ValueError as exc:
                raise ValueError(f"mapping {exc}") from None
            if mapped is None:
                return None
            event = mapped
        if event.get("id") is None:
            event["id"] = default_id
        if event.get("time") is None:
            event["time"] = _time(obj.last_modified)
        return event

    async def _malformed(self, obj: S3Object, bad: list[tuple[Record, str]]) -> None:
        self._m_malformed.inc(len(bad))
        if self.config.on_malformed == "drop":
            return
        letters = [
            {"bucket": obj.bucket, "key": obj.key, "line": r.line or r.number, "error": why, "raw": r.raw}
            for r, why in bad
        ]
        sink = self.ctx.dead_letters
        if sink is None:
            return  # this host keeps no dead letters: counted and logged only
        await asyncio.to_thread(sink.add, letters, f"receiver {self.id}: malformed record in s3://{obj.name}")

    # -- after processing ------------------------------------------------------------

    async def _after(self, obj: S3Object, state: dict[str, Any]) -> None:
        """Tag, move or delete a finished object (its records are all committed), then note it."""
        assert self._store is not None
        after = self.config.after
        action = after.action
        what = f"receiver {self.id}: {action} s3://{obj.name} after reading it"
        try:
            if action == "tag":
                assert after.tag is not None
                await asyncio.to_thread(self._tag, obj, after.tag)
            elif action == "move":
                assert after.move is not None
                await asyncio.to_thread(self._move, obj, after.move.prefix + obj.key)
            elif action == "delete":
                await asyncio.to_thread(self._client.delete_object, Bucket=obj.bucket, Key=obj.key)
        except Exception as exc:
            self._object_error(exc, what, obj, " (its records are delivered; only this step is retried)")
        if action in ("move", "delete"):
            # The object is gone from the prefix; a new object under the same key is new data.
            await asyncio.to_thread(self._store.delete, OBJECTS, obj.name)
        else:
            await asyncio.to_thread(self._store.put, OBJECTS, obj.name, {**state, "after": True})

    def _tag(self, obj: S3Object, tags: dict[str, str]) -> None:
        current = self._client.get_object_tagging(Bucket=obj.bucket, Key=obj.key).get("TagSet") or []
        merged = {t["Key"]: t["Value"] for t in current} | tags
        self._client.put_object_tagging(
            Bucket=obj.bucket, Key=obj.key, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in merged.items()]}
        )

    def _move(self, obj: S3Object, target: str) -> None:
        self._client.copy_object(
            Bucket=obj.bucket, Key=target, CopySource={"Bucket": obj.bucket, "Key": obj.key}, CopySourceIfMatch=obj.etag
        )
        self._client.delete_object(Bucket=obj.bucket, Key=obj.key)


def _take(records: Iterator[Record], after: int, n: int) -> list[Record]:
    """Up to ``n`` records numbered above ``after`` (those at or below it were committed before)."""
    out: list[Record] = []
    if n <= 0:
        return out
    for record in records:
        if record.number > after:
            out.append(record)
            if len(out) >= n:
                break
    return out


def _time(t: float) -> str:
    return format_time(datetime.fromtimestamp(t, UTC))
