"""One writer per directory: an advisory lock held for the life of a run or sweep (docs/harness.md "Run directory").

`DirLock(path)` takes an exclusive ``fcntl.flock`` on ``path/.lock`` without waiting. The lock file holds
the holder's pid, host, start time and command line (JSON), written after the lock is taken, so a
process that finds the directory locked can name its holder. The kernel drops a ``flock`` when its
process dies (``kill -9`` included), so a lock file left behind by a dead process is *stale*: the next
process takes the lock, reports the previous holder as stale and overwrites the record.

The lock file is removed on release. Removing a lock file is racy in general (a contender may have opened
the old inode); `DirLock.acquire` closes that race by checking, once locked, that ``path/.lock`` is still
the inode it locked, and starting over if not.

``flock`` is local to one machine's kernel: on NFS it may not exclude a process on another host (the
holder record still names the host). The lock is advisory: it binds muonlab processes, not ``rm``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .rundir import LOCK_FILE, RunDirError


class LockError(RunDirError):
    """The directory is locked by another live process."""

    def __init__(self, message: str, holder: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.holder = holder


def holder_record() -> dict[str, Any]:
    """What the lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
    }


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 on host h since 2026-01-01T00:00:00+00:00`` (or a note that the record is missing)."""
    if not holder:
        return "a process whose record is not written yet"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('started')}"


def read_holder(lock_path: Path) -> dict[str, Any] | None:
    """The JSON record in a lock file, or None when it is absent, empty or torn."""
    try:
        text = Path(lock_path).read_text()
    except OSError:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


class DirLock:
    """An exclusive, non-blocking advisory lock on ``directory`` (created if missing).

    ``what`` names the directory's role in messages ("run dir", "sweep dir"). After `acquire`,
    ``created_dir`` says whether this lock created the directory and ``stale`` holds the record of a dead
    previous holder that was taken over (None if the lock file was absent or unreadable).
    """

    def __init__(self, directory: str | Path, *, what: str = "directory") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self.created_dir = False
        self.stale: dict[str, Any] | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        """Take the lock or raise `LockError` naming the directory and the holder. Never waits."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held by this object")
        if self.directory.exists() and not self.directory.is_dir():
            raise RunDirError(f"{self.directory}: exists and is not a directory")
        try:
            if not self.directory.exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                self.created_dir = True
            return self._acquire()
        except OSError as exc:
            raise RunDirError(f"{self.directory}: cannot take the lock {self.path} ({exc})") from None

    def _acquire(self) -> DirLock:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._wait_for_record()
                raise LockError(
                    f"{self.directory}: {self.what} is in use by {describe_holder(holder)} "
                    f"(lock {self.path}); wait for it to finish or stop it, then run again",
                    holder,
                ) from None
            if self._same_inode(fd):
                break
            os.close(fd)  # the file was removed (released) between our open and flock: start over
        else:  # pragma: no cover - needs ten consecutive lost races
            raise LockError(f"{self.directory}: could not take the lock {self.path}", None)
        try:
            # a record left in the file is a dead holder's: a live one removes the file when it releases
            previous = read_holder(self.path)
            self.stale = previous if previous and previous.get("pid") is not None else None
            blob = (json.dumps(holder_record()) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, blob, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _same_inode(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _wait_for_record(self, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The holder's record; it writes it right after locking, so give it a moment if it is empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            rec = read_holder(self.path)
            if rec is not None or time.monotonic() > deadline:
                return rec
            time.sleep(0.05)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); a directory this lock created and nobody
        wrote into is removed too, so a refused or failed start leaves nothing behind."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)  # closing the last descriptor drops the flock
        if self.created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.directory.rmdir()

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
