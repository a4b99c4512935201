"""moto's S3 server on 127.0.0.1, for the plugin's tests (no pytest here: tests import it).

``MotoS3`` starts ``ThreadedMotoServer`` on a free port.  moto keeps its
buckets in this process, not in the server thread, so :meth:`MotoS3.pause`
(stop listening) and :meth:`MotoS3.resume` (listen again on the same port)
simulate an outage of the endpoint with every object kept.
:meth:`MotoS3.require_credentials` makes the server check signatures, so a
wrong key is refused with 403 as AWS would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

ACCESS_KEY = "AKIAEXAMPLEEXAMPLE00"
SECRET_KEY = "test-secret-key-never-logged"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """An S3 endpoint for tests: ``with MotoS3() as s3: s3.client().create_bucket(...)``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None
        self._lock = threading.Lock()

    def start(self) -> MotoS3:
        with self._lock:
            if self._server is None:
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                server.start()
                self._server = server
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def pause(self) -> None:
        """Stop listening (connections are refused); the buckets and objects stay."""
        self.stop()

    def resume(self) -> None:
        """Listen again on the same port, with the same buckets and objects."""
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (path-style, dummy keys unless overridden)."""
        args: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "config": Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        }
        args.update(overrides)
        return boto3.client("s3", **args)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> raw body (as stored, not decompressed)."""
        client = self.client()
        out: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return out

    @contextmanager
    def require_credentials(self) -> Iterator[None]:
        """While inside: requests must be signed with a key moto's IAM knows (others: 403)."""
        from moto.core.authorization import enable_iam_authentication

        with enable_iam_authentication():
            yield

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
