"""Streaming record readers for usage files: JSON lines, a JSON array, CSV, each optionally gzip-compressed.

Pure code, no S3: the receiver hands in an object's body (anything with
``.read(n)``, e.g. boto3's ``StreamingBody``) and gets records back one at a
time.  Objects are streamed, never read whole: memory is bounded by the chunk
size and ``max_record_bytes``, whatever the object's size, because usage
exports are routinely larger than the collector's memory.

Two kinds of failure, as the users' documentation (docs/components/s3-receiver.md)
describes:

* a *malformed record* (a JSON line that does not parse or is not an object, a
  CSV row with the wrong number of fields or a value that does not convert,
  invalid text encoding on a line) is yielded as a :class:`Record` whose
  ``value`` is ``None`` and whose ``error`` says why; the rest of the object is
  still read, so one bad line never holds back the good ones;
* an *unreadable object* (not gzip, a ``json`` object that is not an array, a
  CSV header that cannot be one, a JSON array element that does not parse)
  raises :class:`FormatError` -- after the records before the fault have been
  yielded, so a caller that commits per record keeps what it delivered.

An empty object (zero bytes, or only whitespace) holds no records, in every
format: exporters commonly write empty files when there was no usage.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "CSV_TYPES",
    "RAW_LIMIT",
    "Format",
    "FormatError",
    "Readable",
    "Record",
    "decompressed",
    "format_of",
    "is_gzip",
    "read_records",
]

Format = Literal["jsonl", "json", "csv"]

#: ``Record.raw`` is cut to this many characters: enough to recognise a line in
#: a log or a dead letter, small enough that a huge bad line costs nothing.
RAW_LIMIT = 4096

_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".jsonlines": "jsonl",
    ".json": "json",
    ".csv": "csv",
}
_GZIP_SUFFIXES = (".gz", ".gzip")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    """What an object's body must offer: ``read(n)`` returning at most n bytes, ``b""`` at the end.

    boto3's ``StreamingBody``, ``io.BytesIO`` and open binary files all do.
    """

    def read(self, size: int, /) -> bytes: ...


class FormatError(Exception):
    """The whole object (or the rest of it) cannot be read: the message says which fault and where."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of an object, well-formed (``value``) or malformed (``error``).

    ``number`` is the record's 1-based position among the object's records:
    non-blank lines for ``jsonl``, the array index + 1 for ``json``, the data
    row (header excluded, blank lines skipped) for ``csv``.  It is stable for
    a given object, so the receiver can resume after record N and derive ids
    from it.  ``line`` is the physical line (1-based) where the record starts,
    for logs; 0 for ``json``.
    """

    number: int
    line: int
    value: dict[str, Any] | None
    error: str | None
    raw: str


def format_of(key: str, configured: Literal["auto", "jsonl", "json", "csv"] = "auto") -> Format:
    """The format of the object ``key``: ``configured`` unless it is ``auto``, else by the key's suffix.

    A ``.gz``/``.gzip`` suffix is removed first (``usage.jsonl.gz`` is JSON
    lines).  An unknown suffix is a :class:`FormatError` rather than a guess:
    reading CSV as JSON lines would dead-letter every line.
    """
    if configured != "auto":
        return configured
    name = key.rsplit("/", 1)[-1].lower()
    for gz in _GZIP_SUFFIXES:
        if name.endswith(gz):
            name = name[: -len(gz)]
            break
    dot = name.rfind(".")
    suffix = name[dot:] if dot >= 0 else ""
    fmt = _SUFFIXES.get(suffix)
    if fmt is None:
        known = ", ".join(_SUFFIXES)
        shown = repr(suffix) if suffix else "no suffix"
        raise FormatError(
            f"{key!r}: unknown format ({shown}); known suffixes: {known}, each optionally followed by .gz; "
            "set the format explicitly for other names"
        )
    return fmt


def is_gzip(key: str, content_encoding: str | None, compression: Literal["auto", "gzip", "none"] = "auto") -> bool:
    """Whether to gunzip the object: forced by ``compression``, else by suffix or ``Content-Encoding``."""
    if compression != "auto":
        return compression == "gzip"
    if key.lower().endswith(_GZIP_SUFFIXES):
        return True
    if content_encoding:
        tokens = {token.strip().lower() for token in content_encoding.split(",")}
        return bool(tokens & {"gzip", "x-gzip"})
    return False


def decompressed(body: Readable, gzip: bool, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """The object's bytes as chunks of at most ``chunk_size``, gunzipped when ``gzip``.

    Concatenated gzip members (``cat a.gz b.gz``, what many log shippers
    write) are read as one stream, and zero padding between or after members
    is skipped, as ``gzip`` itself does.  Output is bounded per step, so a
    small, highly compressed object never inflates into memory at once.  A body
    that is not gzip, is corrupt or is truncated raises :class:`FormatError`
    whose message starts with ``not gzip:``.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not gzip:
        while chunk := body.read(chunk_size):
            yield chunk
        return
    yield from _gunzip(body, chunk_size)


