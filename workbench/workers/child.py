"""`python -m workbench.workers.child JOB.json`: the child side of the worker contract (see the package).

Reads the job, runs its task, and reports on the events pipe: the task's own events, its phases, then
its result or error and this process's peak memory. Ends itself (and its process group) when the
process that started it goes away.
"""

from __future__ import annotations

import errno
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from workbench.core import formats
from workbench.workers import wire
from workbench.workers.tasks import TASKS


class Channel:
    """What a task function gets to talk to the process that started it."""

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, kind: str, data: Any) -> None:
        with self._lock:
            self._stream.write(json.dumps({"kind": kind, "data": data}) + "\n")
            self._stream.flush()

    def emit(self, event: dict[str, Any]) -> None:
        """An event for the caller (e.g. one streamed piece of an answer)."""
        self.send("event", event)

    def phase(self, name: str) -> None:
        """What the task is doing now; a crash or timeout is reported as happening in it."""
        print(f"-- {name}", flush=True)
        self.send("phase", name)


def vm_hwm_kb(status: Path) -> int | None:
    """A process's memory high-water mark (VmHWM) from its /proc status file; None where there is none."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kb() -> int | None:
    """This process's own high-water mark (VmHWM). The rusage of a child started from a large parent also
    counts pages it inherited before exec, so it would over-report."""
    found = vm_hwm_kb(Path("/proc/self/status"))
    if found is not None:
        return found
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def watch_parent(parent: int) -> None:
    """When the starting process dies (even by SIGKILL), end this process group: no orphaned model work."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


MEMORY_LIMIT = "WORKBENCH_WORKER_MEMORY_MB"  # a worker's address-space limit (RLIMIT_AS), in MiB; unset: none
# what an allocation refused under that limit says, from Python, torch's allocator and the dynamic loader
ALLOCATION_FAILED = ("Cannot allocate memory", "can't allocate memory", "failed to map segment")


def limit_memory() -> int | None:
    """Apply the memory limit this worker was started with (before its task loads anything); its MiB."""
    value = os.environ.get(MEMORY_LIMIT, "").strip()
    if not value.isdigit() or not int(value):
        return None
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = int(value) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    return int(value)


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether an allocation failed on the way to this exception."""
    while exc is not None:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return True
        if any(words in str(exc) for words in ALLOCATION_FAILED):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def error_line(exc: BaseException, limit_mb: int | None) -> str:
    line = f"{type(exc).__name__}: {exc}".strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if limit_mb and out_of_memory(exc):
        return f"out of memory (limit {limit_mb} MiB, {MEMORY_LIMIT}): {line}"
    return line


def resolve(task: str) -> Any:
    return formats.resolve(TASKS[task].target)


def run_task(task: str, data: Any, channel: Channel) -> Any:
    """The task's function on its job decoded from the wire; its result encoded for the wire."""
    function = resolve(task)
    job_type, _ = wire.signature(function)
    return wire.encode(function(wire.decode(job_type, data, f"{task} job"), channel))


def main() -> None:
    limit_mb = limit_memory()
    faulthandler.enable()  # a native crash leaves the Python stack in the log
    channel = Channel(os.fdopen(int(os.environ.pop("WORKBENCH_EVENTS_FD")), "w", encoding="utf-8"))
    watch_parent(int(os.environ.pop("WORKBENCH_PARENT_PID")))
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    code = 0
    try:
        channel.send("result", run_task(spec["task"], spec["job"], channel))
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the process exits non-zero
        traceback.print_exc()
        channel.send("error", error_line(exc, limit_mb))
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    channel.send("peak", peak_rss_kb())
    # Leave without the interpreter's shutdown: native libraries' static destructors (torch.compile's thread
    # pools under GPTQModel, seen here) can abort at exit, after the work is done and reported.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
