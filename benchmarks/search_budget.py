"""The per-tensor search against llama.cpp's stock types, on a finished run's model, side by side in one run:
stock Q4_K_M and Q3_K_M without an importance matrix and with the task one, and the searched recipe under
each of their sizes (as the export searches it: sensitivities measured on training conversations the
importance matrix did not see, types allocated by the knapsack, llama-quantize with a tensor-type file and
the task matrix). Each file's KLD to the F16 GGUF on the run's held-out conversations (whole and answer
tokens; the held-out split steers nothing), its size, and what the search cost (trials, model forwards,
minutes).

    .venv/bin/python benchmarks/search_budget.py [--run quickstart] [--budgets q4_k_m,q3_k_m] [--groups kind]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import heldout  # noqa: E402

from workbench.core.gguf_types import DEFAULT_SEARCH_TYPES, parse_budget  # noqa: E402
from workbench.eval import fidelity  # noqa: E402
from workbench.export import choosing, gguf, imatrix, search, trials  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--budgets", default="q4_k_m,q3_k_m")
    parser.add_argument("--types", default=",".join(DEFAULT_SEARCH_TYPES))
    parser.add_argument("--groups", default="kind", choices=["kind", "layer"])
    parser.add_argument("--measure-rows", type=int, default=32)
    args = parser.parse_args()
    held = heldout.load(args.home, args.run)
    f16, tokenizer, data, merged = held.f16, held.tokenizer, held.data, held.merged

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.monotonic()
        calib = imatrix.task_calibration(data, tokenizer, None, args.measure_rows)
        matrix = work / imatrix.compute(f16, calib, work / "imatrix-task.gguf", work / "cache").file
        imatrix_seconds = time.monotonic() - started
        _, rows = imatrix.split_training(data, args.measure_rows)
        sequences = fidelity.fidelity_sequences(rows, tokenizer, len(rows))
        starts = fidelity.answer_starts(rows, tokenizer, sequences)

        started = time.monotonic()
        all_groups = search.groups(gguf.tensors(f16), args.groups)
        types = args.types.split(",")
        baseline, by_choice = search.sensitivity_trials(all_groups, types, matrix)
        job = trials.TrialsJob(f16, [baseline, *by_choice.values()], sequences, starts, work / "trials.jsonl")
        result = trials.run(job)
        measured = dict(zip(by_choice, result.measured[1:], strict=True))
        options = search.Options.measured(all_groups, types, result.measured[0], measured)
        sensitivities = choosing.Sensitivities(all_groups, options, result.measured[0], len(job.trials),
                                               result.forwards, 0.0)  # fmt: skip
        search_seconds = time.monotonic() - started
        print(f"{merged.name}: imatrix {imatrix_seconds:.0f} s; search ({args.groups}, {len(all_groups)} groups,"
              f" {len(job.trials)} trials, {result.forwards} forwards over {len(sequences)} training conversations)"
              f" {search_seconds / 60:.1f} min")  # fmt: skip
        print(f"KLD to {f16.name} on {len(held.sequences)} held-out conversations\n")
        print(f"{'file':28} {'MB':>7} {'KLD':>8} {'ans KLD':>8} {'top-1':>6}  plan")
        for text in args.budgets.split(","):
            budget = parse_budget(text)
            stock = work / f"{budget.label}.gguf"
            gguf.quantize(f16, stock, text).value_as(gguf.Quantized)
            with_task = work / f"{budget.label}-task.gguf"
            gguf.quantize(f16, with_task, text, imatrix=matrix).value_as(gguf.Quantized)
            planned = choosing.plan_budget(f16, budget, sensitivities, stock.stat().st_size)
            types_file = work / f"{budget.label}.txt"
            types_file.write_text(search.tensor_type_file(all_groups, planned.plan))
            searched = work / f"SEARCH-{budget.label}.gguf"
            gguf.quantize(f16, searched, planned.ftype, imatrix=matrix, tensor_types=types_file).value_as(
                gguf.Quantized
            )
            checked = choosing.check_searched(searched, planned, all_groups)
            for name, path, plan in ((budget.label, stock, ""), (f"{budget.label} + task imatrix", with_task, ""),
                                     (f"SEARCH-{budget.label}", searched, search.compact(planned.plan))):  # fmt: skip
                found = held.measure(path)
                print(f"{name:28} {path.stat().st_size / 1e6:7.2f} {found.kld_mean:8.4f} "
                      f"{found.answer_kld_mean or 0:8.4f} {found.top1_agreement:6.3f}  {plan}")  # fmt: skip
            if checked["not_as_planned"]:
                print(f"  not as planned: {checked['not_as_planned'][:3]}")


if __name__ == "__main__":
    main()