def _gunzip(body: Readable, chunk_size: int) -> Iterator[bytes]:
    inflater: Any = None  # zlib.Decompress of the current member; None between members
    consumed = 0  # compressed bytes read so far, for messages
    member_start = 0
    head = b""  # the first bytes of a member, until its magic can be checked
    while data := body.read(chunk_size):
        consumed += len(data)
        while data:
            if inflater is None:
                if not head:
                    data = data.lstrip(b"\x00")
                    if not data:
                        break
                head += data
                if len(head) < len(_GZIP_MAGIC):
                    break
                member_start = consumed - len(head)  # head is the tail of what was read
                if not head.startswith(_GZIP_MAGIC):
                    where = "the object" if member_start == 0 else f"the data at byte {member_start}"
                    raise FormatError(f"not gzip: {where} does not start with the gzip magic 1f 8b ({head[:8]!r})")
                data, head = head, b""
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while True:
                try:
                    out = inflater.decompress(data, chunk_size)
                except zlib.error as exc:
                    raise FormatError(f"not gzip: corrupt gzip member at byte {member_start}: {exc}") from None
                if out:
                    yield out
                if inflater.eof:
                    data = inflater.unused_data
                    inflater = None
                    break
                data = inflater.unconsumed_tail
                if not data and len(out) < chunk_size:
                    break
    if head:
        raise FormatError(f"not gzip: {len(head)} stray byte(s) at the end of the object ({head!r})")
    if inflater is not None:
        raise FormatError(f"not gzip: truncated: the gzip member at byte {member_start} ends early")


def read_records(
    chunks: Iterable[bytes],
    fmt: Format,
    *,
    csv_types: Mapping[str, str] | None = None,
    csv_delimiter: str = ",",
    encoding: str = "utf-8",
    max_record_bytes: int = 1 << 20,
) -> Iterator[Record]:
    """The records of an object whose (decompressed) bytes arrive as ``chunks``, in order.

    Chunk boundaries may fall anywhere, inside records or multi-byte
    characters.  ``encoding`` must be ASCII-compatible (UTF-8, Latin-1, ...);
    a UTF-8 byte-order mark is ignored.  A record longer than
    ``max_record_bytes`` is malformed in ``jsonl``, and a :class:`FormatError`
    in ``json`` and ``csv`` (where the end of an over-long element or quoted
    row cannot be found without holding it); nothing longer is held in memory.

    ``json``: a malformed array element leaves the rest of the array
    impossible to locate reliably, so it raises :class:`FormatError` after
    the records before it; a well-formed element that is not an object is a
    malformed record and reading goes on.

    ``csv_types`` maps column names to ``int``, ``float``, ``bool``, ``str``
    or ``json``; untyped columns stay strings, and a typed empty value is
    ``None``.  Invalid arguments raise :class:`ValueError` at once.
    """
    if fmt not in ("jsonl", "json", "csv"):
        raise ValueError(f"unknown format {fmt!r}")
    if max_record_bytes <= 0:
        raise ValueError("max_record_bytes must be positive")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    probe = "\n\r ,;\t[]{}\"'"
    if probe.encode(codec, errors="replace") != probe.encode("ascii"):
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; usage files must use e.g. utf-8 or latin-1")
    if fmt == "jsonl":
        return _jsonl_records(chunks, codec, max_record_bytes)
    if fmt == "json":
        return _json_records(chunks, codec, max_record_bytes)
    if len(csv_delimiter) != 1 or csv_delimiter in '\r\n"':
        raise ValueError(f"csv_delimiter must be one character other than a quote or newline, not {csv_delimiter!r}")
    converters = {column: _converter(column, kind) for column, kind in (csv_types or {}).items()}
    return _csv_records(chunks, codec, max_record_bytes, csv_delimiter, converters)


