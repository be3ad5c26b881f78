"""Repeated measurements and their summary (median and spread), shared by every backend."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def summarize(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


@dataclass
class Settings:
    prompt_tokens: int
    gen_tokens: int
    repetitions: int
    warmup: int
    max_gen_seconds: float | None = None  # a generation stops here (after 2 tokens at least): slow backends


MIN_GEN_TOKENS = 2


def past(deadline: float | None, generated: int) -> bool:
    """Whether a timed generation should stop now."""
    return deadline is not None and generated >= MIN_GEN_TOKENS and time.perf_counter() > deadline


def measure(
    settings: Settings,
    prompt: Callable[[list[int]], None],
    generate: Callable[[int, float | None], int],
    vocab_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """llama-bench's protocol: `prompt(ids)` processes a prompt of random tokens from an empty cache;
    `generate(n, deadline)` decodes up to n tokens one at a time from an empty cache (fewer when
    `deadline` passes: `max_gen_seconds`) and returns how many. Warm-up runs are untimed. Time to first
    token is the prompt plus the first generated token."""
    import random

    rng = random.Random(seed)
    pp, tg, ttft, generated = [], [], [], []
    for rep in range(settings.warmup + settings.repetitions):
        ids = [rng.randrange(vocab_size) for _ in range(settings.prompt_tokens)]
        started = time.perf_counter()
        prompt(ids)
        prompt_seconds = time.perf_counter() - started
        started = time.perf_counter()
        limit = None if settings.max_gen_seconds is None else started + settings.max_gen_seconds
        count = generate(settings.gen_tokens, limit)
        gen_seconds = time.perf_counter() - started
        if rep >= settings.warmup:
            pp.append(settings.prompt_tokens / prompt_seconds)
            tg.append(count / gen_seconds)
            ttft.append((prompt_seconds + gen_seconds / count) * 1000)
            generated.append(count)
    result: dict[str, Any] = {"pp_tps": summarize(pp), "tg_tps": summarize(tg), "ttft_ms": summarize(ttft)}
    if min(generated, default=settings.gen_tokens) < settings.gen_tokens:
        result["tg_tokens"] = generated  # the time limit cut generation short
    return result
