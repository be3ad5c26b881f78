"""Reward functions for online RL (TRL's GRPO / RLOO call them with the batch's completions and the
dataset's other columns)."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """A completion as text: conversational ones are a list with the assistant's message."""
    if isinstance(completion, list):
        return "".join(str(turn.get("content", "")) for turn in completion)
    return str(completion)


def exact_match(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 where the answer, stripped, is the row's reference answer; else 0.0 (a verifiable task's reward)."""
    return [float(completion_text(c).strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]
