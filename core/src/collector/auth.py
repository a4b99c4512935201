"""Bearer-token authentication of callers of a listening component.

Part of the public plugin API (:mod:`collector.api`): the HTTP and OTLP
receivers share :class:`AuthConfig` (where the tokens come from) and
:class:`BearerAuth` (the constant-time check of an ``Authorization`` header).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from collector.errors import ConfigError

__all__ = ["AuthConfig", "BearerAuth"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthConfig(_Strict):
    """Bearer tokens that callers must present.  Any one of them is accepted."""

    tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Tokens written inline (prefer ${VAR}); empty strings are ignored, so "
        '`["${INGEST_TOKEN:-}"]` turns auth on only when the variable is set.',
    )
    tokens_file: Path | None = Field(
        None, description="File with one token per line (blank lines and # comments ignored)."
    )
    tokens_env: str | None = Field(
        None, description="Name of an environment variable holding one token or several, comma-separated."
    )

    def resolve(self) -> list[str]:
        """Every configured token; raises ValueError with an actionable message."""
        out = [t.get_secret_value() for t in self.tokens if t.get_secret_value()]
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read tokens_file {str(self.tokens_file)!r}: {exc.strerror}") from None
            out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if self.tokens_env:
            value = os.environ.get(self.tokens_env)
            if not value:
                raise ValueError(f"environment variable {self.tokens_env} (tokens_env) is not set or empty")
            out += [t.strip() for t in value.split(",") if t.strip()]
        return out

    def bearer_tokens(self, path: str, redactor: Any) -> list[bytes]:
        """The tokens to accept (UTF-8 bytes), for :class:`BearerAuth`.

        Raises ConfigError at ``path`` when a source cannot be read or yields
        nothing; registers every token with the log redactor.
        """
        try:
            tokens = self.resolve()
        except ValueError as exc:
            raise ConfigError(str(exc), path) from None
        if self.enabled and not tokens:
            raise ConfigError("auth is configured but yields no token", path)
        redactor.add(*tokens)
        return [t.encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(any(t.get_secret_value() for t in self.tokens) or self.tokens_file or self.tokens_env)


class BearerAuth:
    """Checks ``Authorization`` headers against the configured tokens.

    The header is ``<scheme> <token>``: the scheme ``Bearer`` in any case
    (RFC 7235 §2.1: auth schemes are case-insensitive), then one or more
    spaces, then the token, which is compared exactly and in constant time
    (``hmac.compare_digest``) with every configured one.  A header that is not
    valid UTF-8 is compared as its raw bytes, never an error.
    """

    def __init__(self, accepted: list[bytes]) -> None:
        self.accepted = accepted

    @property
    def required(self) -> bool:
        return bool(self.accepted)

    def allows(self, header: str | bytes | None) -> bool:
        if not self.accepted:
            return True
        given = header.encode("utf-8", "surrogateescape") if isinstance(header, str) else (header or b"")
        scheme, sep, token = given.partition(b" ")
        token = token.lstrip(b" ")
        # a wrong scheme still costs one comparison per token, like a wrong token
        scheme_ok = bool(sep) and scheme.lower() == b"bearer"
        ok = False
        for accepted in self.accepted:  # compare with all, in constant time each
            ok |= hmac.compare_digest(token, accepted)
        return ok and scheme_ok
