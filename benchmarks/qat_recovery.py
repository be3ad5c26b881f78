"""What quantization-aware training recovered, with one yardstick for both files of each pair of twins: the
plain run's GGUF file and the QAT run's, each against the *plain* run's 16-bit model (the model one would
otherwise ship, and with `train.qat.steps` the QAT run's teacher), on the same held-out conversations:

- KLD on the answer tokens (what training constrains) and on whole conversations, and the share of the
  plain file's KLD the QAT file recovered;
- the task score per held-out item: the plain file's loss against the plain 16-bit model, the QAT file's
  loss against the same model, the share recovered (torchao's definition) with a 95% paired-bootstrap
  interval, and the QAT file against the plain file (paired).

Each pair is one seed; with several the means are printed too. Uses finished runs, e.g. for one seed:

    workbench sweep recipes/qat-q4_k_m.yaml --vary train.qat.target=none,q4_k_m
    .venv/bin/python benchmarks/qat_recovery.py --pair qat-q4_k_m-target-none qat-q4_k_m --variant Q4_K_M
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import workers  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.data.files import read_jsonl  # noqa: E402
from workbench.eval.fidelity import Fidelity, answer_starts, fidelity_sequences  # noqa: E402
from workbench.eval.worker import EvalJob, EvalResult, FidelityJob  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402
from workbench.report.paired import DRAWS, SEED, compare_items  # noqa: E402


def kld(variant_path: str, reference: str, sequences: list[list[int]], answers: list[int], out: Path) -> Fidelity:
    job = EvalJob(name=Path(variant_path).name, format="gguf", path=variant_path, out=out, device="cpu", tasks=[],
                  include=out, include_defaults=False, limit=None, num_fewshot=None, seed=1234, batch_size=8,
                  max_length=2048, bootstrap_iters=0,
                  fidelity=FidelityJob(reference, sequences, answers))  # fmt: skip
    fidelity = workers.run("eval.model", job, name=job.name).value_as(EvalResult).fidelity
    assert fidelity is not None
    return fidelity


def recovered(plain: float, qat: float) -> float:
    """% of the plain file's loss (KLD, or task score lost) the QAT file does not have."""
    return 100.0 * (plain - qat) / plain if plain else float("nan")


@dataclass
class Pair:
    answer_kld: tuple[float, float]  # plain file, QAT file: against the plain 16-bit model
    kld: tuple[float, float]
    scores: tuple[float, float, float] | None  # plain 16-bit, plain file, QAT file
    task_recovered: float | None
    interval: tuple[float, float] | None


def item_scores(store: Store, run: str, model: str, task: str) -> dict[int, float]:
    for scores in store.items(run):
        if scores.model == model and scores.task == task:
            return scores.values
    return {}


