"""The workbench's fidelity numbers against llama.cpp's own `llama-perplexity --kl-divergence` on the same
text, context and tokens: mean KLD, top-1 agreement ("same top p") and the perplexity ratio of a GGUF
variant to the base (target: each within 5% relative).

llama-perplexity (built once from the llama.cpp source vendored in the installed llama-cpp-python, as
llama_bench_parity.py builds llama-bench) cuts the text into chunks of -c tokens, puts BOS first in each
when the model wants one, and scores the second half of every chunk. The workbench side scores exactly
those positions with its own code (`workbench.eval.fidelity`), reading logits through the same in-process
llama.cpp LM the eval stage uses; base = the run's F16 GGUF for both. For the record it also prints what
the eval stage reports (the merged model through torch as the reference), and the perplexity ratio over
the answer tokens only next to the whole-conversation one, on the held-out conversations.

Text: the run's held-out conversations through the chat template (default: the quickstart's):

    .venv/bin/python benchmarks/kld_parity.py [--run quickstart] [--variant Q4_K_M] [-c 128]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.bench import llama_bench  # noqa: E402
from workbench.core.devices import usable_cores  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.data.dataset import render  # noqa: E402
from workbench.data.files import read_jsonl  # noqa: E402
from workbench.eval import fidelity  # noqa: E402
from workbench.eval.fidelity import answer_starts, fidelity_sequences  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402

PATTERNS = {
    "kld_mean": r"Mean\s+KLD:\s+([0-9.]+)",
    "top1_agreement": r"Same top p:\s+([0-9.]+)",
    "ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s+([0-9.]+)",
}


def llama_perplexity(binary: Path, base: Path, variant: Path, text: Path, context: int, work: Path) -> dict:
    logits = work / "base-logits.bin"
    common = ["-c", str(context), "-b", str(context), "-t", str(usable_cores()), "-ngl", "0"]
    subprocess.run([str(binary), "-m", str(base), "-f", str(text), "--kl-divergence-base", str(logits), *common],
                   check=True, capture_output=True, text=True)  # fmt: skip
    done = subprocess.run([str(binary), "-m", str(variant), "--kl-divergence-base", str(logits), "--kl-divergence",
                           *common], check=True, capture_output=True, text=True)  # fmt: skip
    output = done.stdout + done.stderr
    found = {}
    for key, pattern in PATTERNS.items():
        match = re.search(pattern, output)
        if match is None:
            sys.exit(f"llama-perplexity printed no {key}:\n{output[-2000:]}")
        found[key] = float(match.group(1)) / (100 if key == "top1_agreement" else 1)
    return found


def chunks(tokens: list[int], context: int, bos: int | None) -> list[list[int]]:
    """llama-perplexity's chunks: consecutive `context` tokens, the first replaced by BOS."""
    cut = [tokens[i : i + context] for i in range(0, len(tokens) - context + 1, context)]
    return [[bos, *chunk[1:]] if bos is not None else chunk for chunk in cut]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--variant", default="Q4_K_M", help="the GGUF type of the run to compare")
    parser.add_argument("-c", "--context", type=int, default=128)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.eval.llamacpp_lm import LlamaCppLM

    variants = {v.name: v for v in Store(args.home / "workbench.db").variants(args.run)}
    merged = next(v for v in variants.values() if v.is_reference)
    base = Path(next(v.path for name, v in variants.items() if name.endswith("-F16.gguf")))
    variant = Path(next(v.path for name, v in variants.items() if name.endswith(f"-{args.variant}.gguf")))
    rows = read_jsonl(args.home / args.run / "data" / "held_out.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    text = "".join(render(row, tokenizer) for row in rows)
    binary = llama_bench.find_or_build("llama-perplexity")

    quantized, reference = LlamaCppLM(str(variant), max_length=args.context), LlamaCppLM(str(base), args.context)
    bos = reference.llm.token_bos() if reference.llm._model.add_bos_token() else None
    # as llama-perplexity tokenizes its text file: BOS as the model says, special-token text read as text
    tokens = reference.llm.tokenize(text.encode("utf-8"), add_bos=bos is not None, special=False)
    pieces = chunks(tokens, args.context, bos)
    starts = [args.context // 2 + 1] * len(pieces)  # predictions from the middle of each chunk on
    found, _ = fidelity.positions(pieces, fidelity.per_sequence(reference.logits),
                                  fidelity.per_sequence(quantized.logits), starts)  # fmt: skip
    kld, agreement, ratio = found.summary()
    ours = {"kld_mean": kld, "top1_agreement": agreement, "ppl_ratio": ratio}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "text.txt").write_text(text, encoding="utf-8")
        theirs = llama_perplexity(binary, base, variant, Path(tmp) / "text.txt", args.context, Path(tmp))

    print(f"{variant.name} vs {base.name}: {len(pieces)} chunks of {args.context} tokens, {len(found.kld)} scored")
    print(f"{'':16} {'workbench':>10} {'llama-perplexity':>17} {'rel. diff':>10}")
    within = True
    for key in PATTERNS:
        difference = abs(ours[key] - theirs[key]) / abs(theirs[key])
        within &= difference <= 0.05
        print(f"{key:16} {ours[key]:10.5f} {theirs[key]:17.5f} {100 * difference:9.2f}%")
    print("within 5%: " + ("yes" if within else "NO"))

    # what the eval stage reports: the merged model through torch, whole conversations and answers only
    sequences = fidelity_sequences(rows, tokenizer, len(rows))
    model = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32).eval()
    stage = fidelity.compare(sequences, fidelity.hf_logits(model), fidelity.per_sequence(quantized.logits),
                             answer_starts(rows, tokenizer, sequences))  # fmt: skip
    print(f"\neval stage ({len(sequences)} held-out conversations, reference: the merged model through torch):")
    print(f"  KLD {stage.kld_mean:.5f}, top-1 {stage.top1_agreement:.4f}, perplexity ratio {stage.ppl_ratio:.4f}"
          f" (whole conversations); answer tokens only ({stage.answer_tokens}): KLD {stage.answer_kld_mean:.5f},"
          f" perplexity ratio {stage.answer_ppl_ratio:.4f}")  # fmt: skip
    quantized.close()
    reference.close()


if __name__ == "__main__":
    main()
