"""How the ``s3`` receiver and exporter reach a bucket: shared connection settings, the client, error wording.

Both components take the same settings (docs/components/s3-exporter.md, "Connection"):
``region``, ``endpoint_url`` (MinIO, Ceph, R2...), ``path_style``, static keys
or a ``profile`` (else boto3's standard credentials chain), ``verify_tls`` /
``ca_file`` and ``timeout``.  Secrets are :class:`~pydantic.SecretStr`, so the
collector masks them in every log line, and :func:`describe` words a failure as
one line that says what to fix without ever quoting a credential.

boto3 is imported inside the functions: the plugin's entry point must stay
cheap for configurations that do not use S3.  Its clients block, so they are
built (:func:`new_client`) and called in threads, never on an event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from collector.api import Duration

#: A boto3 S3 client (boto3 ships no types; the name says what the Any is).
S3Client = Any

__all__ = ["ErrorKind", "S3ConnectionConfig", "build_client", "describe", "error_kind", "new_client"]

# The IAM permission an S3 operation needs, to name it when access is denied.
_PERMISSIONS = {
    "PutObject": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
    "CopyObject": "s3:GetObject on the source and s3:PutObject on the target",
    "PutObjectTagging": "s3:PutObjectTagging",
    "GetObjectTagging": "s3:GetObjectTagging",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the endpoint does not know this access key id: check access_key_id (or the profile)",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id: check secret_access_key",
    "ExpiredToken": "the session token has expired: renew session_token (or the profile's credentials)",
    "InvalidToken": "the session token is not valid: check session_token",
    "TokenRefreshRequired": "the session token must be refreshed: renew session_token",
}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}

ErrorKind = Literal["auth", "missing", "throttled", "unavailable", "conflict", "other"]


class S3ConnectionConfig(BaseModel):
    """Where the bucket is and which credentials open it (shared by the ``s3`` receiver and exporter)."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = Field(
        None, description="The bucket's region (us-east-1...); default: boto3's chain (AWS_REGION, the profile)."
    )
    endpoint_url: str | None = Field(
        None, description="An S3-compatible endpoint (MinIO, Ceph, R2: https://minio.example:9000); default: AWS."
    )
    path_style: bool = Field(
        False, description="Address buckets as endpoint/bucket/key instead of bucket.endpoint (most MinIO setups)."
    )
    access_key_id: str | None = Field(None, description="Static access key id (with secret_access_key).")
    secret_access_key: SecretStr | None = Field(
        None, description="Static secret key; prefer ${env:...} or a profile. Never logged."
    )
    session_token: SecretStr | None = Field(None, description="Session token of temporary credentials. Never logged.")
    profile: str | None = Field(None, description="A profile of the AWS shared config/credentials files.")
    verify_tls: bool = Field(True, description="Verify the endpoint's TLS certificate (false only for tests).")
    ca_file: Path | None = Field(None, description="A PEM bundle of the CAs that sign the endpoint's certificate.")
    timeout: Duration = Field(30.0, gt=0, description="Connect and read timeout of each S3 request (30s).")

    @model_validator(mode="after")
    def _check_credentials(self) -> S3ConnectionConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: set both, or neither")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        if self.profile is not None and self.access_key_id is not None:
            raise ValueError("set either profile or access_key_id/secret_access_key, not both")
        return self

    def secrets(self) -> list[str]:
        """The secret values, for the collector's redactor (masked wherever text is logged or shown)."""
        return [s.get_secret_value() for s in (self.secret_access_key, self.session_token) if s is not None]

    def where(self) -> str:
        """The endpoint as shown in messages: the configured URL, or AWS in its region."""
        return self.endpoint_url or f"AWS S3 ({self.region or 'default region'})"


def build_client(config: S3ConnectionConfig, *, max_pool_connections: int = 10) -> S3Client:
    """A boto3 S3 client for ``config`` (blocking: boto3 reads its service models; call it in a thread).

    botocore's own retries are off (one attempt per call): the collector's
    retry policy (the exporter's backoff, the receiver's next poll) decides.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key.get_secret_value() if config.secret_access_key else None,
        aws_session_token=config.session_token.get_secret_value() if config.session_token else None,
        profile_name=config.profile,
        region_name=config.region,
    )
    verify: bool | str = str(config.ca_file) if config.ca_file is not None else True
    if not config.verify_tls:
        verify = False
    botocore_config = Config(
        connect_timeout=config.timeout,
        read_timeout=config.timeout,
        retries={"total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": "path" if config.path_style else "auto"},
        user_agent_extra="collector-plugin-s3",
    )
    return session.client("s3", endpoint_url=config.endpoint_url, verify=verify, config=botocore_config)


async def new_client(config: S3ConnectionConfig, *, max_pool_connections: int = 10) -> S3Client:
    """:func:`build_client` in a thread, so that the event loop never waits on boto3."""
    return await asyncio.to_thread(build_client, config, max_pool_connections=max_pool_connections)


def _client_error(exc: BaseException) -> tuple[str, int, str, str] | None:
    """(code, HTTP status, message, operation) of a botocore ClientError; None for other exceptions."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    code = str(error.get("Code") or status or "unknown")
    return code, int(status), str(error.get("Message") or ""), str(getattr(exc, "operation_name", "") or "")


