"""Run a command as a child process, streaming its output, and measure its time and peak memory."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class Measured:
    returncode: int
    output: str
    seconds: float
    peak_rss_mb: float


def run_measured(command: list[str], env: dict[str, str] | None = None, echo: bool = True) -> Measured:
    """Output is echoed line by line as it comes, so long steps are never silent."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    assert process.stdout
    for line in process.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(process.returncode, "".join(lines), time.perf_counter() - started, usage.ru_maxrss / 1024)
