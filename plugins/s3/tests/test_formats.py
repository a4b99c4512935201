"""Streaming record readers: JSON lines, JSON arrays, CSV, gzip; malformed records, unreadable objects, memory.

Bodies are ``io.BytesIO`` or a ``Trickle`` that hands out a few bytes per
``read`` (as a slow network would), so chunk boundaries fall inside records
and inside multi-byte characters.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from collector_plugin_s3 import formats
from collector_plugin_s3.formats import (
    RAW_LIMIT,
    FormatError,
    Record,
    decompressed,
    format_of,
    is_gzip,
    read_records,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class Trickle(io.RawIOBase):
    """A body that returns at most ``step`` bytes per ``read``, whatever was asked."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._pos = 0
        self._step = step
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        n = self._step if size is None or size < 0 else min(size, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


class Generated(io.RawIOBase):
    """A large object made up on the fly from ``lines``, optionally gzipped, never whole in memory."""

    def __init__(self, lines: Iterator[bytes], gzipped: bool = False) -> None:
        self._lines = lines
        self._buf = bytearray()
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzipped else None
        self._done = False
        self.produced = 0  # uncompressed bytes made

    def read(self, size: int | None = -1) -> bytes:
        size = 1 << 16 if size is None or size < 0 else size
        while len(self._buf) < size and not self._done:
            line = next(self._lines, None)
            if line is None:
                self._done = True
                if self._zip is not None:
                    self._buf += self._zip.flush()
            else:
                self.produced += len(line)
                self._buf += self._zip.compress(line) if self._zip is not None else line
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out


def records(data: bytes, fmt: Any, step: int | None = None, **kwargs: Any) -> list[Record]:
    body = io.BytesIO(data) if step is None else Trickle(data, step)
    return list(read_records(decompressed(body, gzip=False), fmt, **kwargs))


def values(recs: Iterable[Record]) -> list[dict[str, Any] | None]:
    return [r.value for r in recs]


def until_error(it: Iterator[Record]) -> tuple[list[Record], FormatError]:
    """The records yielded before the reader raised FormatError, and the error."""
    got: list[Record] = []
    with pytest.raises(FormatError) as info:
        for rec in it:
            got.append(rec)
    return got, info.value


# -- format and compression choice -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fmt"),
    [
        ("a/usage.jsonl", "jsonl"),
        ("a/usage.NDJSON", "jsonl"),
        ("usage.jsonlines.gz", "jsonl"),
        ("x.y/usage.json", "json"),
        ("usage.json.gzip", "json"),
        ("2026/01/usage.CSV.GZ", "csv"),
    ],
)
def test_format_of_by_suffix(key: str, fmt: str) -> None:
    assert format_of(key) == fmt


def test_format_of_unknown_suffix_names_the_key_and_the_known_suffixes() -> None:
    for key in ("logs/usage.parquet", "logs/usage.gz", "logs.d/README"):
        with pytest.raises(FormatError) as info:
            format_of(key)
        assert key in str(info.value)
        assert ".jsonl" in str(info.value) and ".csv" in str(info.value)


def test_a_configured_format_wins_over_the_suffix() -> None:
    assert format_of("exports/usage.txt", "csv") == "csv"
    assert format_of("usage.json", "jsonl") == "jsonl"


@pytest.mark.parametrize(
    ("key", "encoding", "compression", "expected"),
    [
        ("usage.jsonl.gz", None, "auto", True),
        ("usage.jsonl.GZIP", None, "auto", True),
        ("usage.jsonl", "gzip", "auto", True),
        ("usage.jsonl", "identity, x-gzip", "auto", True),
        ("usage.jsonl", None, "auto", False),
        ("usage.jsonl", "br", "auto", False),
        ("usage.jsonl", None, "gzip", True),
        ("usage.jsonl.gz", "gzip", "none", False),
    ],
)
def test_is_gzip(key: str, encoding: str | None, compression: Any, expected: bool) -> None:
    assert is_gzip(key, encoding, compression) is expected


