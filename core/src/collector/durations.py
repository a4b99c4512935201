"""One syntax for every configured duration and size (docs/configuration.md#durations-and-sizes).

A person writes ``timeout: 30s``, ``max_age: 7d``, ``max_bytes: 1GiB``; a bare
number is still seconds or bytes, so older files keep working.  Config models
declare a field as :data:`Duration` (float seconds) or :data:`ByteSize` (int
bytes) instead of parsing strings themselves, so every component accepts the
same forms and reports the same errors.  Constraints (``Field(gt=0)``) apply to
the parsed value.

The JSON Schema of both types accepts a number or a string, so a file that
says ``timeout: 30s`` or ``max_bytes: "${QUEUE_BYTES:-1GiB}"`` also validates in
an editor against ``collector schema``.

This module is part of the public plugin API: it imports nothing from the
runtime, the CLI or the configuration loader.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

__all__ = [
    "DURATION_PATTERN",
    "SIZE_PATTERN",
    "SUBSTITUTION_PATTERN",
    "ByteSize",
    "Duration",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0,
}  # fmt: skip
_ISO_DURATION = re.compile(
    rf"P(?:(?P<d>{_NUMBER})D)?(?:T(?:(?P<h>{_NUMBER})H)?(?:(?P<m>{_NUMBER})M)?(?:(?P<s>{_NUMBER})S)?)?"
)
_BARE_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

# Units are matched case-insensitively: SI powers of 1000 and IEC powers of
# 1024, with the Kubernetes spellings (Ki, Mi, Gi, Ti) for people who write
# both kinds of manifests.
_SIZE = re.compile(rf"(-?{_NUMBER})\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4,
}  # fmt: skip

#: A ``${VAR}`` or ``${VAR:-default}`` reference (JSON Schema regex, unanchored:
#: any string holding one is substituted before validation).
SUBSTITUTION_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
_DURATION_GRAMMAR = (
    rf"-?{_NUMBER}|(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d|w))+"
    rf"|P(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?"
)
#: What the JSON Schema accepts as a duration string (checked again, exactly, on load).
DURATION_PATTERN = rf"^\s*(?:{_DURATION_GRAMMAR})\s*$|{SUBSTITUTION_PATTERN}"
#: What the JSON Schema accepts as a size string (checked again, exactly, on load).
SIZE_PATTERN = rf"^\s*-?{_NUMBER}\s*(?:[bB]|[kKmMgGtT](?:[iI]?[bB]|[iI]))?\s*$|{SUBSTITUTION_PATTERN}"


def parse_duration(value: Any) -> float | None:
    """Seconds in a duration: ``1h30m``, ``500ms``, ``PT1H``, ``90`` (seconds) or a number."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if _BARE_NUMBER.fullmatch(text):
        return float(text)
    if text.startswith("P"):
        m = _ISO_DURATION.fullmatch(text)
        if m and any(m.groupdict().values()):
            d, h, mi, s = (float(m.group(k) or 0) for k in "dhms")
            return d * 86400 + h * 3600 + mi * 60 + s
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r} (use forms like 1h30m, 500ms, PT1H)")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as the shortest duration a person would write: ``1m30s``, ``200ms``, ``7d``.

    For messages that name a configured duration the way it was probably
    written; :func:`parse_duration` reads back every result for a duration
    that is not negative.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    micros = round(seconds * 1e6)
    if abs(micros - seconds * 1e6) > 1e-6:
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if micros % 1000:
        return f"{micros}us" if micros < 1_000_000 else f"{micros / 1e6:.6f}".rstrip("0") + "s"
    millis = micros // 1000
    if millis % 1000:
        return f"{millis}ms" if millis < 1000 else f"{millis / 1000:.3f}".rstrip("0") + "s"
    whole, parts = millis // 1000, []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def format_size(size: int) -> str:
    """Bytes in the largest IEC unit that holds them exactly: ``512MiB``, ``1GiB``, ``1000B``."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def parse_size(value: Any) -> int | None:
    """Bytes in a size: ``1GiB``, ``512MiB``, ``10MB``, ``1.5KiB``, ``4096`` (bytes) or a number.

    SI units (kB, MB, GB, TB) are powers of 1000, IEC units (KiB, MiB, GiB,
    TiB, or Ki, Mi, Gi, Ti) powers of 1024; units are case-insensitive.  The
    result must be a whole number of bytes.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 512MiB, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        number, unit, text = value, 1, repr(value)
    else:
        text = str(value).strip()
        m = _SIZE.fullmatch(text)
        if m is None:
            raise ValueError(f"not a size: {text!r} (use forms like 512MiB, 1GiB, 10MB or a number of bytes)")
        factor = _SIZE_UNITS.get(m.group(2).lower())
        if factor is None:
            raise ValueError(
                f"unknown size unit {m.group(2)!r} in {text!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            )
        number, unit = float(m.group(1)), factor
        if "." not in m.group(1):  # exact for integers of any size
            return int(m.group(1)) * unit
    if not math.isfinite(number):
        raise ValueError(f"not a size: {text!r}")
    total = number * unit
    if not total.is_integer():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(total)


def _seconds(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, not a boolean")
    if not isinstance(value, str | int | float | timedelta):
        return value  # let the float validation name the wrong type
    seconds = parse_duration(value)
    if seconds is not None and not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    return seconds


def _bytes(value: Any) -> Any:
    if not isinstance(value, str | int | float):
        return value  # let the int validation name the wrong type
    return parse_size(value)


@dataclass(frozen=True)
class _NumberOrString:
    """JSON Schema of a number that may also be written as a string: one node
    whose numeric keywords (``exclusiveMinimum``...) apply to numbers and whose
    ``pattern`` applies to strings, as JSON Schema defines them."""

    pattern: str
    reference_name: str  # what the configuration reference (docs/reference/) calls the type

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = dict(handler(schema))
        out["type"] = [out.get("type", "number"), "string"]
        out["pattern"] = self.pattern
        return out


Duration = Annotated[float, BeforeValidator(_seconds), _NumberOrString(DURATION_PATTERN, "duration")]
"""Seconds, written as a number or as ``30s``, ``1m``, ``1h30m``, ``500ms``, ``2d``, ``PT1H``."""

ByteSize = Annotated[int, BeforeValidator(_bytes), _NumberOrString(SIZE_PATTERN, "size")]
"""Bytes, written as a number or as ``512MiB``, ``1GiB``, ``10MB``, ``1.5KiB``."""
