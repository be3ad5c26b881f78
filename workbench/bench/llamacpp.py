"""GGUF through llama.cpp (llama-cpp-python, in process), measured the way llama-bench measures."""

from __future__ import annotations

from typing import Any

from workbench.bench.timing import Settings, measure, past


def bench(path: str, settings: Settings, threads: int, gpu: bool, lora: str | None = None) -> dict[str, Any]:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=settings.prompt_tokens + settings.gen_tokens,
        n_batch=min(512, settings.prompt_tokens),
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1 if gpu else 0,
        verbose=False,
        lora_path=lora,  # an adapter variant: its GGUF adapter on the base file
    )
    ctx, bos = llm._ctx, max(llm.token_bos(), 0)  # -1: the model has no BOS token

    def prompt(ids: list[int]) -> None:
        ctx.kv_cache_clear()
        llm.reset()
        llm.eval(ids)

    n_vocab = llm.n_vocab()

    def generate(count: int, deadline: float | None) -> int:
        """One token a time through llama_decode, greedy from the last logits (no Python-side copies)."""
        ctx.kv_cache_clear()
        token = (llama_cpp.llama_token * 1)(bos)
        for done in range(count):
            if past(deadline, done):
                return done
            if llama_cpp.llama_decode(ctx.ctx, llama_cpp.llama_batch_get_one(token, 1)) != 0:
                raise RuntimeError("llama_decode failed")
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, -1), shape=(n_vocab,))
            token[0] = int(logits.argmax())
        return count

    result = measure(settings, prompt, generate, n_vocab)
    llm.close()
    return result
