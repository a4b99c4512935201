"""Noticing the storage directory deleted or replaced under a running collector.

SQLite keeps writing into files it holds open even after they are unlinked,
so without this check a collector whose ``storage.directory`` was removed
(or renamed and re-created) would keep acknowledging data that no restart
can find again.  :class:`StorageWatch` records the identity (``st_dev``,
``st_ino``) of the directory and of the databases the queues write, and
holds each open (read-only) so that its inode number cannot be reused by a
file created in its place; it compares them with what the paths name now
once a second, on a thread of its own, and once one has vanished or
changed, keeps a reason that intake reads (a plain attribute: no I/O on the
request path).  From then on every queue's intake refuses with 503 (a
:class:`~collector.errors.BackpressureError`), ``/ready`` fails and
``/health`` says why (docs/operations.md, "Storage deleted or replaced").
It is logged once, at error level.  There is no way back short of a restart:
a directory put back in place is not the one the open files belong to.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

from collector.errors import BackpressureError
from collector.runtime.queue import BatchQueue, QueueItem, QueueStats

log = logging.getLogger("collector.runtime.storage")

#: Clients are told to come back after this long: nothing changes until an operator acts.
RETRY_AFTER_S = 30.0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _hold(path: Path) -> int | None:
    """A read-only descriptor that keeps ``path``'s inode (and so its number) alive."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if path.is_dir() else 0))
    except OSError:
        return None


class StorageWatch:
    """Identity checks of the storage directory and the files the collector keeps open in it."""

    #: seconds between two checks
    interval_s: float = 1.0

    def __init__(self, root: Path, files: Iterable[Path] = ()) -> None:
        self.root = Path(root)
        self.files = list(files)
        #: why the storage is considered lost (None while it is fine)
        self.lost: str | None = None
        self._known: dict[Path, tuple[int, int]] = {}
        self._held: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Record what the directory and files are now, and start checking."""
        self._known = {}
        for path in [self.root, *self.files]:
            fd = _hold(path)
            if fd is None:
                continue
            self._held.append(fd)
            st = os.fstat(fd)
            self._known[path] = (st.st_dev, st.st_ino)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="storage-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        held, self._held = self._held, []
        for fd in held:
            os.close(fd)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.check() is not None:
                return  # lost for good: nothing more to watch

    def check(self) -> str | None:
        """Compare the identities with those recorded; the reason once something changed."""
        if self.lost is not None:
            return self.lost
        for path, known in self._known.items():
            now = _identity(path)
            if now == known:
                continue
            how = "deleted" if now is None else "replaced"
            what = "the directory" if path == self.root else f"{path.relative_to(self.root)}"
            self.lost = f"storage directory {self.root} lost: {what} was {how} while the collector was running"
            log.error(
                "%s; refusing new data (503) and reporting not ready. Data written since then is not durable: "
                "restart the collector on the storage directory you mean it to use",
                self.lost,
                extra={"storage": str(self.root)},
            )
            return self.lost
        return None

    def raise_if_lost(self) -> None:
        if self.lost is not None:
            raise BackpressureError(self.lost, retry_after=RETRY_AFTER_S)

    def health(self) -> dict[str, Any]:
        return {"directory": str(self.root), "lost": self.lost}


class WatchedQueue:
    """A queue whose intake also refuses once the storage is lost; everything else is the queue's.

    The sender side (get, ack, release) is left alone: what the open files
    still hold keeps being delivered while the process runs.
    """

    def __init__(self, inner: BatchQueue, watch: StorageWatch) -> None:
        self.inner = inner
        self.watch = watch

    def open(self) -> None:
        self.inner.open()

    def put(self, events: list[dict[str, Any]]) -> Coroutine[Any, Any, None]:
        # The inner queue's coroutine itself, not one more coroutine around it: this is on every request.
        self.watch.raise_if_lost()
        return self.inner.put(events)

    def check_intake(self) -> None:
        self.watch.raise_if_lost()
        self.inner.check_intake()

    def get(self, timeout: float) -> QueueItem | None:
        return self.inner.get(timeout)

    def get_many(self, timeout: float, max_events: int) -> list[QueueItem]:
        return self.inner.get_many(timeout, max_events)

    def ack(self, *item_ids: int) -> None:
        self.inner.ack(*item_ids)

    def release(self, item_id: int) -> None:
        self.inner.release(item_id)

    def stats(self) -> QueueStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # What a queue offers beyond BatchQueue (db_path, counters added later...).
        return getattr(self.inner, name)
