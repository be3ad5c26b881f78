"""DPO throughput of the workbench's tune stage vs a bare TRL DPOTrainer script, same data and settings.

Both continue the same supervised LoRA adapter (the recipe's train stage, run once) with DPO on the same
preference rows (the exact rows the tune stage trained on, <run>/tune/train.jsonl), fp32 on a CPU (bf16
on a GPU that has it), the same optimizer settings and checkpoint cadence. Runs the two alternately
(workbench, bare, workbench, bare, ...) in one process and prints each run's tokens/s (TRL's cumulative
`num_tokens`, real tokens not padding, over the Trainer's train_runtime: the same formula on both sides)
and the ratio of medians. Target: workbench / bare >= 0.95.

Each rep line shows the load average: other processes on the cores (a 2-thread torch team on a busy 2-core
machine slows several-fold, and unevenly) make the ratio meaningless; run it on an otherwise idle machine.

The default recipe is self-contained: SFT on recipes/data/addition.json for a few steps, then DPO on
deterministic pairs made here ("What is a + b?": chosen the sum, rejected a wrong or wordy answer).

    .venv/bin/python benchmarks/dpo_overhead.py [--steps 12] [--reps 2] [--batch-size 8] [--recipe recipes/dpo.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.core.recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from workbench.pipeline.runner import run_recipe  # noqa: E402

RUN_ID = "dpo-overhead"


def preference_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic addition pairs: the bare sum is chosen, a wrong sum or a wordy answer rejected."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = str(a + b + rng.choice([-10, -2, -1, 1, 2, 10]))
        rejected = wrong if i % 2 else f"The sum of {a} and {b} is {a + b}."
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": rejected})
    return rows


def default_recipe(folder: Path, steps: int, batch_size: int) -> Recipe:
    """SFT on the quickstart's addition data for 4 steps, then `steps` DPO steps on generated pairs."""
    pairs = folder / "pairs.json"
    pairs.write_text(json.dumps(preference_rows(240), indent=1))
    data: dict[str, Any] = {
        "name": "dpo-overhead",
        "base_model": "smollm2-135m-instruct",
        "data": {
            "path": str(ROOT / "recipes" / "data" / "addition.json"),
            "system_prompt": "You are a calculator.",
            "held_out": 60,
            "max_length": 128,
        },
        "train": {
            "method": "lora",
            "max_steps": 4,
            "batch_size": 8,
            "learning_rate": 1.0e-3,
            "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
        },
        "tune": {
            "objective": "dpo",
            "data": {"path": str(pairs), "held_out": 40, "max_length": 128},
            "max_steps": steps,
            "batch_size": batch_size,
            "learning_rate": 5.0e-5,
            "beta": 0.1,
            "checkpoint_every": 50,
        },
        "merge": {"dtype": "bfloat16"},
        "export": {"gguf": [], "nf4": False, "gptq": False, "awq": False},
    }
    return parse_recipe(data, "dpo-overhead (built in)", folder / "dpo-overhead.yaml")


def tokens_per_s(history: list[dict[str, Any]], runtime: float) -> float:
    """TRL's cumulative num_tokens at the last log over the Trainer's train_runtime (both sides)."""
    tokens = [log["num_tokens"] for log in history if "num_tokens" in log][-1]
    return tokens / runtime


def workbench_run(recipe: Recipe, home: Path) -> float:
    """The tune stage, forced (train and data cached after the first run): returns its tokens/s."""
    run_recipe(recipe, home, stages=["tune"], force=["tune"], run_id=RUN_ID)
    out = home / RUN_ID / "tune"
    summary = json.loads((out / "tune_summary.json").read_text())
    history = json.loads((out / "log_history.json").read_text())
    return tokens_per_s(history, summary["train_runtime_s"])


def bare_trl(recipe: Recipe, adapter: Path, train_jsonl: Path, workdir: Path) -> float:
    """What a person would write by hand with TRL + peft: returns tokens/s."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from workbench.core.models import resolve_model

    t = recipe.tune
    assert t is not None
    rows = [json.loads(line) for line in train_jsonl.read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{key: r[key] for key in ("prompt", "chosen", "rejected")} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # saved with the adapter by the train stage
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    base = AutoModelForCausalLM.from_pretrained(
        resolve_model(recipe.base_model), dtype=torch.bfloat16 if bf16 else torch.float32
    )
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    args = DPOConfig(
        output_dir=str(workdir),
        max_steps=t.max_steps if t.max_steps is not None else -1,  # the workbench's tune.max_steps
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=1,
        save_strategy="steps",  # the workbench's cadence: a fair comparison includes its checkpoints
        save_steps=t.checkpoint_every,
        save_total_limit=2,
        report_to="none",
        use_cpu=not cuda,
        bf16=bf16,  # TRL defaults to bf16, which is emulated (slow) on most CPUs
        gradient_checkpointing=t.gradient_checkpointing,  # TRL defaults to True
        beta=t.beta,
        max_length=t.data.max_length if t.data else recipe.data.max_length,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    return tokens_per_s(trainer.state.log_history, result.metrics["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, help="a recipe with a tune: {objective: dpo} section")
    parser.add_argument("--steps", type=int, default=12, help="DPO steps per run")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="preference pairs per step (default: 8, or the recipe's)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.recipe:
            sizes = [f"tune.batch_size={args.batch_size}"] if args.batch_size else []
            recipe = load_recipe(args.recipe, [f"tune.max_steps={args.steps}", *sizes])
        else:
            recipe = default_recipe(folder, args.steps, args.batch_size or 8)
        if recipe.tune is None or recipe.tune.objective != "dpo" or recipe.tune.start != "adapter":
            sys.exit(f"{args.recipe}: needs a tune section with objective dpo and start adapter (the default)")
        home = folder / "runs"
        began = started = time.perf_counter()
        run_recipe(recipe, home, stages=["train"], run_id=RUN_ID)  # the supervised adapter both sides continue
        print(f"supervised adapter ready ({time.perf_counter() - started:.0f}s)", flush=True)
        adapter, train_jsonl = home / RUN_ID / "train", home / RUN_ID / "tune" / "train.jsonl"
        ours, bare = [], []
        for rep in range(args.reps):
            started = time.perf_counter()
            ours.append(workbench_run(recipe, home))
            bare.append(bare_trl(recipe, adapter, train_jsonl, folder / f"bare{rep}"))
            print(
                f"rep {rep + 1}: workbench {ours[-1]:.1f} tok/s, bare TRL {bare[-1]:.1f} tok/s "
                f"({time.perf_counter() - started:.0f}s, load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)",
                flush=True,
            )
        batch = recipe.tune.batch_size
        total = time.perf_counter() - began
    ratio = statistics.median(ours) / statistics.median(bare)
    source = args.recipe.name if args.recipe else "built-in"
    print(
        f"\nDPO workbench / bare TRL tokens/s: {ratio:.3f}  (target >= 0.95; {args.steps} steps of {batch} pairs x "
        f"{args.reps} reps, recipe {source}, {total:.0f}s in all)"
    )


if __name__ == "__main__":
    main()
