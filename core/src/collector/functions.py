"""The curated functions available to mapping expressions.

They are registered through the ``collector_functions`` hook by the built-in
plugin, like any plugin's functions.  Times are handled as RFC 3339 strings
(UTC, ``Z``) because that is what a CloudEvent carries; ``unix_time`` gives
seconds for arithmetic.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from collector.durations import parse_duration
from collector.events import format_time as _rfc3339
from collector.events import stable_id
from collector.specs import FunctionSpec


def _to_datetime(value: Any, fmt: str | None = None) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bool):
        raise TypeError("a boolean is not a time")
    if isinstance(value, int | float):
        seconds = float(value)
        if abs(seconds) > 1e14:  # microseconds
            seconds /= 1e6
        elif abs(seconds) > 1e11:  # milliseconds
            seconds /= 1e3
        return datetime.fromtimestamp(seconds, UTC)
    if isinstance(value, str):
        text = value.strip()
        if fmt:
            dt = datetime.strptime(text, fmt)
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return _to_datetime(float(text))
        dt = datetime.fromisoformat(text.replace("z", "Z"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    raise TypeError(f"cannot read a time from {type(value).__name__}")


def parse_time(value: Any, format: str | None = None) -> str | None:
    """A time (RFC 3339/ISO 8601 string, epoch seconds/ms/µs, or ``format`` for strptime)
    as an RFC 3339 UTC string. ``None`` stays ``None``."""
    if value is None:
        return None
    if format is None and isinstance(value, str) and len(value) in (20, 24) and value[-1] == "Z" and value[10] == "T":
        # Already RFC 3339 UTC ("...:00Z" / "...:00.123Z"), the common case in
        # logs: check it parses and keep it, instead of re-formatting (3x faster).
        datetime.fromisoformat(value)
        return value
    return _rfc3339(_to_datetime(value, format).astimezone(UTC))


def format_time(value: Any, format: str = "rfc3339") -> str | int | float | None:
    """Format a time: ``rfc3339`` (default), ``unix`` (int seconds), ``unix_ms``, or a strftime pattern."""
    if value is None:
        return None
    dt = _to_datetime(value).astimezone(UTC)
    if format == "rfc3339":
        return _rfc3339(dt)
    if format == "unix":
        return int(dt.timestamp())
    if format == "unix_ms":
        return int(dt.timestamp() * 1000)
    return dt.strftime(format)


def unix_time(value: Any) -> float | None:
    """Seconds since the epoch, for arithmetic on times."""
    return None if value is None else _to_datetime(value).timestamp()


def now() -> str:
    """The current time as an RFC 3339 UTC string (processing time: prefer the record's own)."""
    return _rfc3339(datetime.now(UTC))


def coalesce(*values: Any) -> Any:
    """The first value that is not ``None``."""
    for v in values:
        if v is not None:
            return v
    return None


def to_int(value: Any, default: Any = None) -> Any:
    """``int`` of a number or numeric string (``"12"``, ``"1.9"`` -> 1), else ``default``."""
    try:
        return int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def to_float(value: Any, default: Any = None) -> Any:
    """``float`` of a number or numeric string, else ``default``; NaN and infinity give ``default``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def to_str(value: Any) -> str | None:
    """``str`` of a value, ``None`` stays ``None``."""
    return None if value is None else str(value)


def lower(value: Any) -> str | None:
    return None if value is None else str(value).lower()


def upper(value: Any) -> str | None:
    return None if value is None else str(value).upper()


def trim(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def split(value: Any, sep: str | None = None) -> list[str] | None:
    return None if value is None else str(value).split(sep)


def join(values: Any, sep: str = ",") -> str | None:
    return None if values is None else sep.join(str(v) for v in values)


def replace(value: Any, old: str, new: str) -> str | None:
    return None if value is None else str(value).replace(old, new)


def regex_match(value: Any, pattern: str) -> bool:
    """Whether ``pattern`` matches anywhere in the value."""
    return value is not None and re.search(pattern, str(value)) is not None


def regex_replace(value: Any, pattern: str, repl: str) -> str | None:
    return None if value is None else re.sub(pattern, repl, str(value))


def get(obj: Any, path: str, default: Any = None) -> Any:
    """A dotted path (``"a.b.0.c"``) into nested objects and lists, else ``default``."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.lstrip("-").isdigit():
            i = int(part)
            cur = cur[i] if -len(cur) <= i < len(cur) else None
        else:
            return default
        if cur is None:
            return default
    return cur


def uuid4() -> str:
    """A random id. Prefer ``stable_id``: a random id double-bills on replay."""
    return str(uuid.uuid4())


_FUNCTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "stable_id": (stable_id, "A deterministic UUIDv5 over the arguments: the same inputs give the same id."),
    "uuid4": (uuid4, uuid4.__doc__ or ""),
    "now": (now, now.__doc__ or ""),
    "parse_time": (parse_time, parse_time.__doc__ or ""),
    "format_time": (format_time, format_time.__doc__ or ""),
    "unix_time": (unix_time, unix_time.__doc__ or ""),
    "parse_duration": (parse_duration, parse_duration.__doc__ or ""),
    "coalesce": (coalesce, coalesce.__doc__ or ""),
    "to_int": (to_int, to_int.__doc__ or ""),
    "to_float": (to_float, to_float.__doc__ or ""),
    "to_str": (to_str, to_str.__doc__ or ""),
    "lower": (lower, "Lower-case string; None stays None."),
    "upper": (upper, "Upper-case string; None stays None."),
    "trim": (trim, "String without surrounding white space; None stays None."),
    "split": (split, "Split a string (on white space, or on sep)."),
    "join": (join, "Join values into a string with sep (default ',')."),
    "replace": (replace, "Replace every old with new in a string."),
    "regex_match": (regex_match, regex_match.__doc__ or ""),
    "regex_replace": (regex_replace, "Replace every match of pattern with repl."),
    "get": (get, get.__doc__ or ""),
}


def function_specs() -> list[FunctionSpec]:
    return [FunctionSpec(name, fn, " ".join(doc.split())) for name, (fn, doc) in _FUNCTIONS.items()]


def builtin_functions() -> dict[str, Callable[..., Any]]:
    return {name: fn for name, (fn, _) in _FUNCTIONS.items()}
