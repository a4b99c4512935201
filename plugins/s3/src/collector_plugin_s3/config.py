"""Configuration of the ``s3`` receiver (docs/components/s3-receiver.md).

Imported at hook time (the model is part of the spec), so it stays light:
pydantic, the core's public API and the shared connection settings -- not boto3.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.api import Duration
from collector_plugin_s3.connection import S3ConnectionConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BucketSource(_Strict):
    """One place to read usage files from: a bucket and a key prefix in it."""

    bucket: str = Field(..., min_length=1, description="Bucket name.")
    prefix: str = Field("", description="Only keys starting with this (e.g. exports/usage/); empty: the whole bucket.")


class MoveAfter(_Strict):
    """Move a finished object under another prefix (copy, then delete the original)."""

    prefix: str = Field(..., min_length=1, description="Destination prefix; the new key is <prefix><original key>.")


class AfterConfig(_Strict):
    """What to do with an object once all its records are committed; at most one of tag, move, delete."""

    tag: dict[str, str] | None = Field(None, description="Add these tags to the object (kept where it is).")
    move: MoveAfter | None = Field(None, description="Move the object under another prefix.")
    delete: bool = Field(False, description="Delete the object.")

    @model_validator(mode="after")
    def _one(self) -> AfterConfig:
        if sum((self.tag is not None, self.move is not None, self.delete)) > 1:
            raise ValueError("choose one of tag, move and delete")
        return self

    @property
    def action(self) -> str | None:
        if self.tag is not None:
            return "tag"
        if self.move is not None:
            return "move"
        return "delete" if self.delete else None


class S3ReceiverConfig(S3ConnectionConfig):
    """Usage files from S3-compatible storage, each record billed exactly once (docs/components/s3-receiver.md)."""

    buckets: list[BucketSource] = Field(
        default_factory=list, description="Where to read from: a list of {bucket, prefix}; or use bucket/prefix."
    )
    bucket: str | None = Field(None, description="Shorthand for one entry of buckets.")
    prefix: str = Field("", description="Prefix of the shorthand bucket.")
    include: list[str] = Field(
        default_factory=list, description="Glob patterns (fnmatch, on the whole key); empty: every key."
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of keys to leave alone.")
    order: Literal["key", "last_modified"] = Field(
        "key",
        description="key: objects are read in key order and listing starts after the last finished key "
        "(cheap; for keys that grow, such as dated names). last_modified: the whole prefix is listed each poll "
        "and objects are read oldest first.",
    )
    interval: Duration = Field(60.0, gt=0, description="Time between polls of the bucket (60s, 5m).")
    format: Literal["auto", "jsonl", "json", "csv"] = Field(
        "auto", description="Record format; auto: by suffix (.jsonl/.ndjson, .json, .csv, each optionally .gz)."
    )
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="auto: gzip when the key ends in .gz/.gzip or Content-Encoding says gzip."
    )
    csv_types: dict[str, Literal["int", "float", "bool", "str", "json"]] = Field(
        default_factory=dict, description="CSV column -> type; other columns stay strings."
    )
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field delimiter.")
    mapping: str | None = Field(
        None,
        description="Mapping expression from a record (`this`) and `meta` (bucket, key, line, record, "
        "last_modified, etag) to a CloudEvent, or None to skip it. Unset: records that are CloudEvents "
        "(have specversion) pass through; other records are malformed.",
    )
    on_replaced: Literal["reread", "ignore"] = Field(
        "reread",
        description="An object whose ETag changed after it was (partly) read: reread it from the start "
        "(its records get new ids) or ignore the new version.",
    )
    on_malformed: Literal["dead_letter", "drop"] = Field(
        "dead_letter", description="Malformed records are counted and logged, then dead-lettered or dropped."
    )
    after: AfterConfig = Field(default_factory=AfterConfig, description="What to do with a finished object.")
    batch_size: int = Field(500, gt=0, le=100_000, description="Records per hand-off to the pipeline.")
    source: str = Field("s3", min_length=1, description="CloudEvent source of mapped records.")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sources(self) -> S3ReceiverConfig:
        if self.bucket is not None:
            self.buckets = [*self.buckets, BucketSource(bucket=self.bucket, prefix=self.prefix)]
        elif self.prefix:
            raise ValueError("prefix is set without bucket")
        if not self.buckets:
            raise ValueError("set bucket (and prefix) or buckets: where the usage files are")
        move = self.after.move
        if move is not None:
            for src in self.buckets:
                probe = move.prefix + "x"
                if probe.startswith(src.prefix) and self.wanted(probe):
                    raise ValueError(
                        f"after.move.prefix {move.prefix!r} is inside the watched prefix {src.prefix!r} of bucket "
                        f"{src.bucket!r}: moved objects would be read again; choose another prefix or exclude it"
                    )
        return self

    def wanted(self, key: str) -> bool:
        """Whether ``key`` passes the include and exclude globs."""
        if self.include and not any(fnmatch.fnmatchcase(key, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(key, p) for p in self.exclude)
