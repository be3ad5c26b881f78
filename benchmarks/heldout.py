"""What the GGUF benchmarks share: a finished run's merged model, F16 GGUF, tokenizer and data, and a meter of
any GGUF file's KLD to that F16 file on the run's held-out conversations (the f16 logits computed once;
`workbench.eval.fidelity`, the eval stage's meter, held to llama-perplexity by kld_parity.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.records import Variant
from workbench.core.store import Store
from workbench.data.files import read_jsonl
from workbench.eval import fidelity


@dataclass
class HeldOut:
    merged: Variant
    f16: Path
    tokenizer: Any
    data: Path  # the run's data stage folder
    sequences: list[list[int]]
    starts: list[int]
    cached: list[Any]  # the F16 file's logits over `sequences`

    def measure(self, path: Path) -> fidelity.Fidelity:
        from workbench.eval.llamacpp_lm import LlamaCppLM

        model = LlamaCppLM(str(path), max_length=512)
        try:
            return fidelity.compare(self.sequences, lambda _: iter(self.cached), model.logits_of, self.starts)
        finally:
            model.close()


def load(home: Path, run: str, rows: int | None = None) -> HeldOut:
    from transformers import AutoTokenizer

    from workbench.eval.llamacpp_lm import LlamaCppLM

    variants = {v.name: v for v in Store(home / "workbench.db").variants(run)}
    merged = next(v for v in variants.values() if v.is_reference)
    f16 = Path(next(v.path for name, v in variants.items() if name.endswith("-F16.gguf")))
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    data = home / run / "data"
    held_out = read_jsonl(data / "held_out.jsonl")[:rows]
    sequences = fidelity.fidelity_sequences(held_out, tokenizer, len(held_out))
    reference = LlamaCppLM(str(f16), max_length=512)
    cached = list(reference.logits_of(sequences))
    reference.close()
    return HeldOut(merged, f16, tokenizer, data, sequences, fidelity.answer_starts(held_out, tokenizer, sequences),
                   cached)  # fmt: skip
