"""TLS settings of listening components (server side).

Part of the public plugin API (:mod:`collector.api`); outgoing HTTPS settings
are in :mod:`collector.httpclient`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.errors import ConfigError

__all__ = ["TlsConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    """Serve HTTPS with a certificate and key from files."""

    cert_file: Path = Field(description="PEM certificate chain.")
    key_file: Path = Field(description="PEM private key.")

    def server_context(self, path: str) -> ssl.SSLContext:
        """An SSL context serving this certificate; ConfigError at ``path`` when it cannot be loaded."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load TLS certificate/key: {exc}", path) from None
        return ctx

    @model_validator(mode="after")
    def _exists(self) -> TlsConfig:
        for name in ("cert_file", "key_file"):
            path: Path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"{name} {str(path)!r} does not exist or is not a file")
        return self
