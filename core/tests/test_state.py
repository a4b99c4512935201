"""The state store: namespaces, batched writes, expiry, bounds, reopening, concurrency."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from collector.errors import BackpressureError
from collector.state import StateFullError, StateStore


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore(tmp_path / "state.sqlite")
    yield s
    s.close()


def test_values_round_trip_as_bytes_or_json(store: StateStore) -> None:
    store.put("ns", "raw", b"\x00\x01")
    store.put("ns", "doc", {"a": [1, 2.5, None], "b": "x"})
    store.put("ns", "num", 7)
    assert store.get("ns", "raw") == b"\x00\x01"
    assert store.get("ns", "doc") == {"a": [1, 2.5, None], "b": "x"}
    assert store.get("ns", "num") == 7
    assert store.get("ns", "missing", "dflt") == "dflt"


def test_namespaces_are_separate(store: StateStore) -> None:
    store.put("a", "k", 1)
    store.put("b", "k", 2)
    assert (store.get("a", "k"), store.get("b", "k")) == (1, 2)
    assert store.delete("a", "k")
    assert store.get("a", "k") is None and store.get("b", "k") == 2
    assert store.count("a") == 0 and store.count("b") == 1 and store.count() == 1


def test_put_many_is_one_transaction(store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom:  # orjson cannot serialise it: the third item fails after two were written
        pass

    with pytest.raises(TypeError):
        store.put_many("ns", [("a", 1), ("b", 2), ("c", Boom())])
    assert store.count() == 0, "a failed batch must leave nothing behind"
    store.put_many("ns", [("a", 1), ("b", 2), ("c", 3)])
    assert store.get_many("ns", ["a", "b", "c", "zz"]) == {"a": 1, "b": 2, "c": 3}
    assert store.delete_many("ns", ["a", "c", "nope"]) == 2
    assert store.get_many("ns", ["a", "b", "c"]) == {"b": 2}


def test_batches_beyond_one_statement(store: StateStore) -> None:
    keys = [f"k{i:05d}" for i in range(1234)]
    store.put_many("ns", [(k, i) for i, k in enumerate(keys)])
    assert len(store.get_many("ns", keys)) == 1234
    assert store.delete_many("ns", keys[:1000]) == 1000
    assert store.count() == 234


def test_transaction_reads_its_own_writes_and_rolls_back(store: StateStore) -> None:
    store.put("ns", "counter", 1)
    with store.transaction() as tx:
        tx.put("ns", "counter", tx.get("ns", "counter") + 1)
        assert tx.get("ns", "counter") == 2
    assert store.get("ns", "counter") == 2
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put("ns", "counter", 99)
        tx.delete("ns", "counter")
        raise RuntimeError("abort")
    assert store.get("ns", "counter") == 2


def test_expired_entries_read_as_absent_and_purge_is_bounded(store: StateStore) -> None:
    store.put_many("ns", [(f"k{i}", i, 100.0 + i) for i in range(10)] + [("forever", "x")])
    assert store.get("ns", "k3", now=103.0) is None  # expired at 103
    assert store.get("ns", "k3", now=102.9) == 3
    assert store.get("ns", "k3") == 3  # without now nothing is expired
    assert set(store.get_many("ns", ["k0", "k5", "forever"], now=104.5)) == {"k5", "forever"}
    assert store.purge_expired(200.0, limit=4) == 4  # soonest first
    assert store.get_many("ns", ["k0", "k1", "k2", "k3", "k4"]) == {"k4": 4}
    assert store.purge_expired(200.0) == 6
    assert store.count() == 1 and store.get("ns", "forever") == "x"
    assert store.purge_expired(200.0) == 0


def test_items_in_key_order_with_range_and_limit(store: StateStore) -> None:
    store.put_many("ns", [("b", 2), ("a", 1), ("d", 4, 50.0), ("c", 3)])
    store.put("other", "a", 0)
    assert [e.key for e in store.items("ns")] == ["a", "b", "c", "d"]
    assert [e.key for e in store.items("ns", start="b", end="d")] == ["b", "c"]
    assert [e.key for e in store.items("ns", limit=2)] == ["a", "b"]
    assert [e.key for e in store.items("ns", now=60.0)] == ["a", "b", "c"]
    entry = store.items("ns", start="d")[0]
    assert (entry.value, entry.expires) == (4, 50.0)
    assert [(e.key, e.value) for e in store.iterate("ns", page=3)] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


def test_full_store_refuses_by_default_and_rolls_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", max_keys=3)
    store.put_many("ns", [("a", 1), ("b", 2), ("c", 3)])
    store.put("ns", "a", 10)  # replacing an entry needs no room
    with pytest.raises(StateFullError) as exc:
        store.put_many("ns", [("d", 4), ("e", 5)])
    assert isinstance(exc.value, BackpressureError) and exc.value.retry_after
    assert store.count() == 3 and store.get("ns", "d") is None and store.get("ns", "a") == 10
    store.close()


def test_full_store_makes_room_from_expired_first_then_evicts_soonest_expiring(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", max_keys=4, on_full="evict")
    store.put_many("ns", [("keep", "no expiry"), ("old", 1, 10.0), ("mid", 2, 20.0), ("late", 3, 30.0)])
    # "old" expired at now=15: it makes room without counting as an eviction
    assert store.put("ns", "new1", 4, expires=40.0, now=15.0) == 0
    assert store.get("ns", "old") is None
    # nothing expired: the entry closest to expiry ("mid") is evicted and counted
    assert store.put_many("ns", [("new2", 5, 50.0)], now=15.0) == 1
    assert store.get("ns", "mid") is None and store.evicted == 1
    assert set(e.key for e in store.items("ns")) == {"keep", "late", "new1", "new2"}
    store.close()


def test_entries_without_expiry_are_never_evicted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite", max_keys=2, on_full="evict")
    store.put_many("ns", [("w1", 1), ("w2", 2)])
    with pytest.raises(StateFullError):
        store.put("ns", "w3", 3)
    assert store.count() == 2
    store.close()


def test_count_survives_upserts_and_deletes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.put_many("ns", [("a", 1), ("b", 2)])
    store.put_many("ns", [("a", 3), ("b", 4), ("c", 5)])
    store.delete("ns", "b")
    store.delete("ns", "b")
    assert store.count() == 2 == store.count("ns")
    store.close()


def test_reopen_keeps_everything_and_uses_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.sqlite"
    store = StateStore(path)
    assert store.synchronous() == 2  # FULL
    store.put_many("ns", [("a", {"x": 1}, 123.0), ("b", b"raw")])
    store.close()
    again = StateStore(path, max_keys=10)
    assert again.get_entry("ns", "a").expires == 123.0
    assert again.get("ns", "a") == {"x": 1} and again.get("ns", "b") == b"raw"
    assert again.count() == 2
    again.close()
    relaxed = StateStore(path, durability="relaxed")
    assert relaxed.synchronous() == 1  # NORMAL
    relaxed.close()


def test_two_handles_share_one_file(tmp_path: Path) -> None:
    """Another process (here: another connection) sees every write; nothing is cached in memory."""
    path = tmp_path / "state.sqlite"
    one, two = StateStore(path, max_keys=3), StateStore(path, max_keys=3)
    one.put_many("ns", [("a", 1), ("b", 2)])
    assert two.get("ns", "a") == 1
    two.put("ns", "c", 3)
    with pytest.raises(StateFullError):
        one.put("ns", "d", 4)  # the count is in the file, not in memory
    one.close()
    two.close()


def test_concurrent_read_modify_write_from_threads(store: StateStore) -> None:
    store.put("ns", "n", 0)

    def work() -> None:
        for _ in range(50):
            with store.transaction() as tx:
                tx.put("ns", "n", tx.get("ns", "n") + 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("ns", "n") == 200


def test_an_unreadable_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    store = StateStore(path)
    store.put("ns", "a", 1)
    assert store.get("ns", "a") == 1
    store.close()
    assert len(list(tmp_path.glob("state.sqlite.corrupt-*"))) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone()[0] == 1


def test_over_the_bound_updates_and_deletes_still_work(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    big = StateStore(path, max_keys=5)
    big.put_many("ns", [(f"k{i}", i) for i in range(5)])
    big.close()
    small = StateStore(path, max_keys=3)  # the bound was lowered below what is stored
    assert small.put("ns", "k0", 100) == 0  # replacing adds nothing: allowed
    assert small.delete("ns", "k1")
    with pytest.raises(StateFullError):
        small.put("ns", "new", 1)  # adding is not
    assert small.get("ns", "k0") == 100 and small.count() == 4
    small.close()


def test_a_locked_file_is_reported_not_moved_aside(tmp_path: Path) -> None:
    """'database is locked' is another process at work, not damage: the data must stay where it is."""
    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    store.put("ns", "kept", 1)
    store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. a second collector process in the middle of a write
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            StateStore(path, busy_timeout=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert list(tmp_path.glob("*.corrupt-*")) == []
    again = StateStore(path)
    assert again.get("ns", "kept") == 1
    again.close()


def test_a_full_disk_refuses_the_write_and_keeps_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    store = StateStore(path)
    store.put("ns", "kept", 1)
    # Another handle on the file that may not grow it: SQLite's own SQLITE_FULL.
    limited = StateStore(path, on_connect=lambda conn: conn.execute("PRAGMA max_page_count=1"))
    with pytest.raises(StateFullError) as refused:
        limited.put_many("ns", [(f"k{i}", "x" * 1000) for i in range(200)])
    assert isinstance(refused.value, BackpressureError) and refused.value.retry_after
    assert limited.count() == 1 and limited.get("ns", "kept") == 1
    limited.close()
    store.put_many("ns", [(f"k{i}", "x" * 1000) for i in range(200)])  # room again: writes go through
    assert store.count() == 201
    store.close()
