"""What the per-tensor search costs beyond the quickstart's 135M parameters: on the ~1.1B random Llama the
roofline script builds (hidden 2048, 16 layers; the default model's tokenizer), the task importance matrix
and the sensitivity trials of `export.search`, as the export runs them — wall time, model forwards and the
peak memory of the trials' worker and of llama-quantize. Random weights say nothing of fidelity, so only
time and memory are reported; the conversations are the quickstart's addition rows through the chat
template (32 measured, the rest calibrating).

    .venv/bin/python benchmarks/search_cost.py [--groups kind|layer] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import roofline  # noqa: E402

from workbench import workers  # noqa: E402
from workbench.core.gguf_types import DEFAULT_SEARCH_TYPES  # noqa: E402
from workbench.data.dataset import render  # noqa: E402
from workbench.eval import fidelity  # noqa: E402
from workbench.export import gguf, imatrix, search, trials  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="kind", choices=["kind", "layer"])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "workbench-1b")
    parser.add_argument("--measure-rows", type=int, default=32)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    (f16,) = roofline.one_billion(args.folder, ["f16"])
    tokenizer = AutoTokenizer.from_pretrained(args.folder / "hf")
    pairs = json.loads((ROOT / "recipes" / "data" / "addition.json").read_text())
    rows = [{"messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}]}
            for p in pairs]  # fmt: skip
    calibrating, measured = rows[: -args.measure_rows], rows[-args.measure_rows :]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = [render(row, tokenizer) for row in calibrating]
        calib = imatrix.calibration("task", texts, tokenizer)
        started = time.monotonic()
        provenance = imatrix.compute(f16, calib, work / "imatrix.gguf", work / "cache")
        matrix = work / provenance.file
        imatrix_seconds = time.monotonic() - started
        sequences = fidelity.fidelity_sequences(measured, tokenizer, len(measured))
        starts = fidelity.answer_starts(measured, tokenizer, sequences)
        all_groups = search.groups(gguf.tensors(f16), args.groups)
        baseline, by_choice = search.sensitivity_trials(all_groups, list(DEFAULT_SEARCH_TYPES), matrix)
        job = trials.TrialsJob(f16, [baseline, *by_choice.values()], sequences, starts, work / "trials.jsonl")
        started = time.monotonic()
        outcome = workers.run("gguf.trials", job, name="trials", log=work / "trials.log")
        result = outcome.value_as(trials.TrialsResult)
        seconds = time.monotonic() - started
    weights = sum(group.weights for group in all_groups)
    print(f"~{weights / 1e9:.2f}B searched weights in {len(all_groups)} groups ({args.groups}); "
          f"{len(sequences)} measuring conversations, {sum(map(len, sequences))} tokens")  # fmt: skip
    print(f"importance matrix: {calib.tokens} tokens, {imatrix_seconds / 60:.1f} min; "
          f"llama-imatrix peak {provenance.peak_rss_mb} MB")  # fmt: skip
    print(f"search: {len(job.trials)} trials, {result.forwards} forwards, {seconds / 60:.1f} min "
          f"({seconds / len(job.trials):.1f} s a trial); trials worker peak {outcome.peak_rss_mb} MB, "
          f"llama-quantize peak {result.quantize_peak_mb} MB")  # fmt: skip


if __name__ == "__main__":
    main()
