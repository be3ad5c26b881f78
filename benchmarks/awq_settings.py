"""What AWQ's expensive parts buy: export time and fidelity of AWQ (GPTQModel, 4-bit) with and without
the clip search, with the calibration forwards in bf16 (GPTQModel's choice on CPU) or fp32, and with
fewer calibration rows, and calibrated on the task (training rows) or on generic text (`export.calibration`),
side by side on one run's merged model. Fidelity is
the workbench's own (KLD / top-1 agreement vs the merged model on held-out conversations), through the
same workers the pipeline uses, and the run's held-out task score with its kept % of the merged model's
(paired 95% bootstrap interval over the same items, as the report computes it). GPTQ is measured too,
for the calibration-size lever.

Uses a finished run (default: the quickstart):

    .venv/bin/python benchmarks/awq_settings.py [--run quickstart] [--settings awq:noclip:64:float32:generic,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import workers  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.data.files import read_jsonl  # noqa: E402
from workbench.eval import tasks  # noqa: E402
from workbench.eval.fidelity import answer_starts, fidelity_sequences  # noqa: E402
from workbench.eval.worker import EvalJob, EvalResult, FidelityJob  # noqa: E402
from workbench.export.gptq import GPTQJob, calibration  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402
from workbench.report.paired import compare_items  # noqa: E402

TASK, METRIC = "heldout", "exact_match,strip"  # lm-eval's metric,filter as stored
DEFAULT = ",".join([
    "awq:clip:64:bfloat16", "awq:noclip:64:bfloat16", "awq:clip:64:float32", "awq:noclip:64:float32",
    "awq:noclip:32:float32", "gptq:-:64:bfloat16", "gptq:-:64:float32", "gptq:-:32:float32",
])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--settings", default=DEFAULT,
                        help="method:clip|noclip|-:calibration rows:dtype of the calibration forwards"
                             "[:task|generic], comma-separated")  # fmt: skip
    parser.add_argument("--rows", type=int, default=60, help="held-out conversations compared")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    store = Store(args.home / "workbench.db")
    run_dir = args.home / args.run
    merged = next(v for v in store.variants(args.run) if v.is_reference)
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    held_out = read_jsonl(run_dir / "data" / "held_out.jsonl")
    sequences = fidelity_sequences(held_out, tokenizer, args.rows)
    answers = answer_starts(held_out, tokenizer, sequences)
    merged_items = next(i.values for i in store.items(args.run)
                        if i.model == merged.name and i.task == TASK and i.metric == METRIC)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="awq-settings-") as tmp:
        task_dir = Path(tmp) / "tasks"  # the run's task, its data files made absolute as the eval stage does
        tasks.copy_task_folders([run_dir / "eval" / "tasks"], task_dir)
        for setting in args.settings.split(","):
            method, clip, count, dtype, source = (setting.split(":") + ["task"])[:5]
            out = Path(tmp) / setting.replace(":", "-")
            export = GPTQJob(method=method, merged=Path(merged.path), out=out, bits=4, group_size=64, desc_act=False,
                             awq_clip=clip != "noclip", dtype=dtype,
                             calibration=calibration(source, run_dir / "data", tokenizer, int(count)))  # fmt: skip
            made = workers.run("gptq.export", export, name=setting, log=Path(tmp) / f"{out.name}.log")
            if not made.ok:
                print(f"{setting}: FAILED {made.error}", flush=True)
                continue
            job = EvalJob(name=setting, format=method, path=str(out), out=out / "eval", device="cpu", tasks=[TASK],
                          include=task_dir, include_defaults=False, limit=None, num_fewshot=None, seed=1234,
                          batch_size=8, max_length=2048, bootstrap_iters=0,
                          fidelity=FidelityJob(merged.path, sequences, answers=answers))  # fmt: skip
            result = workers.run("eval.model", job, name=setting).value_as(EvalResult)
            fidelity = result.fidelity
            assert fidelity is not None and result.items is not None
            answer = fidelity.answer_kld_mean or 0.0
            items = next(i.values for i in result.items if i.task == TASK and i.metric == METRIC)
            paired = compare_items(items, merged_items, higher_is_better=True, keep=98.0)
            assert paired is not None
            score = f"{100 * sum(items.values()) / len(items):.1f}"
            kept = f"{paired.kept:.1f} [{paired.low:.1f}, {paired.high:.1f}]"
            rows.append((setting, made.seconds, fidelity.kld_mean, answer, fidelity.top1_agreement, score, kept))
            print(f"{setting}: {made.seconds:.0f} s, KLD {fidelity.kld_mean:.4f} (answers {answer:.4f}), top-1 "
                  f"{fidelity.top1_agreement:.3f}, {TASK} {score}, kept {kept}", flush=True)  # fmt: skip
    reference = f"{100 * sum(merged_items.values()) / len(merged_items):.1f}"
    print(f"\nmerged model: {TASK} {METRIC} {reference} on {len(merged_items)} items")
    print(f"{'setting':34} {'export s':>9} {'KLD':>8} {'ans KLD':>8} {'top-1':>6} {TASK:>8} {'kept % [95%]':>20}")
    for setting, seconds, kld, answer, top1, score, kept in rows:
        print(f"{setting:34} {seconds:>9.0f} {kld:>8.4f} {answer:>8.4f} {top1:>6.3f} {score:>8} {kept:>20}")


if __name__ == "__main__":
    main()