def _cut(text: str) -> str:
    return text[:RAW_LIMIT]


def _reject_constant(name: str) -> Any:
    """``json`` parse hook: NaN and Infinity are not JSON and mean nothing as a billed quantity."""
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# -- lines (jsonl and csv) ---------------------------------------------------------------------------------------


def _split_lines(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[int, bytes, bool, bool]]:
    """Physical lines as ``(number, bytes without the newline, overlong, ended by a newline)``.

    A line longer than ``limit`` is not held: only its first ``RAW_LIMIT``
    bytes are kept (for the report) and the rest is skipped up to its newline.
    """
    parts: list[bytes] = []
    size = 0
    overlong: bytes | None = None  # the kept head of an over-long line
    number = 0
    for chunk in chunks:
        if not chunk:
            continue
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            number += 1
            if overlong is not None:
                yield number, overlong, True, True
            elif size + len(piece) > limit:
                yield number, _head(parts, piece), True, True
            else:
                yield number, (b"".join(parts) + piece) if parts else piece, False, True
            parts, size, overlong = [], 0, None
        rest = pieces[-1]
        if rest and overlong is None:
            if size + len(rest) > limit:
                overlong = _head(parts, rest)
                parts, size = [], 0
            else:
                parts.append(rest)
                size += len(rest)
    if overlong is not None:
        yield number + 1, overlong, True, False
    elif parts:
        yield number + 1, b"".join(parts), False, False


def _head(parts: list[bytes], more: bytes) -> bytes:
    """The first ``RAW_LIMIT`` bytes of ``parts + [more]``, without joining them all (they may be megabytes)."""
    head = b""
    for part in [*parts, more]:
        head += part[: RAW_LIMIT - len(head)]
        if len(head) >= RAW_LIMIT:
            break
    return head


def _jsonl_records(chunks: Iterable[bytes], codec: str, limit: int) -> Iterator[Record]:
    count = 0
    for number, data, overlong, _ in _split_lines(chunks, limit):
        if number == 1 and codec == "utf-8" and data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM) :]
        if overlong:
            count += 1
            raw = _cut(data.decode(codec, errors="replace"))
            yield Record(count, number, None, f"line {number}: longer than {limit} bytes", raw)
            continue
        if not data.strip():
            continue
        count += 1
        try:
            text = data.decode(codec)
        except UnicodeDecodeError as exc:
            raw = _cut(data.decode(codec, errors="replace").rstrip("\r"))
            yield Record(count, number, None, f"line {number}: invalid {codec} at byte {exc.start + 1}", raw)
            continue
        text = text.rstrip("\r")
        try:
            value = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            error = f"line {number}: {exc.msg}: column {exc.colno}"
            yield Record(count, number, None, error, _cut(text))
            continue
        except (ValueError, RecursionError) as exc:
            yield Record(count, number, None, f"line {number}: {exc}", _cut(text))
            continue
        if isinstance(value, dict):
            yield Record(count, number, value, None, _cut(text))
        else:
            error = f"line {number}: expected a JSON object, got {_kind(value)}"
            yield Record(count, number, None, error, _cut(text))


