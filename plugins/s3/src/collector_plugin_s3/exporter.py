"""The ``s3`` archive exporter: every delivered batch becomes one gzip JSON-lines object, written once.

A user keeps a complete audit copy of what is billed beside OpenMeter by
fanning a pipeline out to both exporters (docs/components/s3-exporter.md,
"Objects").  Like any exporter it has its own durable queue and retries; the
sender's batching decides what one :meth:`S3Exporter.export` call gets, so
"rolling by size and age" is the ``batch`` settings: an object holds at most
``batch.max_events`` events and about ``batch.max_bytes`` of JSON, and is
written at the latest ``batch.period`` after its first event was queued.

Object names are deterministic::

    {prefix}/{yyyy}/{mm}/{dd}/{hh}/{time}-{digest}.jsonl.gz

partitioned (UTC) by the ``time`` of the batch's first event that has one,
``digest`` being 16 hex digits of the SHA-256 of the batch's ``source``/``id``
pairs.  So a batch retried after a timeout (the first PUT may have landed)
gets the same name, and the PUT carries ``If-None-Match: *``: S3 never
overwrites an object, and its "412 Precondition Failed" means this very batch
is already archived -- delivered.  Endpoints that do not support conditional
writes (501) are detected once and served by a HEAD before each PUT instead.
A batch whose events carry no ``time`` is named after the time it was first
tried, remembered per digest, so its retries in this process keep the name.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from collector.api import (
    AuthError,
    BatchSettings,
    ComponentContext,
    ConfigError,
    Duration,
    Event,
    Exporter,
    ExporterConfig,
    PermanentError,
    RetryableError,
)
from collector_plugin_s3.connection import S3Client, S3ConnectionConfig, describe, error_kind, new_client

__all__ = ["S3Exporter", "S3ExporterConfig", "object_key"]

CONTENT_TYPE = "application/x-ndjson"
# How many digests -> first-try times are remembered for batches without a time.
_NAMES_REMEMBERED = 1024


def _archive_batch() -> BatchSettings:
    return BatchSettings(max_events=10_000, max_bytes=16 * 1024 * 1024, period=60.0)


class S3ExporterConfig(ExporterConfig, S3ConnectionConfig):
    """Archive delivered events as gzip JSON-lines objects in a bucket (never overwritten)."""

    bucket: str = Field(..., min_length=3, max_length=63, description="The bucket the objects are written to.")
    prefix: str = Field("", description="Key prefix before the yyyy/mm/dd/hh partitions (archive/usage).")
    storage_class: str | None = Field(None, description="S3 storage class (STANDARD_IA, GLACIER_IR...); default S3's.")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption of the objects.")
    kms_key_id: str | None = Field(None, description="The KMS key for sse: aws:kms (default: the AWS managed key).")
    compress_level: int = Field(6, ge=1, le=9, description="gzip level (1 fastest, 9 smallest).")
    batch: BatchSettings = Field(
        default_factory=_archive_batch,
        description="What one object holds: at most max_events events, about max_bytes of JSON, and it is written "
        "at the latest period after its first event was queued (defaults 10000, 16MiB, 60s).",
    )
    timeout: Duration = Field(
        60.0, gt=0, description="How long one upload may take before it is abandoned and retried (60s)."
    )

    @model_validator(mode="after")
    def _check_archive(self) -> S3ExporterConfig:
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse: aws:kms")
        if self.prefix.startswith("/"):
            raise ValueError("prefix is a key prefix: it must not start with '/'")
        return self


def _first_time(events: list[Event]) -> datetime | None:
    """The UTC time of the first event that has a readable ``time``."""
    for event in events:
        value = event.get("time")
        if isinstance(value, str) and value:
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.astimezone(UTC)
    return None


def batch_digest(events: list[Event]) -> str:
    """16 hex digits identifying a batch by its events' ``source``/``id`` pairs, in order."""
    h = hashlib.sha256()
    for event in events:
        h.update(f"{event.get('source', '')}\x00{event.get('id', '')}\n".encode())
    return h.hexdigest()[:16]


def object_key(prefix: str, when: datetime, digest: str) -> str:
    """``{prefix}/{yyyy}/{mm}/{dd}/{hh}/{yyyymmddThhmmss.mmmZ}-{digest}.jsonl.gz`` (``when`` in UTC)."""
    when = when.astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"
    path = when.strftime("%Y/%m/%d/%H")
    head = prefix.strip("/")
    return f"{head + '/' if head else ''}{path}/{stamp}-{digest}.jsonl.gz"


def encode(events: list[Event], level: int = 6) -> bytes:
    """The events as gzip JSON lines; the same events give the same bytes (no gzip mtime)."""
    body = b"".join(orjson.dumps(e) + b"\n" for e in events)
    return gzip.compress(body, compresslevel=level, mtime=0)


