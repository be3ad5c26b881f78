"""What preference tuning did, on held-out chosen / rejected pairs, for any model the eval stage loads.

Each pair is scored by the model's log-likelihood of the chosen and of the rejected answer after the prompt
(summed over the answer's tokens, the chat template's rendering, as TRL's DPO scores them), through the
same lm-eval `loglikelihood` call for every backend: llama.cpp for GGUF, transformers for the rest.

- `accuracy`: pairs whose chosen answer the model finds likelier than the rejected one.
- `reward_margin`, `reward_accuracy`: DPO's implicit reward, beta * log(model / reference) with the
  supervised model as the reference: the mean chosen-minus-rejected margin and the pairs it ranks right
  (TRL's rewards/margins and rewards/accuracies on held-out pairs; 0 for the reference itself).

A recipe's reward model scores texts with `sequence_scores`: its own held-out pairs, and each model's
answers to the held-out prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TASK = "preference"


@dataclass(frozen=True)
class Pair:
    """A held-out pair as text: the prompt as the chat template renders it for an answer, and each answer
    as the rest of its whole conversation's rendering."""

    number: int
    context: str
    chosen: str
    rejected: str


def render_pairs(rows: list[dict[str, Any]], tokenizer: Any) -> list[Pair]:
    """Paired rows whose rendered conversations begin with the rendered prompt (templates that rewrite
    earlier turns cannot be split so; those rows are left out)."""
    pairs: list[Pair] = []
    for row in rows:
        if "chosen" not in row or "rejected" not in row:
            continue
        context = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        sides = [
            tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False) for key in ("chosen", "rejected")
        ]
        if all(side.startswith(context) for side in sides):
            pairs.append(
                Pair(row.get("number", len(pairs)), context, sides[0][len(context) :], sides[1][len(context) :])
            )
    return pairs


def log_likelihoods(lm: Any, pairs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Summed log-likelihoods of each pair's chosen and rejected answer, through `lm.loglikelihood`."""
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(pair["context"], pair[side]), idx=i)
        for i, pair in enumerate(pairs)
        for side in ("chosen", "rejected")
    ]
    values = [float(logprob) for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    return {"chosen": values[0::2], "rejected": values[1::2]}


@dataclass(frozen=True)
class PreferenceScores:
    accuracy: float
    per_item: dict[int, float]  # pair number -> 1.0 when the chosen answer is likelier
    reward_margin: float | None = None
    reward_accuracy: float | None = None


def score(
    numbers: list[int],
    logps: dict[str, list[float]],
    reference: dict[str, list[float]] | None,
    beta: float,
) -> PreferenceScores:
    chosen, rejected = logps["chosen"], logps["rejected"]
    wins = {n: float(c > r) for n, c, r in zip(numbers, chosen, rejected, strict=True)}
    accuracy = sum(wins.values()) / len(wins)
    if reference is None:
        return PreferenceScores(accuracy, wins)
    margins = [
        beta * ((c - rc) - (r - rr))
        for c, r, rc, rr in zip(chosen, rejected, reference["chosen"], reference["rejected"], strict=True)
    ]
    return PreferenceScores(accuracy, wins, sum(margins) / len(margins), sum(m > 0 for m in margins) / len(margins))


def sequence_scores(model: Any, tokenizer: Any, texts: list[str]) -> list[float]:
    """A reward model's (a one-label sequence classifier's) score of each text, one at a time (no padding)."""
    import torch

    scores = []
    model.eval()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            scores.append(float(model(**ids).logits[0, 0]))
    return scores