# -- json array ----------------------------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _texts(chunks: Iterable[bytes], codec: str) -> Iterator[str]:
    """Decoded text of the chunks, characters split across chunks reassembled; invalid text is a FormatError."""
    decoder = codecs.getincrementaldecoder("utf-8-sig" if codec == "utf-8" else codec)()
    offset = 0
    try:
        for chunk in chunks:
            if text := decoder.decode(chunk):
                yield text
            offset += len(chunk)
        if text := decoder.decode(b"", final=True):
            yield text
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"invalid {codec} near byte {offset + exc.start + 1}: the rest of the array is unreadable"
        ) from None


def _json_records(chunks: Iterable[bytes], codec: str, limit: int) -> Iterator[Record]:
    """A top-level array, element by element, with ``raw_decode`` on a sliding buffer.

    An element that does not decode yet may be incomplete: more text is read
    until the element's text has doubled (so a large element costs linear,
    not quadratic, time) or reached ``limit``, or the object ends.
    """
    texts = iter(_texts(chunks, codec))
    buf, pos = "", 0
    pending: list[str] = []
    pending_len = 0
    need = 1  # characters wanted after pos before parsing again
    eof = False
    state = "start"  # start -> first (element or ']') / element -> after (',' or ']') -> done
    count = 0
    while True:
        while not eof and len(buf) - pos + pending_len < need:
            text = next(texts, None)
            if text is None:
                eof = True
            else:
                pending.append(text)
                pending_len += len(text)
        if pending:
            buf = buf[pos:] + "".join(pending)
            pos, pending, pending_len = 0, [], 0
        pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]  # matches the empty string
        if pos == len(buf):
            if not eof:
                need = 1
                continue
            if state in ("start", "done"):
                return
            raise FormatError(f"truncated JSON array: no closing ']' after {count} element(s)")
        char = buf[pos]
        if state == "start":
            if char != "[":
                raise FormatError(f"not a JSON array: the object starts with {buf[pos : pos + 20]!r}")
            pos += 1
            state = "first"
        elif state == "after":
            if char not in ",]":
                raise FormatError(f"expected ',' or ']' after element {count}, found {buf[pos : pos + 20]!r}")
            pos += 1
            state = "element" if char == "," else "done"
        elif state == "done":
            raise FormatError(f"data after the closing ']' of the array: {buf[pos : pos + 20]!r}")
        elif state == "first" and char == "]":
            pos += 1
            state = "done"
        else:
            held = len(buf) - pos
            try:
                value, end = _DECODER.raw_decode(buf, pos)
            except (ValueError, RecursionError) as exc:
                if held > limit:
                    raise FormatError(f"element {count + 1} is longer than {limit} characters") from None
                if not eof:
                    need = min(2 * held, limit + 1)
                    continue
                message = f"{exc.msg}: column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise FormatError(
                    f"element {count + 1} of the JSON array is malformed ({message}); "
                    f"the rest of the array cannot be located"
                ) from None
            if not eof and end + 2 >= len(buf) and (end == len(buf) or _is_number(value)):
                # A number may go on in the next chunk ("1" | "2", "1." | "5", "1e" | "+5"): decide on the same
                # text whatever the chunking.
                need = end - pos + 3
                continue
            if end - pos > limit:
                raise FormatError(f"element {count + 1} is longer than {limit} characters")
            count += 1
            raw = _cut(buf[pos:end])
            if isinstance(value, dict):
                yield Record(count, 0, value, None, raw)
            else:
                yield Record(count, 0, None, f"element {count}: expected a JSON object, got {_kind(value)}", raw)
            pos = end
            state = "after"


# -- csv -----------------------------------------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "t": True, "f": False}


def _to_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("not an integer")
    return int(text)


def _to_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError("not a decimal number")
    return float(text)