def measure(store: Store, home: Path, plain_run: str, qat_run: str, variant: str, rows: int, task: str) -> Pair:
    from transformers import AutoTokenizer

    merged = {run: next(v for v in store.variants(run) if v.is_reference) for run in (plain_run, qat_run)}
    files = {run: next(v for v in store.variants(run) if v.name.endswith(f"-{variant}.gguf"))
             for run in (plain_run, qat_run)}  # fmt: skip
    held_out = read_jsonl(home / plain_run / "data" / "held_out.jsonl")
    if held_out != read_jsonl(home / qat_run / "data" / "held_out.jsonl"):
        raise SystemExit(f"{plain_run} and {qat_run} hold out different rows: they are not twins")
    tokenizer = AutoTokenizer.from_pretrained(merged[plain_run].path)
    sequences = fidelity_sequences(held_out, tokenizer, rows)
    answers = answer_starts(held_out, tokenizer, sequences)
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run, reference in [(plain_run, plain_run), (qat_run, plain_run), (qat_run, qat_run)]:
            result = kld(files[run].path, merged[reference].path, sequences, answers, Path(tmp) / f"{run}-{reference}")
            found[(run, reference)] = result
            print(f"  {files[run].name} vs {reference}'s 16-bit model: answer-token KLD {result.answer_kld_mean:.4f}"
                  f" ({result.answer_tokens} tokens), whole-conversation KLD {result.kld_mean:.4f},"
                  f" top-1 {result.top1_agreement:.3f}", flush=True)  # fmt: skip
    plain, qat = found[(plain_run, plain_run)], found[(qat_run, plain_run)]
    assert plain.answer_kld_mean is not None and qat.answer_kld_mean is not None
    pair = Pair((plain.answer_kld_mean, qat.answer_kld_mean), (plain.kld_mean, qat.kld_mean), None, None, None)

    sixteen = item_scores(store, plain_run, merged[plain_run].name, task)
    plain_items = item_scores(store, plain_run, files[plain_run].name, task)
    qat_items = item_scores(store, qat_run, files[qat_run].name, task)
    shared = sorted(sixteen.keys() & plain_items.keys() & qat_items.keys())
    if not shared:
        print(f"  no per-item {task} scores shared by the three models: task recovery not measured")
        return pair
    r, p, q = (np.array([values[i] for i in shared]) for values in (sixteen, plain_items, qat_items))
    pair.scores = (float(r.mean()), float(p.mean()), float(q.mean()))
    versus = compare_items(qat_items, plain_items, True, 100.0)
    assert versus is not None
    print(f"  {task} on {len(shared)} items: plain 16-bit {r.mean():.3f}, plain {variant} {p.mean():.3f},"
          f" QAT {variant} {q.mean():.3f}; QAT - plain file {versus.difference:+.3f}"
          f" [{versus.difference_low:+.3f}, {versus.difference_high:+.3f}] ({versus.verdict})")  # fmt: skip
    if p.mean() >= r.mean():
        print(f"  the plain {variant} lost no {task} score against its 16-bit model: no loss to recover")
        return pair
    pair.task_recovered = recovered(float(r.mean() - p.mean()), float(r.mean() - q.mean()))
    draws = np.random.default_rng(SEED).integers(0, len(shared), size=(DRAWS, len(shared)))
    lost_plain, lost_qat = (r[draws] - p[draws]).mean(axis=1), (r[draws] - q[draws]).mean(axis=1)
    usable = lost_plain > 0
    if usable.mean() > 0.95:  # a share of a loss that is not there in most draws has no interval
        shares = 100.0 * (lost_plain[usable] - lost_qat[usable]) / lost_plain[usable]
        low, high = np.percentile(shares, [2.5, 97.5])
        pair.interval = (float(low), float(high))
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", nargs=2, action="append", required=True, metavar=("PLAIN_RUN", "QAT_RUN"),
                        help="twins of one seed (repeat for each seed)")  # fmt: skip
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--rows", type=int, default=60, help="held-out conversations compared")
    parser.add_argument("--variant", default="Q4_0", help="the GGUF type both runs exported")
    parser.add_argument("--task", default="heldout", help="the task whose per-item scores are compared")
    args = parser.parse_args()
    store = Store(args.home / "workbench.db")
    pairs = []
    for plain_run, qat_run in args.pair:
        print(f"{plain_run} (plain) / {qat_run} (QAT), {args.variant}:", flush=True)
        pair = measure(store, args.home, plain_run, qat_run, args.variant, args.rows, args.task)
        pairs.append(pair)
        answer = recovered(*pair.answer_kld)
        whole = recovered(*pair.kld)
        print(f"  KLD recovered: answer tokens {answer:.0f}% ({pair.answer_kld[1] / pair.answer_kld[0]:.2f}x the"
              f" plain file's; goal <= 0.6x), whole conversations {whole:.0f}%")  # fmt: skip
        if pair.task_recovered is not None:
            shown = f" [{pair.interval[0]:.0f}%, {pair.interval[1]:.0f}%]" if pair.interval else " (no interval:"
            shown += "" if pair.interval else " in some resamples the plain file loses nothing)"
            print(f"  task-score loss recovered: {pair.task_recovered:.0f}%{shown}")
    if len(pairs) > 1:
        ratios = [p.answer_kld[1] / p.answer_kld[0] for p in pairs]
        print(f"\nmean of {len(pairs)} seeds: answer-token KLD {np.mean(ratios):.2f}x the plain file's"
              f" (recovered {100 * (1 - np.mean(ratios)):.0f}%), whole conversations recovered"
              f" {np.mean([recovered(*p.kld) for p in pairs]):.0f}%")  # fmt: skip
        tasks = [p.task_recovered for p in pairs if p.task_recovered is not None]
        if tasks:
            print(f"task-score loss recovered: mean {np.mean(tasks):.0f}% (each: "
                  + ", ".join(f"{t:.0f}%" for t in tasks) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
