"""Events that carry the client's own JSON (collector.events.EncodedEvents) and the queues that store it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from collector.builtin.http.intake import json_inside, parse_events
from collector.events import EncodedEvents, encoding_of
from collector.runtime.queue.memory import MemoryQueue
from collector.runtime.queue.sqlite import DurableQueue
from collector.telemetry import hot_inc


def ev(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "s", "type": "t", "subject": "c", "data": {"n": i}}


@pytest.mark.parametrize(
    "body",
    [
        b'[{"id":"a"},{"id":"b"}]',
        b' \n\t[ {"id" : "a"} ,\r\n {"id":"b"} ] \n',
        b'{"id": "a"}',
        b'  {"id": "a"}\n',
        b'[{"id":"a","data":{"x":[1,2,{"y":"]"}]}}]',
    ],
)
def test_the_inside_of_a_body_is_exactly_its_events(body: bytes) -> None:
    events = parse_events(body, "application/json")
    inside = json_inside(body)
    assert orjson.loads(b"[" + inside + b"]") == events
    # as the durable queue frames it
    assert orjson.loads(b'{"t":1.5,"n":%d,"e":[%s]}' % (len(events), inside))["e"] == events


@pytest.mark.parametrize(
    "change",
    [
        lambda x: x.append({"id": "z"}),
        lambda x: x.extend([{"id": "z"}]),
        lambda x: x.insert(0, {"id": "z"}),
        lambda x: x.pop(),
        lambda x: x.remove(x[0]),
        lambda x: x.clear(),
        lambda x: x.sort(key=lambda e: e["id"], reverse=True),
        lambda x: x.reverse(),
        lambda x: x.__setitem__(0, {"id": "z"}),
        lambda x: x.__delitem__(0),
        lambda x: x.__iadd__([{"id": "z"}]),
        lambda x: x.__imul__(2),
    ],
)
def test_changing_the_list_drops_the_encoding(change: Any) -> None:
    events = EncodedEvents([{"id": "a"}, {"id": "b"}], b'{"id":"a"},{"id":"b"}')
    assert encoding_of(events) == b'{"id":"a"},{"id":"b"}'
    change(events)
    assert encoding_of(events) is None
    assert isinstance(events, list)


def test_only_encoded_events_have_an_encoding() -> None:
    assert encoding_of([{"id": "a"}]) is None
    assert encoding_of(EncodedEvents([], None)) is None
    # a copy is a plain list: nothing downstream can pair the bytes with other events
    assert encoding_of(list(EncodedEvents([{"id": "a"}], b'{"id":"a"}'))) is None


async def test_the_durable_queue_stores_the_clients_bytes_and_reads_back_the_events(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q")
    queue.open()
    try:
        sent = b' [ {"id":"a", "data": {"n": 1}} ,\n {"id":"b","data":{"n":2}} ] '
        plain = [ev(3)]
        await asyncio.gather(
            queue.put(EncodedEvents(parse_events(sent, "application/json"), json_inside(sent))), queue.put(plain)
        )
        conn = sqlite3.connect(tmp_path / "q" / f"{queue.name}.db")
        try:
            (stored,) = conn.execute(f"SELECT data FROM {queue._require_storage()._table_name}").fetchone()
        finally:
            conn.close()
        assert b' {"id":"a", "data": {"n": 1}} ,\n {"id":"b","data":{"n":2}} ' in stored  # as the client sent it
        item = queue.get(1.0)
        assert item is not None
        assert sorted(item.events, key=lambda e: e["id"]) == [
            {"id": "a", "data": {"n": 1}},
            {"id": "b", "data": {"n": 2}},
            ev(3),
        ]
        assert item.size_bytes == len(stored)
    finally:
        queue.close()


async def test_the_memory_queue_counts_the_encoding(tmp_path: Path) -> None:
    queue = MemoryQueue(max_bytes=10_000)
    events = [ev(1), ev(2)]
    encoded = EncodedEvents(events, orjson.dumps(events)[1:-1])
    await queue.put(encoded)
    item = queue.get(0)
    assert item is not None and item.events == events
    assert item.size_bytes == len(orjson.dumps(events))
    assert encoding_of(item.events) is None


def test_hot_inc_moves_the_exported_value() -> None:
    registry = CollectorRegistry()
    counter = Counter("hot_things", "Things.", ["kind"], registry=registry)
    add = hot_inc(counter.labels(kind="a"))
    add(1)
    add(41)
    assert registry.get_sample_value("hot_things_total", {"kind": "a"}) == 42
