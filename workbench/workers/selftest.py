"""A task that does what it is told — answer, raise, crash, hang — so `workbench doctor` (and the tests)
can prove on this machine that the worker contract turns each into the right outcome."""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from typing import Any

from workbench.workers.child import Channel


def selftest_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    for number in range(job.get("events", 0)):
        channel.emit({"number": number})
    if job.get("spawn"):  # a process of its own, which a timeout must end too
        channel.emit({"grandchild": subprocess.Popen(job["spawn"]).pid})
    if job.get("phase"):
        channel.phase(job["phase"])
    print(job.get("say", "self-test"), flush=True)
    action = job.get("do", "answer")
    if action == "raise":
        raise ValueError(job.get("message", "asked to fail"))
    if action == "crash":
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a broken native kernel would
    if action == "hang":
        time.sleep(3600)
    if action == "exit":
        os._exit(job.get("status", 3))  # no result, no error: as if killed from inside
    if action == "crash-at-exit":  # as a native library's static destructor aborting at shutdown would
        import atexit

        atexit.register(ctypes.string_at, 0)
    if action == "sleep":  # a measurement's length, to see workers run side by side
        began = time.time()
        time.sleep(job["seconds"])
        return {"echo": job.get("echo"), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "span": [began, time.time()]}
    if action == "memory":
        block = bytearray(job["megabytes"] * 2**20)
        block[::4096] = b"x" * len(block[::4096])
    return {"echo": job.get("echo")}
