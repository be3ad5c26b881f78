"""Fidelity of a variant to the merged 16-bit model: how far its next-token distributions moved.

Both models read the same token ids (the training tokenizer's, so tokenizer drift cannot hide or fake a
difference; serving parity checks tokenizers separately). Per position: KL(reference || variant), whether
the most likely token agrees, and each model's log-likelihood of the actual next token. This is what
llama.cpp's `perplexity --kl-divergence` reports for GGUF, for every format alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

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
    # the same over the answer tokens only (what training constrained); None without answer positions
    answer_tokens: int | None = None
    answer_kld_mean: float | None = None
    answer_ppl_ratio: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class Positions:
    """Per-position numbers of the compared sequences, in order."""

    kld: np.ndarray
    agree: np.ndarray
    nll_reference: np.ndarray
    nll_variant: np.ndarray

    def summary(self) -> tuple[float, float, float]:
        """(mean KLD, top-1 agreement, perplexity ratio variant / reference)."""
        ratio = float(np.exp((self.nll_variant.sum() - self.nll_reference.sum()) / len(self.kld)))
        return float(self.kld.mean()), float(self.agree.mean()), ratio


def positions(
    sequences: list[list[int]], reference: LogitsOf, variant: LogitsOf, starts: list[int] | None = None
) -> tuple[Positions, int]:
    """Per-position KL(reference || variant), top-1 agreement and both models' NLL of the actual next
    token, for the predictions of token `starts[i]` onwards of sequence i (default: from its second
    token); and the vocabulary size compared. Sequences of fewer than two tokens are skipped."""
    kept = [i for i, ids in enumerate(sequences) if len(ids) >= 2]
    sequences = [sequences[i] for i in kept]
    firsts = [max(1, starts[i]) if starts else 1 for i in kept]
    klds, agree, nll_ref, nll_var = [], [], [], []
    vocab = 0
    for ids, first, ref_all, var_all in zip(sequences, firsts, reference(sequences), variant(sequences), strict=True):
        targets = np.asarray(ids[first:])
        ref_logits, var_logits = ref_all[first - 1 : -1], var_all[first - 1 : -1]
        vocab = min(ref_logits.shape[-1], var_logits.shape[-1])  # padded vocabularies differ in length only
        ref = log_softmax(ref_logits[:, :vocab], np.float64)
        var = log_softmax(var_logits[:, :vocab], np.float64)
        rows = np.arange(len(targets))
        klds.append((np.exp(ref) * (ref - var)).sum(axis=-1))
        agree.append(ref.argmax(-1) == var.argmax(-1))
        nll_ref.append(-ref[rows, targets])
        nll_var.append(-var[rows, targets])
    if not klds or not sum(len(k) for k in klds):
        raise ValueError("no sequence of two or more tokens to compare")
    kld = np.concatenate(klds).clip(min=0.0)  # tiny negatives are rounding
    found = Positions(kld, np.concatenate(agree), np.concatenate(nll_ref), np.concatenate(nll_var))
    return found, vocab


def compare(
    sequences: list[list[int]], reference: LogitsOf, variant: LogitsOf, answers: list[int] | None = None
) -> Fidelity:
    """Over every predicted token of every sequence; with `answers` (the index of each sequence's first
    answer token), also over the answer tokens alone."""
    found, vocab = positions(sequences, reference, variant)
    kld, agreement, ratio = found.summary()
    result = Fidelity(
        tokens=len(found.kld),
        kld_mean=kld,
        kld_p99=float(np.percentile(found.kld, 99)),
        kld_max=float(found.kld.max()),
        top1_agreement=agreement,
        ppl_reference=float(np.exp(found.nll_reference.mean())),
        ppl_variant=float(np.exp(found.nll_variant.mean())),
        ppl_ratio=ratio,
        vocab_compared=vocab,
    )
    if answers:
        mask = answer_mask(sequences, answers)
        if mask.any():
            part = Positions(found.kld[mask], found.agree[mask], found.nll_reference[mask], found.nll_variant[mask])
            result.answer_tokens = int(mask.sum())
            result.answer_kld_mean, _, result.answer_ppl_ratio = part.summary()
    return result


def answer_mask(sequences: list[list[int]], answers: list[int]) -> np.ndarray:
    """Over the predicted positions `positions` yields (tokens 1.. of each sequence of 2+ tokens): which
    predict an answer token."""
    parts = [np.arange(1, len(ids)) >= start for ids, start in zip(sequences, answers, strict=True) if len(ids) >= 2]
    return np.concatenate(parts) if parts else np.array([], dtype=bool)


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


def fidelity_sequences(rows: list[dict[str, Any]], tokenizer: Any, count: int) -> list[list[int]]:
    from workbench.data.dataset import render

    texts = [render(row, tokenizer) for row in rows[:count]]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def answer_starts(rows: list[dict[str, Any]], tokenizer: Any, sequences: list[list[int]]) -> list[int]:
    """Where each conversation's last (assistant) turn starts among its tokens: the prompt as the chat
    template renders it for generation, when the whole conversation begins with exactly those tokens.
    Otherwise (plain text, a template that renders the prompt differently) the sequence's length: no
    answer tokens."""
    starts = []
    for row, ids in zip(rows, sequences, strict=False):
        messages = row.get("messages") or []
        start = len(ids)
        if messages and messages[-1].get("role") == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if ids[: len(prompt_ids)] == prompt_ids:
                start = len(prompt_ids)
        starts.append(start)
    return starts