def _to_bool(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise ValueError("not a boolean (true/false, yes/no, 1/0)") from None


def _to_json(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg}: column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


#: The types ``csv_types`` may name, and how a value converts.
CSV_TYPES: dict[str, Callable[[str], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "json": _to_json,
}


def _converter(column: str, kind: str) -> Callable[[str], Any] | None:
    if kind == "str":
        return None
    if kind not in CSV_TYPES:
        raise ValueError(f"csv_types[{column!r}]: unknown type {kind!r}; known: str, {', '.join(CSV_TYPES)}")
    return CSV_TYPES[kind]


class _CsvLines:
    """The object's physical lines as text for ``csv.reader``, remembering those of the row being read.

    ``csv.reader`` pulls lines as it needs them (several for a quoted field
    holding newlines), so the lines fetched since :meth:`start_row` are the
    current row's: their first number, their text (the raw record) and any
    that was not valid text.
    """

    def __init__(self, chunks: Iterable[bytes], codec: str, limit: int) -> None:
        self._lines = _split_lines(chunks, limit)
        self._codec = codec
        self._limit = limit
        self.start_row()

    def start_row(self) -> None:
        self.first_line = 0
        self.bad_lines: list[int] = []
        self._raw: list[str] = []
        self._raw_len = 0
        self._size = 0

    @property
    def raw(self) -> str:
        return _cut("".join(self._raw).rstrip("\r\n"))

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        number, data, overlong, newline = next(self._lines)
        if number == 1 and self._codec == "utf-8" and data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM) :]
        self._size += len(data) + 1
        if overlong or self._size > self._limit:
            start = self.first_line or number
            raise FormatError(f"the CSV row starting at line {start} is longer than {self._limit} bytes")
        if not self.first_line:
            self.first_line = number
        try:
            text = data.decode(self._codec)
        except UnicodeDecodeError:
            text = data.decode(self._codec, errors="replace")
            self.bad_lines.append(number)
        if newline:
            text += "\n"
        if self._raw_len < RAW_LIMIT:
            self._raw.append(text)
            self._raw_len += len(text)
        return text


def _csv_records(
    chunks: Iterable[bytes],
    codec: str,
    limit: int,
    delimiter: str,
    converters: Mapping[str, Callable[[str], Any] | None],
) -> Iterator[Record]:
    lines = _CsvLines(chunks, codec, limit)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    typed: list[Callable[[str], Any] | None] = []
    count = 0
    while True:
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is None:
                raise FormatError(f"unreadable CSV header at line {lines.first_line}: {exc}") from None
            count += 1
            yield Record(count, lines.first_line, None, f"line {lines.first_line}: {exc}", lines.raw)
            continue
        if not row:
            continue  # a blank line
        line = lines.first_line
        if header is None:
            if lines.bad_lines:
                raise FormatError(f"the CSV header (line {line}) is not valid {codec}")
            header = [name.strip() for name in row]
            if "" in header:
                raise FormatError(f"the CSV header (line {line}) has an empty column name: {lines.raw!r}")
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise FormatError(f"the CSV header (line {line}) repeats column(s) {', '.join(duplicates)}")
            typed = [converters.get(name) for name in header]
            continue
        count += 1
        error = _csv_error(row, header, lines.bad_lines, line)
        if error is not None:
            yield Record(count, line, None, error, lines.raw)
            continue
        value: dict[str, Any] = {}
        for name, text, convert in zip(header, row, typed, strict=True):
            if convert is None:
                value[name] = text
                continue
            stripped = text.strip()
            if not stripped:
                value[name] = None
                continue
            try:
                value[name] = convert(stripped)
            except ValueError as exc:
                error = f"line {line}: column {name!r}: {text[:80]!r} is {exc}"
                break
        if error is not None:
            yield Record(count, line, None, error, lines.raw)
        else:
            yield Record(count, line, value, None, lines.raw)


def _csv_error(row: list[str], header: list[str], bad_lines: list[int], line: int) -> str | None:
    if bad_lines:
        return f"line {bad_lines[0]}: not valid text in the row's encoding"
    if len(row) != len(header):
        return f"line {line}: expected {len(header)} fields, got {len(row)}"
    return None
