"""Runs in detached worker processes: each in its own session, so it keeps going when the terminal (or
the SSH connection, or the TUI) that started it goes away. The run store is how anyone sees it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from workbench.store import Store

CLI = [sys.executable, "-m", "workbench.cli"]  # `workbench` in this environment, for child processes


@dataclass
class Launched:
    run_id: str
    pid: int
    log: Path


def launch(recipe: Path, home: Path, run_id: str, overrides: list[str] | None = None) -> Launched:
    """Start `workbench run` for the recipe in a new session; its output goes to `<home>/<run>/worker.log`."""
    log = home / run_id / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [*CLI, "--home", str(home), "run", str(recipe), "--run-id", run_id]
    for override in overrides or []:
        command += ["--set", override]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Launched(run_id, process.pid, log)


def live_worker(store: Store, run_id: str) -> int | None:
    """The pid of the run's worker while it is alive (one worker per run)."""
    run = store.run(run_id)
    return run["pid"] if run is not None and store.live_status(run) == "running" else None


def cancel(store: Store, run_id: str) -> bool:
    """Ask a run's worker (and the model processes it started) to stop: training saves a checkpoint
    after the current step, other stages stop and are redone or resumed on the next run. False when the
    run has no live worker."""
    pid = live_worker(store, run_id)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def stop_on_sigterm() -> None:
    """In a worker: SIGTERM ends the run the way Ctrl-C does (stage and run marked interrupted)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
