"""What an importance matrix buys on each rung of llama.cpp's ladder, on a finished run's model: every type
quantized from the run's F16 GGUF without one, with the task matrix (the training split through the chat
template, as the export computes it) and with the generic one (Python's documentation text), then KLD to
the F16 file on the run's held-out conversations — whole conversations and answer tokens — measured with
the workbench's fidelity meter (`workbench.eval.fidelity`, held to llama-perplexity by kld_parity.py).
One run, one table; the held-out split never calibrates anything.

    .venv/bin/python benchmarks/imatrix_ladder.py [--run quickstart] [--types q4_k_m,q3_k_m] [--rows 60]
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

from workbench.core.gguf_types import LADDER  # noqa: E402
from workbench.eval import fidelity  # noqa: E402
from workbench.export import gguf, imatrix  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402

CALIBRATIONS = ("none", "task", "generic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--types", default=",".join(t for t, rung in LADDER.items() if rung.uses_imatrix))
    parser.add_argument("--rows", type=int, default=60, help="held-out conversations measured")
    args = parser.parse_args()
    held = heldout.load(args.home, args.run, args.rows)
    f16, tokenizer, data = held.f16, held.tokenizer, held.data

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        matrices: dict[str, Path] = {}
        for source in ("task", "generic"):
            if source == "task":  # as the export computes it (less the rows its choices are measured on)
                calib = imatrix.task_calibration(data, tokenizer, None, measure_rows=32)
            else:
                calib = imatrix.calibration(source, imatrix.generic_texts(), tokenizer)
            started = time.monotonic()
            made = imatrix.compute(f16, calib, work / f"imatrix-{source}.gguf", work / "cache")
            matrices[source] = work / made.file
            print(f"imatrix {source}: {calib.rows} texts, {calib.tokens} tokens, {calib.chunks} chunks of "
                  f"{calib.context}: {time.monotonic() - started:.1f} s")  # fmt: skip
        print(f"\n{held.merged.name}: KLD to {f16.name} on {len(held.sequences)} held-out conversations "
              "(whole / answer tokens), llama-quantize from the F16 file")  # fmt: skip
        print(f"{'type':9} {'MB none':>8} " + " ".join(f"{c + ' KLD':>12} {c + ' ans':>10}" for c in CALIBRATIONS)
              + f" {'task vs none':>13} {'task vs generic (ans)':>22}")  # fmt: skip
        for name in args.types.split(","):
            rung = LADDER[name]
            row: dict[str, fidelity.Fidelity | None] = {}
            size = None
            for calibration in CALIBRATIONS:
                if calibration == "none" and rung.needs_imatrix:
                    row[calibration] = None
                    continue
                out = work / f"{name}-{calibration}.gguf"
                gguf.quantize(f16, out, name, imatrix=matrices.get(calibration)).value_as(gguf.Quantized)
                size = size or out.stat().st_size / 1e6
                row[calibration] = held.measure(out)
                out.unlink()
            cells = []
            for calibration in CALIBRATIONS:
                found = row[calibration]
                cells.append(
                    f"{found.kld_mean:12.4f} {found.answer_kld_mean or 0:10.4f}" if found else f"{'-':>12} {'-':>10}"
                )
            none, task, generic = (row[c] for c in CALIBRATIONS)
            gain = f"{100 * (task.kld_mean / none.kld_mean - 1):+12.1f}%" if none and task else f"{'-':>13}"
            versus = (
                f"{100 * ((task.answer_kld_mean or 0) / (generic.answer_kld_mean or 1) - 1):+21.1f}%"
                if task and generic
                else f"{'-':>22}"
            )
            print(f"{name:9} {size or 0:8.1f} " + " ".join(cells) + f" {gain} {versus}")


if __name__ == "__main__":
    main()
