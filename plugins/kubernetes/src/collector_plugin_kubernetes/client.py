"""Connecting to the API server with the official client, and naming what went wrong.

Every component of this plugin (the receiver, the Lease coordinator) builds its
client from :class:`ClientConfig`: an explicit kubeconfig, else the in-cluster
service account when the collector runs in a pod, else ``$KUBECONFIG`` /
``~/.kube/config`` -- what ``kubectl`` would use (docs/components/kubernetes-receiver.md,
"Connecting").  The client's calls block, so callers run them in threads.

:func:`describe` turns the client's exceptions into one line a person can act
on (401: credentials; 403: the RBAC rule that is missing; unreachable: the
URL), and :func:`classify` into the collector's error kinds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from collector.api import ConfigError, Duration

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


class ClientConfig(BaseModel):
    """How to reach the Kubernetes API server (shared by the receiver and the Lease coordinator)."""

    model_config = ConfigDict(extra="forbid")

    kubeconfig: Path | None = Field(
        None,
        description="Path of a kubeconfig file. Unset: the pod's service account when running in a cluster "
        "(KUBERNETES_SERVICE_HOST is set), else $KUBECONFIG or ~/.kube/config, as kubectl does.",
    )
    context: str | None = Field(None, description="kubeconfig context to use; unset: its current-context.")
    request_timeout: Duration = Field(
        30.0, gt=0, description="Time limit of one API request (a list, a Lease update); watches use their own."
    )

    def credentials_source(self) -> str:
        """Where the credentials come from, for logs (never the credentials themselves)."""
        if self.kubeconfig is not None:
            return f"kubeconfig {self.kubeconfig}"
        if os.environ.get(IN_CLUSTER_ENV):
            return "the in-cluster service account"
        return f"kubeconfig {os.environ.get('KUBECONFIG') or '~/.kube/config'}"


def new_api_client(config: ClientConfig, where: str) -> ApiClient:
    """An ApiClient for ``config``; :class:`ConfigError` naming the problem when it cannot be built.

    Blocking (reads files, may run an exec credential plugin): call it in a thread.
    """
    from kubernetes import client
    from kubernetes import config as kconfig

    configuration = client.Configuration()
    try:
        if config.kubeconfig is None and os.environ.get(IN_CLUSTER_ENV) and config.context is None:
            kconfig.load_incluster_config(client_configuration=configuration)
        else:
            path = str(config.kubeconfig) if config.kubeconfig is not None else None
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"kubeconfig {path} does not exist or is not a file", where)
            kconfig.load_kube_config(
                config_file=path, context=config.context, client_configuration=configuration, persist_config=False
            )
    except ConfigError:
        raise
    except kconfig.ConfigException as exc:
        raise ConfigError(
            f"cannot load Kubernetes credentials from {config.credentials_source()}: {exc}", where
        ) from None
    except Exception as exc:
        # A kubeconfig that is not YAML, or YAML of the wrong shape, fails inside the loader like this.
        raise ConfigError(
            f"cannot load Kubernetes credentials from {config.credentials_source()}: malformed kubeconfig "
            f"({type(exc).__name__}: {exc})",
            where,
        ) from None
    # The client retries failed requests three times on its own by default; the collector has its own
    # retry with backoff, so one attempt per call keeps errors prompt and honest.
    configuration.retries = 0
    return client.ApiClient(configuration=configuration)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a client error (ApiException), None for transport errors."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return int(exc.status) if exc.status else None
    return None


def _status_message(exc: Any) -> str:
    import json

    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (ValueError, TypeError):
            return str(body)[:300]
        if isinstance(data, dict) and data.get("message"):
            return str(data["message"])
    return str(getattr(exc, "reason", "") or exc)


def describe(exc: BaseException, what: str, server: str | None = None) -> str:
    """One actionable line for a failed API call ``what`` (e.g. "watch pods in namespace team-a")."""
    status = status_of(exc)
    at = f" at {server}" if server else ""
    if status == 401:
        return (
            f"{what}: the API server{at} refused our credentials (401 Unauthorized); check the kubeconfig user or "
            "the service-account token"
        )
    if status == 403:
        return (
            f"{what}: forbidden (403): {_status_message(exc)}; grant it with a Role/ClusterRole and binding "
            '(docs/components/kubernetes-receiver.md, "RBAC")'
        )
    if status is not None:
        return f"{what}: the API server{at} answered {status}: {_status_message(exc)}"
    reason = getattr(exc, "reason", None)
    text = f"{reason}" if reason is not None else f"{type(exc).__name__}: {exc}"
    return f"{what}: cannot reach the API server{at}: {text}"


def is_auth_error(exc: BaseException) -> bool:
    return status_of(exc) in (401, 403)
