"""Run workers: the process that runs a recipe's stages. Detached ones run in their own session, so they
keep going when the terminal (or the SSH connection, or the TUI) that started them goes away; the run
store is how anyone sees them again. Every run writes its worker's output to `<home>/<run>/worker.log`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import faulthandler
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from workbench.core.common import PYTHON, child_env, make_home
from workbench.core.paths import no_follow
from workbench.core.store import Store, is_alive
from workbench.pipeline.runlock import INHERITED_FD, RunLock

CLI = [*PYTHON, "-m", "workbench.cli"]  # `workbench` in this environment, for child processes


@dataclass
class Launched:
    run_id: str
    pid: int
    log: Path


def launch(recipe: Path, home: Path, run_id: str, overrides: list[str] | None = None) -> Launched:
    """Start `workbench run` for the recipe in a new session; its output goes to `<home>/<run>/worker.log`.
    Refused (RunError) when the run already has a worker: the lock is taken here and handed to the worker."""
    with RunLock.acquire(home, run_id) as lock:
        log = home / run_id / "worker.log"
        command = [*CLI, "--home", str(home), "run", str(recipe), "--run-id", run_id, "--worker"]
        for override in overrides or []:
            command += ["--set", override]
        assert lock.fd is not None
        with open(log, "ab", opener=no_follow) as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(lock.fd,),
                env=child_env({**os.environ, INHERITED_FD: str(lock.fd)}),
            )
    return Launched(run_id, process.pid, log)


def launch_sweep(recipe: Path, home: Path, name: str, varied: list[str], overrides: list[str]) -> Launched:
    """Start `workbench sweep` in a new session: its runs one after another, each taking its own run's lock
    as it starts; the output goes to `<home>/sweeps/<recipe name>.log`."""
    log = make_home(home) / "sweeps" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [*CLI, "--home", str(home), "sweep", str(recipe)]
    for item in varied:
        command += ["--vary", item]
    for override in overrides:
        command += ["--set", override]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env(),
        )
    return Launched(name, process.pid, log)


def live_worker(store: Store, run_id: str) -> int | None:
    """The pid of the run's worker while it is alive (one worker per run)."""
    run = store.run(run_id)
    return run.pid if run is not None and store.live_status(run) == "running" else None


def signal_process(pid: int, started: float | None, signum: int) -> bool:
    """Send `signum` to the process that had `pid` and started at `started` — never to another process that
    got the pid later. Through a pidfd where the system has them, so the check and the signal cannot race."""
    handle = None
    try:
        with contextlib.suppress(AttributeError, OSError):  # no pidfds here (older kernels, some sandboxes)
            handle = os.pidfd_open(pid)
        if not is_alive(pid, started):
            return False
        if handle is not None:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if handle is not None:
            os.close(handle)


def cancel(store: Store, run_id: str) -> bool:
    """Ask a run's worker to stop: training saves a checkpoint after the current step, model work in its
    child processes is stopped, and the next run resumes. False when the run has no live worker."""
    run = store.run(run_id)
    if run is None or run.pid is None or store.live_status(run) != "running":
        return False
    return signal_process(run.pid, run.pid_started, signal.SIGTERM)


def stop_on_sigterm() -> None:
    """In a worker: SIGTERM ends the run the way Ctrl-C does (stage and run marked interrupted)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


class _Tee:
    """A text stream that writes to several (the terminal and the log)."""

    def __init__(self, first: IO[str], *others: IO[str]):
        self.streams = (first, *others)

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.streams[0], name)


@contextlib.contextmanager
def logged_to(log: Path) -> Iterator[None]:
    """In a foreground worker: what it prints also goes to its worker.log (a detached worker's output
    already does), and a native crash's Python traceback goes there."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8", buffering=1, opener=no_follow) as handle:
        handle.write(f"=== {dt.datetime.now():%Y-%m-%d %H:%M:%S} worker pid {os.getpid()} (foreground)\n")
        stdout, stderr = sys.stdout, sys.stderr
        own_faulthandler = not faulthandler.is_enabled()
        if own_faulthandler:
            faulthandler.enable(file=handle, all_threads=True)
        sys.stdout, sys.stderr = _Tee(stdout, handle), _Tee(stderr, handle)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            if own_faulthandler:
                faulthandler.disable()
