"""Model work in child processes, under one contract.

Everything that loads a model through native code (llama.cpp, bitsandbytes, GPTQModel's kernels, torch)
runs in a child: a crash there (a segfault in a CPU kernel, an out-of-memory kill) fails that one job,
never the process that orchestrates a run or draws the TUI. The contract:

- **job in**: a task named in `workbench.workers.tasks.TASKS` and its job, a dataclass the task function
  declares (`wire`: JSON on the way, checked against the type on arrival), written beside the log;
- **result out**: the task function's return value (its declared result dataclass; `Outcome.value_as`
  reads it back), or its exception as one line;
- **events**: what the task `emit`s while it runs (streamed answers, check phases), on a private pipe, so
  nothing a native library prints can corrupt them;
- **output**: the child's stdout and stderr go to the log file (and are echoed when asked);
- **measured**: wall time and the child's own peak memory (its VmHWM, read as it exits);
- **a timeout**: past it, the child's whole process group is killed and the job is `timed_out`;
- **a death by signal** becomes a plain error: "Q8_0.gguf: smoke check crashed (SIGSEGV) — see …/x.log".

A child runs in its own process group and ends itself if the process that started it goes away, so a
killed orchestrator leaves nothing behind. This module imports only the standard library (the TUI uses it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from workbench.core import safe
from workbench.core.common import PYTHON, child_env
from workbench.core.errors import StageFailed
from workbench.workers import wire
from workbench.workers.child import MEMORY_LIMIT
from workbench.workers.tasks import TASKS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
Status = Literal["done", "failed", "crashed", "timed_out", "stopped"]
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL when a child is stopped
TAIL_LINES = 20  # output lines kept for error messages


@dataclass
class Outcome:
    """How one child ended, what it returned and what it cost."""

    name: str  # what the work was about, for messages ("Q8_0.gguf")
    task: str
    status: Status
    result: dict[str, Any] | None = None  # as it came over the wire; `value_as` reads it as its type
    error: str | None = None  # one line for the user; None when done
    seconds: float = 0.0
    peak_rss_mb: float | None = None  # None when the child did not get to report it
    returncode: int | None = None
    phase: str | None = None  # the last phase the child announced
    log: Path | None = None
    tail: list[str] = field(default_factory=list)  # its last output lines

    @property
    def ok(self) -> bool:
        return self.status == "done"

    def value_as(self, kind: type[T]) -> T:
        """The result as the task's result type, or WorkerFailed with the one-line error."""
        if not self.ok:
            raise WorkerFailed(self)
        return wire.decode(kind, self.result, f"{self.task} result")


class WorkerFailed(StageFailed):
    def __init__(self, outcome: Outcome):
        self.outcome = outcome
        super().__init__(outcome.error or f"{outcome.name}: {outcome.status}")


