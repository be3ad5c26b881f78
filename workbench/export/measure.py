"""`python -m workbench.export.measure (SCRIPT | -m MODULE) ARGS...`: run a script or module and report its
peak memory on exit.

The peak is the process's own VmHWM, read at exit. (The rusage of a child started from a large parent
also counts the parent's pages it inherited before exec, so it over-reports.)
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

MARKER = "WORKBENCH_PEAK_RSS_KB="


def peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    args = sys.argv[1:]
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            sys.path.insert(0, str(Path(args[0]).parent))
            runpy.run_path(args[0], run_name="__main__")
    finally:
        print(f"\n{MARKER}{peak_rss_kb()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
