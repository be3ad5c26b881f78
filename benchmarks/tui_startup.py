"""TUI start-up: `workbench tui` from a fresh process until its first screen has drawn, ÷ a bare
Textual app with one DataTable doing the same, alternating (target: the workbench's under 1 s; it
must not import torch, transformers or numpy).

    .venv/bin/python benchmarks/tui_startup.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

WORKBENCH = """
import sys
from workbench.cli import build_parser
from workbench.tui.app import WorkbenchApp

class Probe(WorkbenchApp):
    def on_mount(self):
        super().on_mount()
        self.call_after_refresh(self.exit)

args = build_parser().parse_args(["--home", sys.argv[1], "tui"])
Probe(args.home).run(headless=True, size=(80, 24))
heavy = [name for name in ("torch", "transformers", "numpy") if name in sys.modules]
print("heavy imports:", heavy or "none")
"""

BARE = """
from textual.app import App
from textual.widgets import DataTable, Footer, Header

class Bare(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()

    def on_mount(self):
        self.call_after_refresh(self.exit)

Bare().run(headless=True, size=(80, 24))
"""


def seconds(code: str, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    ours, bare, note = [], [], ""
    with tempfile.TemporaryDirectory() as home:
        seconds(WORKBENCH, home)  # warm the file cache for both
        seconds(BARE)
        for _ in range(args.reps):
            took, note = seconds(WORKBENCH, home)
            ours.append(took)
            bare.append(seconds(BARE)[0])
    mine, reference = statistics.median(ours), statistics.median(bare)
    print(f"workbench tui to first screen: median {mine:.3f} s (min {min(ours):.3f}, max {max(ours):.3f})")
    print(f"bare Textual app:              median {reference:.3f} s")
    print(f"ratio {mine / reference:.2f}; {note}; under 1 s: {'yes' if mine < 1 else 'NO'}")


if __name__ == "__main__":
    main()