class S3Unavailable(RetryableError):
    klass = "network"


class S3Throttled(RetryableError):
    klass = "throttled"


class S3Failed(RetryableError):
    klass = "s3_error"


class S3Exporter(Exporter[S3ExporterConfig]):
    def __init__(self, ctx: ComponentContext, config: S3ExporterConfig) -> None:
        super().__init__(ctx, config)
        if config.endpoint_url is not None and not config.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError("endpoint_url must start with http:// or https://", f"exporters.{ctx.id}.endpoint_url")
        ctx.telemetry.redactor.add(*config.secrets())
        self._client: S3Client | None = None
        self._conditional = True  # If-None-Match: * until the endpoint says it does not know it
        self._first_tried: OrderedDict[str, datetime] = OrderedDict()
        self.objects_written = 0

    async def _start(self) -> None:
        self._client = await new_client(self.config, max_pool_connections=self.config.max_in_flight)
        self.log.info(
            "s3 exporter archiving to s3://%s/%s at %s", self.config.bucket, self.config.prefix, self.config.where()
        )

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def key_for(self, events: list[Event]) -> str:
        """The object name of this batch (the same for every retry of it)."""
        digest = batch_digest(events)
        when = _first_time(events)
        if when is None:
            when = self._first_tried.get(digest) or datetime.fromtimestamp(self.ctx.clock.time(), UTC)
            self._first_tried[digest] = when
            self._first_tried.move_to_end(digest)
            while len(self._first_tried) > _NAMES_REMEMBERED:
                self._first_tried.popitem(last=False)
        return object_key(self.config.prefix, when, digest)

    async def export(self, events: list[Event]) -> None:
        if not events:
            return
        key = self.key_for(events)
        body = await asyncio.to_thread(encode, events, self.config.compress_level)
        written = await asyncio.to_thread(self._put, key, body, len(events))
        if written:
            self.objects_written += 1

    def _put(self, key: str, body: bytes, count: int) -> bool:
        """Blocking: write the object unless it exists.  True when written, False when it was already there."""
        client = self._client
        if client is None:
            raise S3Unavailable("s3 exporter is not started")
        args: dict[str, Any] = {
            "Bucket": self.config.bucket,
            "Key": key,
            "Body": body,
            "ContentType": CONTENT_TYPE,
            "ContentEncoding": "gzip",
            "Metadata": {"events": str(count)},
        }
        if self.config.storage_class:
            args["StorageClass"] = self.config.storage_class
        if self.config.sse:
            args["ServerSideEncryption"] = self.config.sse
        if self.config.kms_key_id:
            args["SSEKMSKeyId"] = self.config.kms_key_id
        try:
            if self._conditional:
                try:
                    client.put_object(IfNoneMatch="*", **args)
                    return True
                except Exception as exc:
                    if not _not_implemented(exc):
                        raise
                    self._conditional = False
                    self.log.warning(
                        "the endpoint does not support conditional writes (If-None-Match); "
                        "checking with HEAD before each write instead"
                    )
            if self._exists(client, key):
                return False
            client.put_object(**args)
            return True
        except Exception as exc:
            if error_kind(exc) == "conflict" and _status(exc) == 412:
                return False  # this batch (same name) is already archived: delivered
            raise self._translate(exc, key, count) from None

    def _exists(self, client: S3Client, key: str) -> bool:
        try:
            client.head_object(Bucket=self.config.bucket, Key=key)
        except Exception as exc:
            if _status(exc) == 404 and error_kind(exc) == "missing":
                if getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchBucket":
                    raise
                return False
            raise
        return True

    def _translate(self, exc: BaseException, key: str, count: int) -> Exception:
        """The collector error for a failed write: what the sender does next follows from its class."""
        what = f"writing {count} event(s) to s3://{self.config.bucket}/{key}"
        message = self.ctx.telemetry.redactor.scrub(
            describe(exc, what, bucket=self.config.bucket, where=self.config.where())
        )
        kind = error_kind(exc)
        status = _status(exc) or None
        if kind in ("auth", "missing"):
            # Credentials, permissions or the bucket: the configuration must change; the events
            # stay queued and the sender retries slowly (and /ready says why).
            return AuthError(message, status=status)
        if kind == "throttled":
            return S3Throttled(message)
        if kind in ("unavailable", "conflict"):
            return S3Unavailable(message)
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code == "EntityTooLarge":
            return PermanentError(message, status=status)  # the sender splits the batch
        return S3Failed(message)


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    return 0


def _not_implemented(exc: BaseException) -> bool:
    """The endpoint refused If-None-Match itself (old MinIO/Ceph): 501 NotImplemented."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    return _status(exc) == 501 or (response.get("Error") or {}).get("Code") == "NotImplemented"