def error_kind(exc: BaseException) -> ErrorKind:
    """What a boto3 failure means for the caller.

    ``auth``: refused credentials or permissions (fix the configuration; retry
    slowly); ``missing``: no such bucket or key; ``throttled``: slow down;
    ``unavailable``: the endpoint cannot be reached or failed (5xx, timeouts);
    ``conflict``: a conditional request did not hold (412/409); ``other``.
    """
    from botocore import exceptions as bex

    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError | bex.ProfileNotFound):
        return "auth"
    if isinstance(
        exc,
        bex.EndpointConnectionError | bex.ConnectionClosedError | bex.ConnectTimeoutError | bex.ReadTimeoutError,
    ):
        return "unavailable"
    if isinstance(exc, bex.HTTPClientError | ConnectionError | TimeoutError):
        return "unavailable"
    found = _client_error(exc)
    if found is None:
        return "other"
    code, status, _message, _operation = found
    if code in _CREDENTIAL_CODES or code in ("AccessDenied", "AllAccessDisabled") or status in (401, 403):
        return "auth"
    if code in ("NoSuchBucket", "NoSuchKey", "NotFound") or status == 404:
        return "missing"
    if code in _THROTTLE_CODES or status in (429, 503):
        return "throttled"
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
        return "conflict"
    if status >= 500 or code in ("RequestTimeout", "InternalError"):
        return "unavailable"
    return "other"


def describe(exc: BaseException, what: str, *, bucket: str | None = None, where: str | None = None) -> str:
    """One actionable line about ``exc``, which happened while doing ``what`` (``"writing s3://b/k"``).

    Names the bucket, the HTTP status and S3's code, and says what to check
    (which permission is missing, which setting is wrong).  Never includes a
    credential: only the server's code and message and botocore's own wording,
    which name the endpoint but not the keys.
    """
    from botocore import exceptions as bex

    place = f" at {where}" if where else ""
    bucket_text = f"bucket {bucket!r}" if bucket else "the bucket"
    if isinstance(exc, bex.NoCredentialsError):
        return (
            f"{what}: no AWS credentials found: set access_key_id and secret_access_key, or profile, "
            "or provide them through the environment or the instance role"
        )
    if isinstance(exc, bex.PartialCredentialsError):
        return f"{what}: incomplete credentials ({exc}): check the profile or the AWS_* environment"
    if isinstance(exc, bex.ProfileNotFound):
        return f"{what}: {exc}: check profile and the AWS shared config files"
    found = _client_error(exc)
    if found is None:
        kind = error_kind(exc)
        if kind == "unavailable":
            return f"{what}: cannot reach the S3 endpoint{place} ({type(exc).__name__}: {exc}); will retry"
        return f"{what}: {type(exc).__name__}: {exc}"
    code, status, message, operation = found
    head = f"{what}: {status} {code}" if status else f"{what}: {code}"
    if code in _CREDENTIAL_CODES:
        return f"{head}: {_CREDENTIAL_CODES[code]}"
    if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
        permission = _PERMISSIONS.get(operation, f"the permission for {operation or 'this request'}")
        return f"{head}: access denied to {bucket_text}{place}: the credentials need {permission} on it"
    if code == "NoSuchBucket":
        return f"{head}: {bucket_text} does not exist{place}: check bucket, region and endpoint_url"
    if code in ("NoSuchKey", "NotFound") or status == 404:
        return f"{head}: not found in {bucket_text}{place}"
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
        return f"{head}: {bucket_text} is in another region: set region (S3 says: {message})"
    if code in _THROTTLE_CODES or status == 429:
        return f"{head}: the endpoint asks to slow down; will retry"
    detail = f": {message}" if message else ""
    return f"{head}{detail}"
