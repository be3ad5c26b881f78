"""Re-running an unchanged recipe: wall time of `workbench run RECIPE` when every stage is cached, next to
a bare start of the same interpreter (alternating, same machine, one run). Target: <= 2 s.

The first call brings the run up to date (it runs whatever is not cached) and is not timed:

    .venv/bin/python benchmarks/rerun.py [--recipe recipes/quickstart.yaml] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = [*WORKBENCH, "run", str(args.recipe)]
    subprocess.run(run, env=env, check=True, stdout=subprocess.DEVNULL)
    reruns, bare = [], []
    for _ in range(args.reps):
        seconds, out = timed(run, env)
        redone = [line for line in out.splitlines() if line.startswith("[") and "unchanged, skipped" not in line]
        if redone:
            sys.exit(f"a stage ran again on an unchanged recipe: {redone[0]}")
        reruns.append(seconds)
        bare.append(timed([sys.executable, "-c", "pass"], env)[0])
    rerun, start = statistics.median(reruns), statistics.median(bare)
    spread = f"min {min(reruns):.2f}, max {max(reruns):.2f}"
    print(f"re-run of an unchanged recipe: median {rerun:.2f} s ({spread}) over {args.reps}; bare interpreter start"
          f" {start:.2f} s; ratio {rerun / start:.1f}x; target <= 2 s")  # fmt: skip


if __name__ == "__main__":
    main()
