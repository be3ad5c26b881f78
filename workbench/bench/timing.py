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

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> Settings:
        return cls(job["prompt_tokens"], job["gen_tokens"], job["repetitions"], job["warmup"])


def measure(
    settings: Settings,
    prompt: Callable[[list[int]], None],
    generate: Callable[[int], None],
    vocab_size: int,
    seed: int = 0,
) -> dict[str, Any]:
    """llama-bench's protocol: `prompt(ids)` processes a prompt of random tokens from an empty cache;
    `generate(n)` decodes n tokens one at a time from an empty cache. Warm-up runs are untimed. Time
    to first token is the prompt plus the first generated token."""
    import random

    rng = random.Random(seed)
    pp, tg, ttft = [], [], []
    for rep in range(settings.warmup + settings.repetitions):
        ids = [rng.randrange(vocab_size) for _ in range(settings.prompt_tokens)]
        started = time.perf_counter()
        prompt(ids)
        prompt_seconds = time.perf_counter() - started
        started = time.perf_counter()
        generate(settings.gen_tokens)
        gen_seconds = time.perf_counter() - started
        if rep >= settings.warmup:
            pp.append(settings.prompt_tokens / prompt_seconds)
            tg.append(settings.gen_tokens / gen_seconds)
            ttft.append((prompt_seconds + gen_seconds / settings.gen_tokens) * 1000)
    return {"pp_tps": summarize(pp), "tg_tps": summarize(tg), "ttft_ms": summarize(ttft)}