# -- gzip ------------------------------------------------------------------------------------------------------------

LINES = b"".join(json.dumps({"n": i, "who": "caf\u00e9 \u2603"}).encode() + b"\n" for i in range(500))


@pytest.mark.parametrize(("key", "encoding"), [("u.jsonl.gz", None), ("u.jsonl", "gzip")])
def test_gzip_by_suffix_or_content_encoding_reads_every_record(key: str, encoding: str | None) -> None:
    body = Trickle(gzip.compress(LINES), step=7)
    recs = list(read_records(decompressed(body, is_gzip(key, encoding)), format_of(key)))
    assert [r.value for r in recs] == [{"n": i, "who": "caf\u00e9 \u2603"} for i in range(500)]


def test_concatenated_gzip_members_and_zero_padding_read_as_one_stream() -> None:
    a, b, c = LINES[:3000], LINES[3000:9000], LINES[9000:]
    data = gzip.compress(a) + gzip.compress(b) + b"\0" * 5 + gzip.compress(c) + b"\0" * 3
    for step in (1, 2, 13, 1 << 16):
        out = b"".join(decompressed(Trickle(data, step), gzip=True, chunk_size=512))
        assert out == LINES


def test_gunzipped_chunks_are_bounded_even_for_a_highly_compressed_body() -> None:
    data = gzip.compress(b"0" * 5_000_000)
    assert len(data) < 10_000
    sizes = [len(chunk) for chunk in decompressed(io.BytesIO(data), gzip=True, chunk_size=4096)]
    assert sum(sizes) == 5_000_000
    assert max(sizes) <= 4096


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"plain": "json"}\n', "does not start with the gzip magic"),
        (b"\x1f", "stray byte"),
        (gzip.compress(LINES)[:-20], "truncated"),
        (gzip.compress(b"x") + b"trailing junk", "at byte"),
        (b"\x1f\x8b" + b"\xff" * 40, "corrupt"),
    ],
)
def test_a_body_that_is_not_gzip_is_a_format_error(data: bytes, words: str) -> None:
    with pytest.raises(FormatError) as info:
        list(decompressed(Trickle(data, 5), gzip=True))
    assert str(info.value).startswith("not gzip:")
    assert words in str(info.value)


def test_an_empty_body_has_no_records_compressed_or_not() -> None:
    for gz in (True, False):
        for fmt in ("jsonl", "json", "csv"):
            assert list(read_records(decompressed(io.BytesIO(b""), gz), fmt)) == []


# -- JSON lines ------------------------------------------------------------------------------------------------------


def test_jsonl_malformed_lines_in_the_middle_are_reported_and_the_rest_is_read() -> None:
    data = b'{"a": 1}\n\n  \n[1, 2]\n{"a": 2,}\n7\n\xff\xfe{}\n{"x": NaN}\n{"a": 3}\r\n{"a": 4}'
    recs = records(data, "jsonl", step=3)
    assert [(r.number, r.line) for r in recs] == [(1, 1), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9), (8, 10)]
    assert values(recs) == [{"a": 1}, None, None, None, None, None, {"a": 3}, {"a": 4}]
    errors = {r.line: r.error for r in recs if r.error}
    assert errors[4] == "line 4: expected a JSON object, got an array"
    assert errors[5] is not None and errors[5].startswith("line 5: Expecting property name") and "column 9" in errors[5]
    assert errors[6] == "line 6: expected a JSON object, got a number"
    assert errors[7] is not None and "invalid utf-8" in errors[7]
    assert errors[8] is not None and "NaN" in errors[8]
    assert recs[2].raw == '{"a": 2,}'
    assert recs[6].raw == '{"a": 3}'


def test_jsonl_utf8_bom_is_ignored() -> None:
    assert values(records(b'\xef\xbb\xbf{"a": 1}\n', "jsonl")) == [{"a": 1}]


