"""One process per storage directory: an exclusive ``flock`` on ``<storage>/collector.lock``.

Two collectors on one directory would both claim the same queue rows and
fight over watermarks, so ``collector run`` (and ``collector queue drain``,
which moves queue rows) holds this lock for as long as it runs
(docs/operations.md, "One collector per storage directory").  The file holds
the holder's PID, so the one refused can name it.  The kernel drops the lock
when the holder exits, however it exits (kill -9 included): a stale file never
blocks a restart.  The file itself is never deleted: deleting it while another
process waits on it would let two processes hold "the" lock on two files.

Commands that only read or that are built for running beside a collector
(``collector queue list``, ``collector dlq ...``, ``collector backfill``, which
uses its own directory under ``backfill/``) do not take it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path


class StorageLockedError(Exception):
    """Another process holds the storage directory; the message names its PID."""

    def __init__(self, directory: Path, holder: int | None) -> None:
        self.directory = directory
        self.holder = holder
        who = f"another collector (pid {holder})" if holder else "another collector (pid unknown)"
        super().__init__(
            f"storage directory {directory} is in use by {who}; "
            "stop it first, or give this collector a storage.directory of its own"
        )


class StorageLock:
    """Exclusive, non-blocking lock on a storage directory; :meth:`release` (or exit) frees it."""

    def __init__(self, directory: Path, lock_file: Path | None = None) -> None:
        self.directory = Path(directory)
        self.path = lock_file or self.directory / "collector.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StorageLockedError` (held) / :class:`OSError` (cannot create)."""
        if self._fd is not None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot lock storage directory {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageLockedError(self.directory, holder) from None
            raise OSError(exc.errno, f"cannot lock storage directory {self.directory}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock is what matters; the PID is a courtesy to the one refused
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> StorageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
