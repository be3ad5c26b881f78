"""A task that does what it is told — answer, raise, crash, hang — so `workbench doctor` (and the tests)
can prove on this machine that the worker contract turns each into the right outcome."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from workbench.workers.child import Channel


@dataclass(frozen=True)
class SelfTestJob:
    do: str = "answer"  # answer | raise | crash | hang | exit | crash-at-exit | sleep | memory
    echo: Any = None  # handed back in the result
    events: int = 0  # numbered events to emit first
    spawn: list[str] | None = None  # a command to start as a grandchild
    phase: str | None = None
    say: str = "self-test"  # printed to the log
    message: str = "asked to fail"  # raise's
    status: int = 3  # exit's
    seconds: float = 0.0  # sleep's
    megabytes: int = 0  # memory's


@dataclass(frozen=True)
class SelfTestResult:
    echo: Any = None
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES as the worker saw it (sleep)
    span: tuple[float, float] | None = None  # when it slept (sleep)


def selftest_job(job: SelfTestJob, channel: Channel) -> SelfTestResult:
    for number in range(job.events):
        channel.emit({"number": number})
    if job.spawn:  # a process of its own, which a timeout must end too
        channel.emit({"grandchild": subprocess.Popen(job.spawn).pid})
    if job.phase:
        channel.phase(job.phase)
    print(job.say, flush=True)
    action = job.do
    if action == "raise":
        raise ValueError(job.message)
    if action == "crash":
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a broken native kernel would
    if action == "hang":
        time.sleep(3600)
    if action == "exit":
        os._exit(job.status)  # no result, no error: as if killed from inside
    if action == "crash-at-exit":  # as a native library's static destructor aborting at shutdown would
        import atexit

        atexit.register(ctypes.string_at, 0)
    if action == "sleep":  # a measurement's length, to see workers run side by side
        began = time.time()
        time.sleep(job.seconds)
        return SelfTestResult(job.echo, os.environ.get("CUDA_VISIBLE_DEVICES"), (began, time.time()))
    if action == "memory":
        block = bytearray(job.megabytes * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    return SelfTestResult(job.echo)