def test_jsonl_a_huge_line_is_malformed_and_the_next_lines_still_read() -> None:
    huge = b'{"pad": "' + b"x" * 300_000 + b'"}'
    data = b'{"a": 1}\n' + huge + b'\n{"a": 2}\n' + huge
    for step in (1000, 1 << 16):
        recs = records(data, "jsonl", step=step, max_record_bytes=100_000)
        assert values(recs) == [{"a": 1}, None, {"a": 2}, None]
        assert recs[1].error == "line 2: longer than 100000 bytes"
        assert recs[1].raw.startswith('{"pad": "xxx') and len(recs[1].raw) == RAW_LIMIT
        assert (recs[3].number, recs[3].line) == (4, 4)


def test_jsonl_latin1_encoding() -> None:
    data = '{"who": "caf\u00e9"}\n'.encode("latin-1")
    assert values(records(data, "jsonl", encoding="latin-1")) == [{"who": "caf\u00e9"}]
    with pytest.raises(ValueError, match="ASCII-compatible"):
        records(data, "jsonl", encoding="utf-16")


# -- JSON array ------------------------------------------------------------------------------------------------------


def test_json_array_elements_stream_one_at_a_time() -> None:
    data = b' [ {"a": 1}, {"b": [1, {"c": "]"}]} ,\n"text", {"d": 12.5e1}, 12 ] \n'
    recs = records(data, "json", step=2)
    assert values(recs) == [{"a": 1}, {"b": [1, {"c": "]"}]}, None, {"d": 125.0}, None]
    assert [r.number for r in recs] == [1, 2, 3, 4, 5]
    assert all(r.line == 0 for r in recs)
    assert recs[2].error == "element 3: expected a JSON object, got a string"
    assert recs[4].raw == "12"


def test_json_element_before_the_end_of_input_is_yielded_before_the_rest_arrives() -> None:
    def chunks() -> Iterator[bytes]:
        yield b'[{"a": 1}, {"a": 2}, '
        raise AssertionError("read past what the first records needed")

    it = read_records(chunks(), "json")
    assert next(it).value == {"a": 1}


