"""Run a Python script or module as a child process, streaming its output, and measure its time and
peak memory."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass

from workbench.export.measure import MARKER


@dataclass
class Measured:
    returncode: int
    output: str
    seconds: float
    peak_rss_mb: float | None


def run_measured(python_args: list[str], env: dict[str, str] | None = None, echo: bool = True) -> Measured:
    """`python_args` as after `python`: a script path or `-m module`, then arguments. Output is echoed
    line by line as it comes, so long steps are never silent."""
    command = [sys.executable, "-m", "workbench.export.measure", *python_args]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    assert process.stdout
    for line in process.stdout:
        if line.startswith(MARKER):
            lines.append(line)
            continue
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
    process.wait()
    output = "".join(lines)
    peaks = re.findall(rf"^{MARKER}(\d+)$", output, flags=re.MULTILINE)
    peak = int(peaks[-1]) / 1024 if peaks else None
    return Measured(process.returncode, output, time.perf_counter() - started, peak)
