"""One worker per run: the process running a run holds an OS lock on `<home>/<run>/.lock` for its whole
life. The kernel releases it when that process ends, however it ends, so there is no stale lock to clean
up and no window between checking and claiming. A launcher takes the lock before it starts a detached
worker and hands it down (the worker adopts it), so a second start is refused at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from workbench.core.common import make_home
from workbench.core.errors import RunError
from workbench.core.paths import OutsideError, run_folder

INHERITED_FD = "WORKBENCH_RUN_LOCK_FD"  # set by the launcher for the worker it starts


class RunLock:
    _held: dict[Path, RunLock] = {}  # locks this process holds, by file

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd: int | None = fd

    @staticmethod
    def path_for(home: Path, run_id: str) -> Path:
        return run_folder(home, run_id) / ".lock"  # every way into a run passes here

    @classmethod
    def acquire(cls, home: Path, run_id: str) -> RunLock:
        """Take the run's lock, or refuse with RunError naming the process that holds it."""
        path = cls.path_for(home, run_id)
        make_home(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            if path.is_symlink():  # made after run_folder looked: never write where it points
                raise OutsideError(f"{path} is a symbolic link; remove it") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            deadline = time.monotonic() + 1.0  # the holder writes its pid just after taking the lock
            while not holder.isdigit() and time.monotonic() < deadline:
                time.sleep(0.02)
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise RunError(f"run {run_id} is already running{by}; `workbench cancel {run_id}` stops it") from None
        lock = cls(path, fd)
        lock.claim(os.getpid())
        return lock

    @classmethod
    def inherited(cls, home: Path, run_id: str) -> RunLock | None:
        """The lock a launcher handed to this process, when it is this run's."""
        value = os.environ.pop(INHERITED_FD, "")
        if not value.isdigit():
            return None
        fd = int(value)
        try:
            ours = os.path.samestat(os.fstat(fd), os.stat(cls.path_for(home, run_id)))
        except OSError:
            return None
        if not ours:
            return None
        lock = cls(cls.path_for(home, run_id), fd)
        lock.claim(os.getpid())
        return lock

    @classmethod
    @contextlib.contextmanager
    def held(cls, home: Path, run_id: str) -> Iterator[RunLock]:
        """Hold the run's lock for the block: the one handed down, or a new one. Re-entrant in one process."""
        path = cls.path_for(home, run_id).absolute()
        if path in cls._held:
            yield cls._held[path]
            return
        lock = cls.inherited(home, run_id) or cls.acquire(home, run_id)
        cls._held[path] = lock
        try:
            yield lock
        finally:
            del cls._held[path]
            lock.release()

    def claim(self, pid: int) -> None:
        """Write the holder's pid into the file, for the refusal message."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
