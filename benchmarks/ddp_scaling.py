"""Training throughput on 2 data-parallel processes vs 1, same recipe, data and steps, in one run.

The train stage of a recipe (default: the quickstart on the default model) runs alternately with
`train.distributed.processes` 1 and 2 (1, 2, 1, 2, ...; each a fresh run, so nothing is cached), and prints
each run's tokens/s (TRL's `num_tokens` over all processes, real tokens not padding, over the measured
training time), its final loss, and the ratio of medians (2 processes / 1). `train.batch_size` is the batch
of one step over all processes, so both train the same steps on the same rows.

On a CPU the processes share the machine's cores (each gets cores / processes threads), so this shows the
cost of the process group (gloo all-reduce of the LoRA gradients every step), not a speed-up; on a machine
with two GPUs it is the scaling. Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/ddp_scaling.py [--steps 12] [--reps 2] [--recipe recipes/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.core.recipe import load_recipe  # noqa: E402
from workbench.pipeline.runner import run_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    measured: dict[int, list[dict]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as folder:
        home = Path(folder)
        for rep in range(args.reps):
            for processes in measured:
                recipe = load_recipe(
                    args.recipe,
                    [
                        f"train.max_steps={args.steps}",
                        f"train.checkpoint_every={args.steps * 10}",  # no checkpoint inside the timing
                        f"train.distributed.processes={processes}",
                    ],
                )
                run_id = f"p{processes}-r{rep}"
                run_recipe(recipe, home, stages=["train"], run_id=run_id)
                summary = json.loads((home / run_id / "train" / "train_summary.json").read_text())
                measured[processes].append(summary)
                load = os.getloadavg()[0]
                print(
                    f"rep {rep} processes {processes}: {summary['tokens_per_s']:.1f} tok/s, "
                    f"{summary['train_runtime_s']:.1f} s, final loss {summary['final_loss']:.4f} (load {load:.1f})",
                    flush=True,
                )
    one, many = (statistics.median(s["tokens_per_s"] for s in measured[p]) for p in measured)
    print(f"\n1 process: {one:.1f} tok/s; {args.processes} processes: {many:.1f} tok/s")
    print(f"ratio ({args.processes} / 1): {many / one:.3f}")
    print(
        "final losses: "
        + "; ".join(f"{p} process(es) {[round(s['final_loss'], 4) for s in runs]}" for p, runs in measured.items())
    )


if __name__ == "__main__":
    main()
