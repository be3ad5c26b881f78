"""Serving throughput through vLLM (only when it is installed and CUDA is present): all prompts of one
concurrency level submitted at once, output tokens per second over the wall time."""

from __future__ import annotations

import random
import time
from typing import Any

from workbench.bench.timing import Settings


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def bench(path: str, settings: Settings, concurrency: list[int]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, max_model_len=settings.prompt_tokens + settings.gen_tokens, seed=0)
    params = SamplingParams(max_tokens=settings.gen_tokens, min_tokens=settings.gen_tokens, temperature=0)
    vocab = llm.get_tokenizer().vocab_size
    rng = random.Random(0)
    levels = {}
    for level in concurrency:
        prompts = [
            TokensPrompt(prompt_token_ids=[rng.randrange(vocab) for _ in range(settings.prompt_tokens)])
            for _ in range(level)
        ]
        llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        levels[str(level)] = {"output_tps": generated / seconds, "requests": level, "seconds": seconds}
    return {"concurrency": levels}