def signal_name(returncode: int) -> str | None:
    """'SIGSEGV' for a child killed by signal 11 (return code -11)."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class Running:
    """A started child. Iterate `events()` to stream what it emits; `outcome` is set once it has ended."""

    def __init__(
        self,
        task: str,
        job: DataclassInstance,
        *,
        name: str,
        log: Path | None = None,
        timeout: float | None = None,
        echo: bool = False,
        env: dict[str, str] | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown worker task {task!r}; known: {', '.join(sorted(TASKS))}")
        self.task, self.name, self.timeout, self.echo = task, name, timeout, echo
        self.outcome: Outcome | None = None
        self._stop_reason: Status | None = None
        self._phase: str | None = None
        self._result: dict[str, Any] | None = None
        self._error: str | None = None
        self._peak_kb: int | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if log is None:
            self._temp = tempfile.TemporaryDirectory(prefix="workbench-worker-")
            log = Path(self._temp.name) / "worker.log"
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        job_file = self.log.with_name(self.log.stem + ".job.json")
        job_file.write_text(json.dumps({"task": task, "job": wire.encode(job)}), encoding="utf-8")

        read_end, write_end = os.pipe()
        environment = child_env(
            env, WORKBENCH_EVENTS_FD=str(write_end), WORKBENCH_PARENT_PID=str(os.getpid()), PYTHONUNBUFFERED="1"
        )
        self.memory_limit = environment.get(MEMORY_LIMIT, "")  # applied by the child itself (RLIMIT_AS)
        self.started = time.perf_counter()
        try:
            self.process = subprocess.Popen(
                [*PYTHON, "-m", "workbench.workers.child", str(job_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                pass_fds=(write_end,),
                process_group=0,  # its own group: a timeout or a stop kills everything it started
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._events = os.fdopen(read_end, "rb", buffering=0)
        self._logfile = open(self.log, "wb")  # noqa: SIM115 - closed by the output thread
        self._output = threading.Thread(target=self._copy_output, daemon=True)
        self._output.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _copy_output(self) -> None:
        assert self.process.stdout is not None
        with self._logfile:
            for raw in self.process.stdout:
                self._logfile.write(raw)
                self._logfile.flush()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.strip():
                    self._tail.append(line)
                if self.echo:  # tool output may carry task text: nothing in it acts on the terminal
                    with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stall the child
                        print(safe.terminal_text(line, keep_returns=True), flush=True)

    def _exited(self) -> bool:
        """Whether the child has ended, without reaping it: until it is reaped its process group id
        cannot be reused, so killing the group afterwards cannot reach anyone else."""
        if self.process.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, reason: Status = "stopped") -> None:
        """End the child and everything it started (SIGTERM, then SIGKILL after a grace period)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._end_group()

    def _end_group(self) -> None:
        if self._exited():
            return
        self._signal_group(signal.SIGTERM)
        if not self._wait_exit(KILL_GRACE_S):
            self._signal_group(signal.SIGKILL)

    def _wait_exit(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._exited() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self._exited()

    def events(self) -> Iterator[dict[str, Any]]:
        """The task's events as they come. Ends when the child has ended (or was stopped, or timed out);
        `outcome` is set then. Leaving the loop early stops the child."""
        if self.outcome is not None:
            return  # already ended (events are streamed once)
        finished = False
        try:
            yield from self._read_events()
            finished = True
        finally:
            if not finished:
                self.stop()
            self._finish()

    def wait(self) -> Outcome:
        """Let the child finish (its events are dropped) and return its outcome."""
        for _ in self.events():
            pass
        assert self.outcome is not None
        return self.outcome

    def _read_events(self) -> Iterator[dict[str, Any]]:
        deadline = self.started + self.timeout if self.timeout else None
        buffer = bytearray()

        def drain(chunk: bytes) -> list[dict[str, Any]]:
            buffer.extend(chunk)
            *lines, rest = bytes(buffer).split(b"\n")
            buffer[:] = rest
            return [event for event in map(self._handle, lines) if event is not None]

        with selectors.DefaultSelector() as selector:
            selector.register(self._events, selectors.EVENT_READ)
            while True:
                if deadline is not None and time.perf_counter() > deadline:
                    self.stop("timed_out")
                wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.perf_counter()))
                if selector.select(wait):
                    chunk = self._events.read(65536)
                    if not chunk:
                        break  # the child closed its end: it has finished
                    yield from drain(chunk)
                elif self._exited():  # gone, though a process it forked may still hold the pipe open
                    while selector.select(0) and (chunk := self._events.read(65536)):
                        yield from drain(chunk)
                    break

    def _handle(self, line: bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(line)
            kind, data = message["kind"], message["data"]
        except (ValueError, KeyError, TypeError):
            return None
        if kind == "event":
            return data
        if kind == "phase":
            self._phase = data
        elif kind == "result":
            self._result = data
        elif kind == "error":
            self._error = data
        elif kind == "peak":
            self._peak_kb = data
        return None

    def _finish(self) -> None:
        if self.outcome is not None:
            return
        if not self._wait_exit(KILL_GRACE_S):  # it closed its events: let it exit, else end it
            self._end_group()
        if self.process.returncode is None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
            self._signal_group(signal.SIGKILL)  # anything it left running in its group
        returncode = self.process.wait()
        self._output.join(timeout=10)
        self._events.close()
        status, error = self._judge(returncode)
        self.outcome = Outcome(
            name=self.name,
            task=self.task,
            status=status,
            result=self._result if status == "done" else None,
            error=error,
            seconds=round(time.perf_counter() - self.started, 2),
            peak_rss_mb=round(self._peak_kb / 1024, 1) if self._peak_kb else None,
            returncode=returncode,
            phase=self._phase,
            log=None if self._temp else self.log,
            tail=list(self._tail),
        )
        if self._temp is not None:
            self._temp.cleanup()

    def _judge(self, returncode: int) -> tuple[Status, str | None]:
        what = self._phase or TASKS[self.task].label
        see = f" — see {self.log}" if self._temp is None else ""
        if self._result is not None:  # reported whole; a stop or a crash on the way out does not undo it
            return "done", None
        if self._stop_reason == "timed_out":
            return "timed_out", f"{self.name}: {what} timed out after {self.timeout:g} s{see}"
        if self._stop_reason == "stopped":
            return "stopped", f"{self.name}: {what} stopped"
        if self._error is not None:
            return "failed", f"{self.name}: {what} failed: {self._error}{see}"
        crash = signal_name(returncode)
        if crash:
            limit = self.memory_limit
            limited = crash in ("SIGABRT", "SIGSEGV", "SIGBUS") and limit.isdigit() and int(limit) > 0
            over = f", likely out of memory (limit {limit} MiB, {MEMORY_LIMIT})" if limited else ""
            return "crashed", f"{self.name}: {what} crashed ({crash}){over}{see}"
        last = self._tail[-1].strip() if self._tail else "no output"
        return "failed", f"{self.name}: {what} exited with status {returncode} without a result ({last}){see}"


start = Running  # start(task, job, name=..., log=..., timeout=..., echo=..., env=...) -> a running worker


def run(task: str, job: DataclassInstance, **options: Any) -> Outcome:
    """`start` the task (same options) and wait for its outcome; its events are dropped. An interrupt of
    this process (Ctrl-C, SIGTERM) stops the child before it propagates."""
    return start(task, job, **options).wait()


def spread(
    items: list[Any], begin: Callable[[Any, str | None], Running], devices: list[str | None]
) -> Iterator[tuple[Any, Outcome | Exception]]:
    """Run one worker per device at a time (`begin(item, device)` starts it; a device of None is no
    pinning), yielding (item, its outcome or the exception that ended it) as each ends. With one device
    this is one after another. An interrupt stops every worker still running."""
    free = list(devices)
    pending = list(items)
    active: dict[concurrent.futures.Future[Outcome], tuple[Any, str | None, Running]] = {}
    with concurrent.futures.ThreadPoolExecutor(max(len(devices), 1)) as pool:
        try:
            while pending or active:
                while pending and free:
                    item, device = pending.pop(0), free.pop(0)
                    try:
                        running = begin(item, device)
                    except Exception as exc:  # noqa: BLE001 - the caller records it; the others go on
                        free.append(device)
                        yield item, exc
                        continue
                    active[pool.submit(running.wait)] = (item, device, running)
                if not active:
                    continue
                finished, _ = concurrent.futures.wait(active, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    item, device, _ = active.pop(future)
                    free.append(device)
                    error = future.exception()
                    yield item, error if isinstance(error, Exception) else future.result()
        finally:
            for _, _, running in active.values():
                running.stop()


def device_env(device: str | None) -> dict[str, str] | None:
    """A worker's environment pinned to one GPU (None: as this process's)."""
    return None if device is None else {**os.environ, "CUDA_VISIBLE_DEVICES": device}
