"""Exact-match accuracy of the base and the merged model on a run's held-out rows (greedy decoding).

Shows the gain a fine-tune bought on its own task, e.g. for the quickstart:

    .venv/bin/python benchmarks/task_accuracy.py quickstart [--limit 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.pipeline.runner import default_home  # noqa: E402


def exact_match(model_dir: str, rows: list[dict], batch: int = 16) -> tuple[float, list[str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        prompts = [
            tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in chunk
        ]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    hits = sum(a.strip() == r["messages"][-1]["content"].strip() for a, r in zip(answers, rows, strict=True))
    return hits / len(rows), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    run_dir = args.home / args.run
    rows = [json.loads(line) for line in (run_dir / "data" / "held_out.jsonl").read_text().splitlines()][: args.limit]
    merged = run_dir / "merge"
    base = json.loads((run_dir / "train" / "train_summary.json").read_text())["base_model"]
    for label, model_dir in (("base", base), ("merged", str(merged))):
        started = time.perf_counter()
        score, answers = exact_match(model_dir, rows)
        print(
            f"{label:7} exact match {score:.3f} on {len(rows)} held-out rows ({time.perf_counter() - started:.0f}s); "
            f"first answer: {answers[0].strip()[:60]!r}",
            flush=True,
        )


if __name__ == "__main__":
    main()
