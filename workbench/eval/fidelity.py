"""Fidelity of a variant to the merged 16-bit model: how far its next-token distributions moved.

Both models read the same token ids (the training tokenizer's, so tokenizer drift cannot hide or fake a
difference; serving parity checks tokenizers separately). Per position: KL(reference || variant), whether
the most likely token agrees, and each model's log-likelihood of the actual next token. This is what
llama.cpp's `perplexity --kl-divergence` reports for GGUF, for every format alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

LogitsOf = Callable[[list[list[int]]], Iterator[np.ndarray]]  # sequences -> logits after each token, in order


def log_softmax(logits: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    logits = logits.astype(dtype, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class Fidelity:
    tokens: int
    kld_mean: float
    kld_p99: float
    kld_max: float
    top1_agreement: float
    ppl_reference: float
    ppl_variant: float
    ppl_ratio: float
    vocab_compared: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compare(sequences: list[list[int]], reference: LogitsOf, variant: LogitsOf) -> Fidelity:
    sequences = [ids for ids in sequences if len(ids) >= 2]
    klds: list[np.ndarray] = []
    agree = nll_ref = nll_var = 0.0
    vocab = 0
    for ids, ref_all, var_all in zip(sequences, reference(sequences), variant(sequences), strict=True):
        targets = np.asarray(ids[1:])
        ref_logits, var_logits = ref_all[:-1], var_all[:-1]
        vocab = min(ref_logits.shape[-1], var_logits.shape[-1])  # padded vocabularies differ in length only
        ref = log_softmax(ref_logits[:, :vocab], np.float64)
        var = log_softmax(var_logits[:, :vocab], np.float64)
        klds.append((np.exp(ref) * (ref - var)).sum(axis=-1))
        agree += float((ref.argmax(-1) == var.argmax(-1)).sum())
        rows = np.arange(len(targets))
        nll_ref -= float(ref[rows, targets].sum())
        nll_var -= float(var[rows, targets].sum())
    if not klds:
        raise ValueError("no sequence of two or more tokens to compare")
    kld = np.concatenate(klds).clip(min=0.0)  # tiny negatives are rounding
    count = len(kld)
    ppl_ref, ppl_var = float(np.exp(nll_ref / count)), float(np.exp(nll_var / count))
    return Fidelity(
        tokens=count,
        kld_mean=float(kld.mean()),
        kld_p99=float(np.percentile(kld, 99)),
        kld_max=float(kld.max()),
        top1_agreement=agree / count,
        ppl_reference=ppl_ref,
        ppl_variant=ppl_var,
        ppl_ratio=ppl_var / ppl_ref,
        vocab_compared=vocab,
    )


def per_sequence(logits: Callable[[list[int]], np.ndarray]) -> LogitsOf:
    """A one-sequence-at-a-time logits function (llama.cpp) as a LogitsOf."""
    return lambda sequences: (logits(ids) for ids in sequences)


def hf_logits(model: object, batch_size: int = 8) -> LogitsOf:
    """Logits of a transformers causal LM, in right-padded batches: a causal model's logits at real
    positions do not depend on padding that comes after them."""
    import torch

    device = next(model.parameters()).device  # type: ignore[attr-defined]

    def logits(sequences: list[list[int]]) -> Iterator[np.ndarray]:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(len(ids) for ids in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            with torch.inference_mode():
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # type: ignore[operator]
            out = out.float().cpu().numpy()
            yield from (out[row, : len(seq)] for row, seq in enumerate(batch))

    return logits
