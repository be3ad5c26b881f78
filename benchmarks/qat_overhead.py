"""Training-speed cost of quantization-aware training: tokens/s of the train stage with the fake
quantization on from the first step ÷ without it, same recipe, same data, alternating runs in one process
(target: the QAT run is at most 1.3x slower). `--distill`: with distillation toward the 16-bit model as
well (the rounding and the teacher's forward pass from step 1: distillation needs a step of plain training
first; target: at most 1.6x slower), the recipe's target (recipes/qat-q4_k_m.yaml: the Q4_K_M mixture).

    .venv/bin/python benchmarks/qat_overhead.py [--recipe recipes/qat-q4_0.yaml] [--steps 8] [--reps 2]
        [--distill] [--memory]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_overhead import workbench_run  # noqa: E402

from workbench.core.recipe import load_recipe  # noqa: E402


def overrides_for(target: str, distill: bool) -> tuple[str, ...]:
    within = ("train.qat.steps=null", "train.qat.learning_rate=null")  # the rounding on within max_steps
    if distill and target != "none":
        return (f"train.qat.target={target}", "train.qat.start_after_steps=1", "train.qat.distill={weight: 1}", *within)
    return (f"train.qat.target={target}", "train.qat.start_after_steps=0", *within)


def tokens_per_second(recipe_path: Path, home: Path, steps: int, target: str, distill: bool) -> float:
    return workbench_run(recipe_path, steps, home, overrides_for(target, distill), run_id=f"qat-{target}")


def peak_memory_mb(recipe_path: Path, home: Path, steps: int, target: str, distill: bool) -> float:
    """Peak resident memory of a `workbench run` of the train stage alone, in a process of its own."""
    sets = [f"train.max_steps={steps}", "train.checkpoint_every=100000", *overrides_for(target, distill)]
    command = [sys.executable, "-m", "workbench.cli", "--home", str(home), "run", str(recipe_path), "--stages",
               "train", "--force", "train", "--run-id", f"memory-{target}"]  # fmt: skip
    for item in sets:
        command += ["--set", item]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "qat-q4_0.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--distill", action="store_true", help="QAT with distillation toward the 16-bit model")
    parser.add_argument("--memory", action="store_true", help="also each side's peak memory, in a process of its own")
    args = parser.parse_args()
    target = load_recipe(args.recipe).train.qat.target or "q4_0"

    plain: list[float] = []
    qat: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "runs"
        for rep in range(args.reps):
            started = time.perf_counter()
            for side in ("none", target) if rep % 2 == 0 else (target, "none"):  # each goes first in turn
                (plain if side == "none" else qat).append(
                    tokens_per_second(args.recipe, home, args.steps, side, args.distill)
                )
            print(f"rep {rep + 1}: plain {plain[-1]:.1f} tok/s, QAT {target} {qat[-1]:.1f} tok/s "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
        if args.memory:
            memory = {
                side: peak_memory_mb(args.recipe, home, args.steps, side, args.distill) for side in ("none", target)
            }
            print(f"peak memory of the train stage: plain {memory['none']:.0f} MB, QAT {target} {memory[target]:.0f} MB"
                  f" ({memory[target] / memory['none']:.2f}x)")  # fmt: skip
    slowdown = statistics.median(plain) / statistics.median(qat)
    what, goal = ("QAT with distillation", 1.6) if args.distill else ("QAT", 1.3)
    print(f"\n{what} slowdown (plain tok/s / QAT tok/s): {slowdown:.3f}x  (target <= {goal}x; {args.steps} steps x "
          f"{args.reps} reps, recipe {args.recipe.name})")  # fmt: skip


if __name__ == "__main__":
    main()
