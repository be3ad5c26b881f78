"""What quantization-aware training recovered, with one yardstick for both files: the KLD of the plain
run's Q4_0 and of the QAT run's Q4_0, each against the plain run's 16-bit model (the model one would
otherwise ship), on the same held-out conversations; and, for the record, each file against its own run's
16-bit model (what `workbench compare` reports). Prints the recovered share (torchao's definition).

Uses two finished runs (e.g. `workbench sweep recipes/qat-q4_0.yaml --vary train.qat.target=none,q4_0`):

    .venv/bin/python benchmarks/qat_recovery.py PLAIN_RUN QAT_RUN [--rows 60] [--variant Q4_0]
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
from workbench.eval.fidelity import Fidelity, fidelity_sequences  # noqa: E402
from workbench.eval.worker import EvalJob, EvalResult, FidelityJob  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402


def kld(variant_path: str, reference: str, sequences: list[list[int]], out: Path) -> Fidelity:
    job = EvalJob(name=Path(variant_path).name, format="gguf", path=variant_path, out=out, device="cpu", tasks=[],
                  include=out, include_defaults=False, limit=None, num_fewshot=None, seed=1234, batch_size=8,
                  max_length=2048, bootstrap_iters=0,
                  fidelity=FidelityJob(reference, sequences, answers=[]))  # fmt: skip
    fidelity = workers.run("eval.model", job, name=job.name).value_as(EvalResult).fidelity
    assert fidelity is not None
    return fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plain")
    parser.add_argument("qat")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--rows", type=int, default=60, help="held-out conversations compared")
    parser.add_argument("--variant", default="Q4_0", help="the GGUF type both runs exported")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    store = Store(args.home / "workbench.db")
    merged = {run: next(v for v in store.variants(run) if v.is_reference) for run in (args.plain, args.qat)}
    files = {run: next(v for v in store.variants(run) if v.name.endswith(f"-{args.variant}.gguf"))
             for run in (args.plain, args.qat)}  # fmt: skip
    held_out = read_jsonl(args.home / args.plain / "data" / "held_out.jsonl")
    sequences = fidelity_sequences(held_out, AutoTokenizer.from_pretrained(merged[args.plain].path), args.rows)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run, reference in [(args.plain, args.plain), (args.qat, args.plain), (args.qat, args.qat)]:
            found = kld(files[run].path, merged[reference].path, sequences, Path(tmp) / f"{run}-{reference}")
            results[(run, reference)] = found
            print(f"{files[run].name} vs {reference}'s 16-bit model: KLD {found.kld_mean:.4f}, "
                  f"top-1 {found.top1_agreement:.3f}, ppl ratio {found.ppl_ratio:.3f}", flush=True)  # fmt: skip
    plain = results[(args.plain, args.plain)].kld_mean
    qat = results[(args.qat, args.plain)].kld_mean
    own = results[(args.qat, args.qat)].kld_mean
    print(f"\nKLD vs the plain 16-bit model: plain {args.variant} {plain:.4f}, QAT {args.variant} {qat:.4f}: "
          f"recovered {100 * (plain - qat) / plain:.0f}% (goal >= 50%)")  # fmt: skip
    print(f"each vs its own 16-bit model: plain {plain:.4f}, QAT {own:.4f}: "
          f"recovered {100 * (plain - own) / plain:.0f}%")  # fmt: skip


if __name__ == "__main__":
    main()
