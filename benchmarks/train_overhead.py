"""Training throughput of the workbench vs a bare TRL SFTTrainer script, same data and settings; with
--packing, the workbench's train stage without and with packing (TRL's best-fit packing, padding-free:
examples share a row without attending to each other) on the same data.

Runs the two alternately (A, B, A, B, ...) in one process and prints each run's tokens/s (real tokens,
not padding) and the ratio of medians. Target: workbench / bare >= 0.95.

    .venv/bin/python benchmarks/train_overhead.py [--recipe recipes/quickstart.yaml] [--steps 12] [--reps 2]
    .venv/bin/python benchmarks/train_overhead.py --packing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.core.recipe import load_recipe  # noqa: E402
from workbench.pipeline.runner import run_recipe  # noqa: E402


def bare_trl(recipe_path: Path, train_jsonl: Path, steps: int, workdir: Path) -> float:
    """What a person would write by hand with TRL + peft: returns tokens/s."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from workbench.core.models import resolve_model

    recipe = load_recipe(recipe_path)
    t = recipe.train
    base = resolve_model(recipe.base_model)
    rows = [json.loads(line) for line in train_jsonl.read_text().splitlines()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(base)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
    args = SFTConfig(
        output_dir=str(workdir),
        max_steps=steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),  # TRL defaults to bf16, which is emulated (slow) on most CPUs
        gradient_checkpointing=t.gradient_checkpointing,  # TRL defaults to True
        max_length=recipe.data.max_length,
    )
    peft = LoraConfig(
        r=t.lora.r,
        lora_alpha=t.lora.alpha,
        lora_dropout=t.lora.dropout,
        target_modules=t.lora.targets,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    result = trainer.train()
    tokens = [log["num_tokens"] for log in trainer.state.log_history if "num_tokens" in log][-1]
    return tokens / result.metrics["train_runtime"]


def workbench_run(
    recipe_path: Path, steps: int, home: Path, overrides: tuple[str, ...] = (), run_id: str = ""
) -> float:
    """The train stage of the recipe for `steps` steps: returns its tokens/s."""
    recipe = load_recipe(recipe_path, [f"train.max_steps={steps}", "train.checkpoint_every=100000", *overrides])
    run_id = run_recipe(recipe, home, stages=["train"], force=["train"], run_id=run_id or None)
    out = home / run_id / "train"
    summary = json.loads((out / "train_summary.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    tokens = [log["num_tokens"] for log in history if "num_tokens" in log][-1]
    return tokens / summary["train_runtime_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--packing", action="store_true", help="compare the train stage without / with packing")
    args = parser.parse_args()
    if args.packing:
        compare_packing(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "runs"
        recipe = load_recipe(args.recipe)
        run_recipe(recipe, home, stages=["data"])  # the same split feeds both sides
        train_jsonl = home / recipe.name / "data" / "train.jsonl"
        bare, ours = [], []
        for rep in range(args.reps):
            started = time.perf_counter()
            bare.append(bare_trl(args.recipe, train_jsonl, args.steps, Path(tmp) / f"bare{rep}"))
            ours.append(workbench_run(args.recipe, args.steps, home))
            print(
                f"rep {rep + 1}: bare TRL {bare[-1]:.1f} tok/s, workbench {ours[-1]:.1f} tok/s "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    ratio = statistics.median(ours) / statistics.median(bare)
    print(
        f"\nworkbench / bare TRL tokens/s: {ratio:.3f}  (target >= 0.95; {args.steps} steps x {args.reps} reps, "
        f"recipe {args.recipe.name})"
    )


def compare_packing(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "runs"
        run_recipe(load_recipe(args.recipe), home, stages=["data"])
        plain, packed = [], []
        for rep in range(args.reps):
            plain.append(workbench_run(args.recipe, args.steps, home, ("data.packing=false",)))
            packed.append(workbench_run(args.recipe, args.steps, home, ("data.packing=true",)))
            print(f"rep {rep + 1}: padded batches {plain[-1]:.1f} tok/s, packed {packed[-1]:.1f} tok/s", flush=True)
    ratio = statistics.median(packed) / statistics.median(plain)
    print(
        f"\npacked / padded tokens/s: {ratio:.3f}  ({args.steps} steps x {args.reps} reps, recipe {args.recipe.name})"
    )


if __name__ == "__main__":
    main()