def test_json_a_malformed_element_raises_after_the_records_before_it() -> None:
    data = b'[{"a": 1}, {"a": 2}, {"a": oops}, {"a": 4}]'
    got, error = until_error(read_records(decompressed(Trickle(data, 4), False), "json"))
    assert values(got) == [{"a": 1}, {"a": 2}]
    assert "element 3" in str(error) and "cannot be located" in str(error)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"a": 1}', "not a JSON array"),
        (b'[{"a": 1}, {"a": 2}', "truncated"),
        (b'[{"a": 1}] [{"a": 2}]', "after the closing"),
        (b'[{"a": 1} {"a": 2}]', "expected ',' or ']'"),
        (b'[{"a": 1},]', "element 2"),
        (b'[{"a": "\xff"}]', "invalid utf-8"),
    ],
)
def test_json_unreadable_objects(data: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        records(data, "json", step=3)


def test_json_an_element_longer_than_the_limit_is_a_format_error() -> None:
    data = b'[{"a": 1}, {"pad": "' + b"x" * 50_000 + b'"}]'
    got, error = until_error(read_records(decompressed(Trickle(data, 1000), False), "json", max_record_bytes=10_000))
    assert values(got) == [{"a": 1}]
    assert "element 2 is longer than 10000" in str(error)


def test_json_a_large_element_in_small_chunks_is_decoded_a_few_times_not_once_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    class Counting(json.JSONDecoder):
        def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
            nonlocal calls
            calls += 1
            return super().raw_decode(s, idx)

    monkeypatch.setattr(formats, "_DECODER", Counting())
    data = b'[{"pad": "' + b"x" * 500_000 + b'"}, {"a": 1}]'
    recs = records(data, "json", step=100)
    assert [r.value["a"] if r.value and "a" in r.value else None for r in recs] == [None, 1]
    assert calls < 40, f"{calls} decode attempts"


def test_json_empty_array_and_whitespace_have_no_records() -> None:
    assert records(b" [ ] ", "json") == []
    assert records(b" \n ", "json") == []


# -- CSV -------------------------------------------------------------------------------------------------------------

CSV_TYPES = {"qty": "int", "price": "float", "ok": "bool", "meta": "json", "note": "str"}


def test_csv_rows_become_typed_dicts() -> None:
    data = (
        b"id, qty,price,ok,meta,note\r\n"
        b'a,3,1.5,true,"{""k"": [1]}",hello\r\n'
        b"b,,,,,\r\n"
        b'c,-7,2e3,No,null,"two\r\nlines"\r\n'
        b"\r\n"
        b"d,+0,.5,1,42,last"
    )
    recs = records(data, "csv", step=5, csv_types=CSV_TYPES)
    assert values(recs) == [
        {"id": "a", "qty": 3, "price": 1.5, "ok": True, "meta": {"k": [1]}, "note": "hello"},
        {"id": "b", "qty": None, "price": None, "ok": None, "meta": None, "note": ""},
        {"id": "c", "qty": -7, "price": 2000.0, "ok": False, "meta": None, "note": "two\r\nlines"},
        {"id": "d", "qty": 0, "price": 0.5, "ok": True, "meta": 42, "note": "last"},
    ]
    assert [(r.number, r.line) for r in recs] == [(1, 2), (2, 3), (3, 4), (4, 7)]
    assert recs[2].raw == 'c,-7,2e3,No,null,"two\r\nlines"'


def test_csv_malformed_rows_name_the_line_and_column_and_the_rest_is_read() -> None:
    data = (
        b"id,qty,price,ok,meta\n"
        b"a,1,1,true,{}\n"
        b"b,1_000,1,true,{}\n"
        b"c,1,nan,true,{}\n"
        b"d,1,1,maybe,{}\n"
        b"e,1,1,true,{bad\n"
        b"f,1,1\n"
        b"g,1,1,true,{},extra\n"
        b"h,2,\xff,true,{}\n"
        b"i,3,3,false,[]\n"
    )
    recs = records(data, "csv", step=4, csv_types=CSV_TYPES)
    assert [r.value["id"] if r.value else None for r in recs] == ["a", None, None, None, None, None, None, None, "i"]
    errors = [r.error for r in recs[1:-1]]
    assert errors[0] == "line 3: column 'qty': '1_000' is not an integer"
    assert errors[1] == "line 4: column 'price': 'nan' is not a decimal number"
    assert errors[2] is not None and errors[2].startswith("line 5: column 'ok': 'maybe' is not a boolean")
    assert errors[3] is not None and errors[3].startswith("line 6: column 'meta': '{bad' is not valid JSON")
    assert errors[4] == "line 7: expected 5 fields, got 3"
    assert errors[5] == "line 8: expected 5 fields, got 6"
    assert errors[6] is not None and errors[6].startswith("line 9: not valid text")
    assert recs[5].raw == "f,1,1"


def test_csv_delimiter_and_untyped_empty_values() -> None:
    recs = records(b"a;b\n;x\n", "csv", csv_delimiter=";")
    assert values(recs) == [{"a": "", "b": "x"}]


@pytest.mark.parametrize(
    ("header", "words"),
    [(b"a,,c", "empty column name"), (b"a,b,a", "repeats column"), (b"a,\xff", "not valid")],
)
def test_csv_a_header_that_cannot_be_one_is_a_format_error(header: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        records(header + b"\n1,2,3\n", "csv")


def test_csv_a_row_longer_than_the_limit_is_a_format_error_after_the_rows_before() -> None:
    data = b'a,b\n1,2\n3,"' + b"y\n" * 40_000 + b'"\n5,6\n'
    got, error = until_error(read_records(decompressed(Trickle(data, 999), False), "csv", max_record_bytes=10_000))
    assert values(got) == [{"a": "1", "b": "2"}]
    assert "line 3" in str(error) and "longer than 10000" in str(error)


def test_invalid_arguments_are_rejected_at_once() -> None:
    with pytest.raises(ValueError, match="unknown type"):
        read_records([], "csv", csv_types={"a": "decimal"})
    with pytest.raises(ValueError, match="csv_delimiter"):
        read_records([], "csv", csv_delimiter=",,")
    with pytest.raises(ValueError, match="unknown format"):
        read_records([], "xml")  # type: ignore[arg-type]


# -- any chunking gives the same records (property) ------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_rows = st.lists(st.tuples(_text, st.integers(-(10**6), 10**6), st.booleans()), min_size=0, max_size=8)


def _object(rows: list[tuple[str, int, bool]], fmt: str, bad: bool) -> bytes:
    items = [{"who": who, "qty": qty, "ok": ok} for who, qty, ok in rows]
    if fmt == "jsonl":
        lines = [json.dumps(item, ensure_ascii=False) for item in items]
        if bad:
            lines.insert(len(lines) // 2, '{"broken": ')
        return "\n".join(lines).encode()
    if fmt == "json":
        parts = [json.dumps(item, ensure_ascii=False) for item in items]
        if bad:
            parts.insert(len(parts) // 2, "1.5e3")
        return ("[" + ",\n ".join(parts) + "]").encode()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["who", "qty", "ok"])
    for who, qty, ok in rows:
        writer.writerow([who, qty, "true" if ok else "false"])
    if bad:
        out.write("only,two\n")
    return out.getvalue().encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=_rows,
    fmt=st.sampled_from(["jsonl", "json", "csv"]),
    bad=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
)
def test_any_chunking_gives_the_same_records(
    rows: list[tuple[str, int, bool]], fmt: Any, bad: bool, cuts: list[int]
) -> None:
    data = _object(rows, fmt, bad)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    types = {"qty": "int", "ok": "bool"}
    whole = list(read_records([data], fmt, csv_types=types))
    assert list(read_records(pieces, fmt, csv_types=types)) == whole
    good = [r.value for r in whole if r.value is not None]
    assert good == [{"who": w, "qty": q, "ok": o} for w, q, o in rows]
    assert sum(r.value is None for r in whole) == int(bad)


# -- memory: streaming, never whole ------------------------------------------------------------------------------------


def _big_lines(total: int) -> Iterator[bytes]:
    pad = "u" * 900
    made, i = 0, 0
    while made < total:
        line = json.dumps({"n": i, "pad": pad}).encode() + b"\n"
        made += len(line)
        i += 1
        yield line


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_50_mb_object_streams_in_a_few_mb(gzipped: bool) -> None:
    body = Generated(_big_lines(50 * 1024 * 1024), gzipped=gzipped)
    count = last = 0
    tracemalloc.start()
    try:
        for rec in read_records(decompressed(body, gzip=gzipped), "jsonl"):
            assert rec.value is not None
            count += 1
            last = rec.value["n"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body.produced >= 50 * 1024 * 1024
    assert count == last + 1 > 50_000
    print(f"peak {peak} bytes")
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"


def test_a_huge_json_array_and_a_huge_line_stream_in_a_few_mb() -> None:
    def array() -> Iterator[bytes]:
        yield b"["
        for i, line in enumerate(_big_lines(20 * 1024 * 1024)):
            yield (b"," if i else b"") + line
        yield b"]"

    def one_line() -> Iterator[bytes]:
        yield b'{"pad": "'
        for _ in range(20 * 1024):
            yield b"x" * 1024
        yield b'"}\n{"a": 1}\n'

    tracemalloc.start()
    try:
        n = sum(1 for _ in read_records(decompressed(Generated(array()), False), "json"))
        tail = [r.value for r in read_records(decompressed(Generated(one_line()), False), "jsonl")]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n > 20_000
    assert tail == [None, {"a": 1}]
    print(f"peak {peak} bytes")
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
